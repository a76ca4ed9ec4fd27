"""The public registration calls, one per pluggable family (`from kdbench import register_model, ...`). Each adds
one entry to its family's registry (core/registry.py), exactly as kdbench's own entries are added; inside a plugin
(core/plugins.py) the entry's origin is the plugin, so `kdbench list` names it and the ids of the jobs that use it
follow the plugin's code. A name that is taken is one error naming both origins. Methods register with
`register_method` (methods/base.py), a class decorator on a `Distiller` subclass."""

from __future__ import annotations

from typing import Callable

from ..core.errors import KdbenchError
from ..data.corruptions import CORRUPTIONS, Corruption
from ..data.registry import DATASETS
from ..evaluation.attacks import ATTACKS, AttackDef
from ..models.registry import MODELS
from ..training.teachers import TEACHER_KINDS, TeacherKind


def register_model(name: str, summary: str = "") -> Callable:
    """Decorator on an architecture's factory `f(inp: ModelInput) -> nn.Module`. The module takes images in
    [0, 1] and normalizes inside (`Normalize(inp.mean, inp.std)`); layer-wise methods also need
    `forward_stages(x) -> (logits, [stage outputs])` (`StagedNet` gives both)."""
    return MODELS.register(name, summary)


def register_dataset(name: str, summary: str = "") -> Callable:
    """Decorator on a loader `f(cfg: DataConfig) -> TensorData` (images float32 in [0, 1], NCHW; labels int64;
    `make_tensor_data` builds one from train and test tensors). Its split must not depend on the job seed."""
    return DATASETS.register(name, summary)


def register_attack(name: str, attack: AttackDef) -> AttackDef:
    """An attack: `AttackDef(summary, build)`, `build(model, eps, eval_config, seed, num_classes)` returning a
    torchattacks `Attack` (L-inf, eps in [0, 1] pixel scale), plus its facts (white_box, min_classes, grad_steps
    for the dry run, checked by the regression gate)."""
    if not isinstance(attack, AttackDef):
        raise KdbenchError(f"attack {name!r}: register an AttackDef, got a {type(attack).__name__}")
    ATTACKS.add(name, attack)
    return attack


def register_corruption(name: str, corruption: Corruption) -> Corruption:
    """A corruption: `Corruption(summary, levels, apply, stream)`, five levels, `apply(x, level, generator)`;
    `stream` numbers its random stream and must differ from every other corruption's."""
    if not isinstance(corruption, Corruption):
        raise KdbenchError(f"corruption {name!r}: register a Corruption, got a {type(corruption).__name__}")
    taken = {e.obj.stream: e.name for e in CORRUPTIONS.entries()}
    if corruption.stream in taken:
        raise KdbenchError(f"corruption {name!r}: random stream {corruption.stream} is taken by corruption "
                           f"{taken[corruption.stream]!r}; choose a number above {max(taken)}")
    CORRUPTIONS.add(name, corruption)
    return corruption


def register_teacher_kind(name: str, kind: TeacherKind) -> TeacherKind:
    """A teacher kind: `TeacherKind(summary, defaults, objective, train_fields)`, `objective(model, params,
    train_config)` returning `(x, y, progress) -> dict[str, Tensor]`. Its teachers are cached under the plugin's
    code too."""
    if not isinstance(kind, TeacherKind):
        raise KdbenchError(f"teacher kind {name!r}: register a TeacherKind, got a {type(kind).__name__}")
    TEACHER_KINDS.add(name, kind)
    return kind
