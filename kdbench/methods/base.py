"""The one contract every distillation method follows (after mdistiller's Distiller).

A method is a `Distiller` subclass registered by name. The trainer builds every method the same way,
`cls(student, teachers, params, ctx)`, and calls `losses(batch)`, which returns named loss terms that the
trainer sums and logs. Teachers are frozen (`requires_grad_(False)`) and stay in eval mode; trainable
adapters (a FitNets regressor) are ordinary sub-modules of the distiller and are optimised with the student.
Defaults live with the method (`defaults`), never in a central config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..core.bounds import Bound
from ..core.errors import KdbenchError
from ..core.registry import Registry

METHODS: Registry = Registry("method")


@dataclass(frozen=True)
class TeacherSpec:
    """Which teacher a job needs: architecture, kind (standard/adversarial/defensive), seed, kind params."""

    arch: str
    kind: str
    seed: int
    params: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class TrainContext:
    """What a method may need to know beyond its own parameters."""

    num_classes: int
    input_shape: tuple[int, int, int]
    epochs: int
    adv_eps: float
    adv_steps: int
    adv_step_size: float
    adv_warmup: float = 0.0  # fraction of training over which the inner attack's eps ramps up (inner_attack.py)


@dataclass
class Batch:
    """One training step's input. `teacher_logits[i]` is teacher i's logits on the clean `x` (cached when the
    data is not augmented); `progress` is the fraction of training done, in [0, 1]."""

    x: torch.Tensor
    y: torch.Tensor
    teacher_logits: list[torch.Tensor] = field(default_factory=list)
    progress: float = 0.0


class Distiller(nn.Module):
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple]] = {}  # parameter -> its allowed values (checked when a suite is read)
    bounds: ClassVar[dict[str, Bound]] = {}  # numeric parameter -> its range (checked when a suite is read)
    teacher_kind: ClassVar[str | None] = "standard"  # None: the method uses no teacher
    pretrained_refused: ClassVar[str] = ""  # why a pretrained teacher cannot stand in for its teacher ("": it can)
    uses_teacher_logits: ClassVar[bool] = True
    baselines: ClassVar[tuple[str, ...]] = ("ce",)  # the rows this method is compared with on the leaderboard

    def __init__(self, student: nn.Module, teachers: list[nn.Module], params: dict[str, Any], ctx: TrainContext):
        super().__init__()
        self.student = student
        self.teachers = nn.ModuleList(teachers)
        for t in self.teachers:
            t.requires_grad_(False)
            t.eval()
        self.params = dict(params)
        self.ctx = ctx

    @property
    def teacher(self) -> nn.Module:
        return self.teachers[0]

    def train(self, mode: bool = True):
        super().train(mode)
        for t in self.teachers:
            t.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def trains_on(cls, params: dict[str, Any]) -> dict[str, str]:
        """Corruptions that the method's training itself applies (their accuracies are not out-of-distribution
        for it; the record marks them): corruption or noise family -> how it trains on it."""
        return {}

    @classmethod
    def params_problem(cls, params: dict[str, Any]) -> str:
        """What is wrong with a combination of parameters that each lie in their range ("" when nothing is);
        checked when a suite is read."""
        return ""

    @classmethod
    def teacher_specs(cls, params: dict[str, Any], arch: str, kind: str | None, seed: int) -> list[TeacherSpec]:
        """The teachers a job of this method needs (none when `kind` is None)."""
        return [] if kind is None else [TeacherSpec(arch, kind, seed)]


def register_method(name: str):
    """Class decorator: `@register_method("kd")` registers a Distiller subclass under `name`. A class that is no
    Distiller, or defines no `losses(batch)`, is refused (one error naming it)."""

    def add(cls):
        if not (isinstance(cls, type) and issubclass(cls, Distiller)):
            raise KdbenchError(f"method {name!r}: {getattr(cls, '__name__', cls)!r} is not a subclass of Distiller")
        if cls.losses is Distiller.losses:
            raise KdbenchError(f"method {name!r}: {cls.__name__} defines no losses(batch) -> dict[str, Tensor]")
        doc = (cls.__doc__ or "").strip()
        cls.name = name
        # its own summary or docstring, never one inherited from the class it extends
        cls.summary = cls.__dict__.get("summary") or (doc.splitlines()[0] if doc else "")
        METHODS.add(name, cls, cls.summary)
        return cls

    return add


# ---- shared loss pieces (one definition each; methods compose them) ------------------------------------

# "batchmean": sum over classes, mean over the batch (the KL's definition); "mean": mean over batch x classes
# (PyTorch's KLDivLoss default, used by the ARD and RSLAD reference codes; 1/C of "batchmean").
KL_REDUCTIONS = ("batchmean", "mean")


def kl_soft(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float = 1.0,
            reduction: str = "batchmean") -> torch.Tensor:
    """KL(target || softmax(student / T)), reduced as `reduction` (one of KL_REDUCTIONS) says."""
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl reduction {reduction!r} is unknown; choose from: {', '.join(KL_REDUCTIONS)}")
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    if reduction == "mean":  # written out: PyTorch announces that its own "mean" will become "batchmean"
        return F.kl_div(log_p, target_probs, reduction="sum") / log_p.numel()
    return F.kl_div(log_p, target_probs, reduction="batchmean")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            reduction: str = "batchmean") -> torch.Tensor:
    """Hinton et al. 2015: T^2 * KL(softmax(t/T) || softmax(s/T)), reduced as in `kl_soft`."""
    target = F.softmax(teacher_logits / temperature, dim=1)
    return temperature**2 * kl_soft(student_logits, target, temperature, reduction)
