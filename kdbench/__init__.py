"""kdbench: what knowledge distillation does to a model's robustness."""

__version__ = "0.1.0"
