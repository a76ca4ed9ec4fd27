"""kdbench's version (the package's face re-exports it as `kdbench.__version__`)."""

__version__ = "0.1.0"
