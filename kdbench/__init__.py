"""kdbench: what knowledge distillation does to a model's robustness.

This module is kdbench's public, stable surface (docs/plugins.md); everything under it may move between versions.
A plugin imports only from here:

    from kdbench import Batch, Distiller, register_method, register_model, ...

- methods: `register_method`, `Distiller`, `Batch`, `TeacherSpec`, `TrainContext`, `kd_loss`, `kl_soft`, `Bound`;
- architectures: `register_model`, `ModelInput`, `Normalize`, `StagedNet`;
- datasets: `register_dataset`, `DataConfig`, `TensorData`, `make_tensor_data`;
- attacks, corruptions, teacher kinds: `register_attack` + `AttackDef`, `register_corruption` + `Corruption`,
  `register_teacher_kind` + `TeacherKind`;
- the Python API: `evaluate(model, ...)`, `run(suite, ...)`, `load_results(folder)`; bad input raises
  `KdbenchError`.

Importing kdbench registers all of its own entries and then seals them (core/registry.py): what registers later
is a plugin's (core/plugins.py imports plugins only after this module, never from it) or a script's.
"""

from .core.bounds import Bound
from .core.errors import KdbenchError
from .core.registry import seal_builtins
from .core.version import __version__
from .data import augment  # noqa: F401 - every family registers its own entries before the seal below
from .data.corruptions import Corruption
from .data.registry import DataConfig, TensorData, make_tensor_data
from .evaluation import noise_sweep, sanity  # noqa: F401 - as augment
from .evaluation.attacks import AttackDef
from .methods import Batch, Distiller, TeacherSpec, TrainContext, register_method
from .methods.base import kd_loss, kl_soft
from .models.registry import ModelInput, Normalize, StagedNet
from .training.teachers import TeacherKind
from .api.python_api import evaluate, load_results, run
from .api.register import (
    register_attack,
    register_corruption,
    register_dataset,
    register_model,
    register_teacher_kind,
)

seal_builtins()

__all__ = [
    "AttackDef", "Batch", "Bound", "Corruption", "DataConfig", "Distiller", "KdbenchError", "ModelInput", "Normalize",
    "StagedNet", "TeacherKind", "TeacherSpec", "TensorData", "TrainContext", "__version__", "evaluate", "kd_loss",
    "kl_soft", "load_results", "make_tensor_data", "register_attack", "register_corruption", "register_dataset",
    "register_method", "register_model", "register_teacher_kind", "run",
]
