"""Distillation from an ensemble of teachers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.bounds import AT_LEAST_ONE, POSITIVE, WEIGHT
from .base import Batch, Distiller, TeacherSpec, kl_soft, register_method

MEMBER_SEED_STRIDE = 1000  # member k of a job with seed s is trained with seed s + 1000 * k


@register_method("multi-teacher")
class MultiTeacher(Distiller):
    """Multi-teacher KD: match the average of several teachers' softened probabilities (You et al. 2017).

    Ensemble distillation as in Hinton et al. 2015 (sec. 2) and You et al. 2017 ("Learning from Multiple
    Teacher Networks").

    loss = alpha * T^2 * KL(mean_k softmax(t_k/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)
    Teachers: `members` teachers of the pair's architecture with seeds s, s + 1000, s + 2000, ...
    (or, with `archs`, one teacher per listed architecture, all with the job's seed).
    """

    defaults = {"temperature": 4.0, "alpha": 0.9, "members": 2, "archs": []}
    bounds = {"temperature": POSITIVE, "alpha": WEIGHT, "members": AT_LEAST_ONE}

    @classmethod
    def teacher_specs(cls, params, arch, kind, seed):
        if kind is None:
            return []
        archs = list(params.get("archs") or [])
        if archs:
            return [TeacherSpec(a, kind, seed) for a in archs]
        return [TeacherSpec(arch, kind, seed + MEMBER_SEED_STRIDE * k) for k in range(int(params["members"]))]

    def losses(self, batch: Batch):
        T, alpha = self.params["temperature"], self.params["alpha"]
        s = self.student(batch.x)
        target = torch.stack([F.softmax(t / T, dim=1) for t in batch.teacher_logits]).mean(0)
        return {"kd": alpha * T**2 * kl_soft(s, target, T), "ce": (1 - alpha) * F.cross_entropy(s, batch.y)}
