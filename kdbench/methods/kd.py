"""The baseline and vanilla knowledge distillation."""

from __future__ import annotations

import torch.nn.functional as F

from ..core.bounds import POSITIVE, WEIGHT
from .base import Batch, Distiller, kd_loss, register_method


@register_method("ce")
class CrossEntropy(Distiller):
    """Baseline: the student alone on hard labels, no teacher. loss = CE(s(x), y)."""

    teacher_kind = None
    uses_teacher_logits = False

    def losses(self, batch: Batch):
        return {"ce": F.cross_entropy(self.student(batch.x), batch.y)}


@register_method("kd")
class KD(Distiller):
    """Vanilla KD (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

    loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)
    """

    defaults = {"temperature": 4.0, "alpha": 0.9}
    bounds = {"temperature": POSITIVE, "alpha": WEIGHT}

    def losses(self, batch: Batch):
        T, alpha = self.params["temperature"], self.params["alpha"]
        s = self.student(batch.x)
        return {
            "kd": alpha * kd_loss(s, batch.teacher_logits[0], T),
            "ce": (1 - alpha) * F.cross_entropy(s, batch.y),
        }
