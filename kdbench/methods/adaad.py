"""Adaptive Adversarial Distillation: the adversarial example maximises the teacher-student disagreement, so
the attack runs through the teacher as well as the student."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.bounds import WEIGHT
from ..core.gpu import full_precision
from .base import KL_REDUCTIONS, Batch, Distiller, kl_soft, register_method
from .inner_attack import ATTACK_MODES, set_attack_mode, warm_up
from .perexample import kl_rows


class Disagreement(nn.Module):
    """Two-class logits [KL_i, 0] with KL_i = KL(softmax(t(x_i)) || softmax(s(x_i))), for torchattacks.

    torchattacks' PGD maximises CE(logits, y) averaged over the batch; with label 1 for every example that is
    mean_i log(1 + exp(KL_i)), whose gradient with respect to x_i is sigmoid(KL_i) * d KL_i / d x_i with
    sigmoid(KL_i) in [1/2, 1): the same sign, hence the same signed-gradient PGD steps, as maximising
    sum_i KL_i itself. The gradient flows through both models. Only the student is a sub-module: torchattacks
    switches this module (so the student) to eval for the attack and back to train after it, and that switch
    must never put the frozen teacher in train mode."""

    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__()
        self.student = student
        self._teacher = [teacher]  # a plain list: not a sub-module, never switched by train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kl = kl_rows(self.student(x), F.softmax(self._teacher[0](x), dim=1))
        return torch.stack([kl, torch.zeros_like(kl)], dim=1)


@register_method("adaad")
class AdaAD(Distiller):
    """Adaptive Adversarial Distillation, AdaAD (Huang et al. 2023, CVPR): the attack maximises teacher-student KL.

    Huang, Chen, Wang, Lu, Cheng & Wang 2023, "Boosting Accuracy and Robustness of Student Models via Adaptive
    Adversarial Distillation".

    x' = argmax_{||x' - x||_inf <= eps} KL(softmax(t(x')) || softmax(s(x')))    (through teacher and student)
    loss = alpha * KL(softmax(t(x')) || softmax(s(x'))) + (1 - alpha) * KL(softmax(t(x)) || softmax(s(x)))
    Defaults: alpha = 1 (the authors' CIFAR-10 setting: the outer loss is the inner one), eps, steps and step
    size from the suite (the paper's main setting is eps 8/255, 10 steps of 2/255; it also reports a larger
    search radius, 16/255, which a suite sets with adv_eps).

    The inner maximisation is torchattacks' PGD on `Disagreement` (see there), with the student in eval mode
    by default (`attack_mode = "eval"`: the reference's `adaad_inner_loss(BN_eval=True)` calls `model.eval()`
    before the attack); the teacher is always in eval mode.
    Paper vs code (boyellow/AdaAD, AT_helper.adaad_inner_loss, main.py): the reference code starts the attack
    at x + 0.001 N(0, I); kdbench's PGD starts uniformly in the eps-ball, as its ARD and RSLAD do. The
    reference code's CIFAR-10 KL is nn.KLDivLoss()'s mean over examples and classes (`kl_reduction = "mean"`,
    1/10 of the default batch-mean KL, which is its CIFAR-100 form).
    """

    defaults = {"alpha": 1.0, "kl_reduction": "batchmean", "attack_mode": "eval"}
    bounds = {"alpha": WEIGHT}
    choices = {"kl_reduction": KL_REDUCTIONS, "attack_mode": ATTACK_MODES}
    teacher_kind = "adversarial"
    baselines = ("ce", "at")

    def __init__(self, student, teachers, params, ctx):
        import torchattacks
        super().__init__(student, teachers, params, ctx)
        self.gap = [Disagreement(student, self.teacher)]  # a list: the student is not registered twice
        self.pgd = torchattacks.PGD(self.gap[0], eps=ctx.adv_eps, alpha=ctx.adv_step_size, steps=ctx.adv_steps,
                                    random_start=True)
        set_attack_mode(self.pgd, self.params["attack_mode"])

    def perturb(self, x: torch.Tensor, progress: float = 1.0) -> torch.Tensor:
        """x' maximising KL(t(x') || s(x')) within the eps of the step at `progress` (train.adv_warmup); the
        student's training mode is restored afterwards."""
        gap, c = self.gap[0], self.ctx
        gap.training = self.student.training  # torchattacks reads the mode to restore from the attacked module
        warm_up(self.pgd, c.adv_eps, c.adv_step_size, c.adv_warmup, progress)
        with full_precision(x):
            return self.pgd(x, torch.ones(len(x), dtype=torch.long, device=x.device)).detach()

    def losses(self, batch: Batch):
        alpha, red = self.params["alpha"], self.params["kl_reduction"]
        x_adv = self.perturb(batch.x, batch.progress)
        with torch.no_grad():
            t_adv = self.teacher(x_adv)
        terms = {"kl_adv": alpha * kl_soft(self.student(x_adv), F.softmax(t_adv, dim=1), reduction=red)}
        if alpha < 1:
            terms["kl_clean"] = (1 - alpha) * kl_soft(self.student(batch.x), F.softmax(batch.teacher_logits[0], 1),
                                                      reduction=red)
        return terms
