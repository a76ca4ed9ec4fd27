"""Adversarial distillation: the student is trained on adversarial examples of itself, guided by a
(by default adversarially trained) teacher.

The inner maximisation is torchattacks' PGD (`adv_steps` steps of `adv_step_size`, random start, within the
suite's `adv_eps`). To maximise KL(teacher || student) it is given the teacher's probabilities as soft labels:
PGD's cross-entropy with a probability target p is CE(s, p) = KL(p || softmax(s)) + H(p), and H(p) does not
depend on x', so both have the same gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchattacks

from ..gpu import full_precision
from .base import Batch, Distiller, kd_loss, kl_soft, register_method


class AdversarialDistiller(Distiller):
    teacher_kind = "adversarial"

    def __init__(self, student, teachers, params, ctx):
        super().__init__(student, teachers, params, ctx)
        self.pgd = torchattacks.PGD(student, eps=ctx.adv_eps, alpha=ctx.adv_step_size, steps=ctx.adv_steps,
                                    random_start=True)

    def perturb(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """x' maximising CE(student(x'), target) (hard labels) or KL(target || student(x')) (soft labels).
        torchattacks runs the attack in eval mode and restores the student's training mode; the attack runs in
        float32 even when the training step runs under autocast (GPU)."""
        with full_precision(x):
            return self.pgd(x, target).detach()


@register_method("ard")
class ARD(AdversarialDistiller):
    """Adversarially Robust Distillation, ARD (Goldblum et al. 2020): KD on the student's PGD examples.

    x' = argmax_{||x' - x||_inf <= eps} KL(softmax(t(x)) || softmax(s(x')))          (PGD, inner = "kl")
    loss = alpha * T^2 * KL(softmax(t(x)/T) || softmax(s(x')/T)) + (1 - alpha) * CE(s(x), y)
    `inner = "ce"` maximises CE(s(x'), y) instead, as the authors' reference code does. Defaults T = 30 and
    alpha = 1 are the reference code's (so the CE term is off unless alpha < 1).
    """

    defaults = {"temperature": 30.0, "alpha": 1.0, "inner": "kl"}
    baselines = ("ce", "at")

    def losses(self, batch: Batch):
        T, alpha = self.params["temperature"], self.params["alpha"]
        t = batch.teacher_logits[0]
        inner = self.params["inner"]
        if inner not in ("kl", "ce"):
            from ..errors import KdbenchError

            raise KdbenchError(f"methods.ard.inner {inner!r} is unknown; choose from: ce, kl")
        x_adv = self.perturb(batch.x, F.softmax(t, dim=1) if inner == "kl" else batch.y)
        terms = {"kd_adv": alpha * kd_loss(self.student(x_adv), t, T)}
        if alpha < 1:
            terms["ce"] = (1 - alpha) * F.cross_entropy(self.student(batch.x), batch.y)
        return terms


@register_method("rslad")
class RSLAD(AdversarialDistiller):
    """Robust Soft Label Adversarial Distillation, RSLAD (Zi et al. 2021): robust soft labels, no hard labels.

    Zi et al. 2021, "Revisiting Adversarial Robustness Distillation: Robust Soft Labels Make Student Better".

    x' = argmax_{||x' - x||_inf <= eps} KL(softmax(t(x)) || softmax(s(x')))
    loss = 5/6 * KL(softmax(t(x)) || softmax(s(x'))) + 1/6 * KL(softmax(t(x)) || softmax(s(x)))
    """

    defaults = {"adv_weight": 5 / 6}
    baselines = ("ce", "at")

    def losses(self, batch: Batch):
        w = self.params["adv_weight"]
        p_t = F.softmax(batch.teacher_logits[0], dim=1)
        x_adv = self.perturb(batch.x, p_t)
        return {"kl_adv": w * kl_soft(self.student(x_adv), p_t), "kl_clean": (1 - w) * kl_soft(self.student(batch.x), p_t)}
