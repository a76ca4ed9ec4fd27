"""Defensive distillation, kept exactly as published: it is the textbook case of gradient masking."""

from __future__ import annotations

import torch.nn.functional as F

from ..core.bounds import POSITIVE
from .base import Batch, Distiller, TeacherSpec, register_method


@register_method("defensive")
class DefensiveDistillation(Distiller):
    """Defensive distillation at temperature T, deployed at T = 1 (Papernot et al. 2016); masks gradients.

    Papernot et al. 2016, "Distillation as a Defense to Adversarial Perturbations against Deep Neural
    Networks". The teacher is trained with softmax at temperature T (teacher kind
    `defensive`); the student is trained on the teacher's T-softened labels at the same T and deployed at
    T = 1 (its raw logits), which saturates the softmax and masks CE gradients (Carlini & Wagner 2016,
    "Defensive Distillation is Not Robust to Adversarial Examples"). The evaluation exposes it.

    loss = CE(softmax(s/T), softmax(t/T)) = -sum_c softmax(t/T)_c * log softmax(s/T)_c
    """

    defaults = {"temperature": 100.0}
    bounds = {"temperature": POSITIVE}
    teacher_kind = "defensive"
    pretrained_refused = ("its teacher is trained with softmax at the method's temperature T (kind 'defensive'), "
                          "which a model trained elsewhere was not")

    @classmethod
    def teacher_specs(cls, params, arch, kind, seed):
        if kind == "defensive":
            return [TeacherSpec(arch, kind, seed, (("temperature", params["temperature"]),))]
        return super().teacher_specs(params, arch, kind, seed)

    def losses(self, batch: Batch):
        T = self.params["temperature"]
        soft = F.softmax(batch.teacher_logits[0] / T, dim=1)
        return {"soft_ce": F.cross_entropy(self.student(batch.x) / T, soft)}
