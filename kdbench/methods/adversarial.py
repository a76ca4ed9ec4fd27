"""Adversarial distillation: the student is trained on adversarial examples of itself, guided by a
(by default adversarially trained) teacher.

The inner maximisation is torchattacks' PGD (`adv_steps` steps of `adv_step_size`, uniform random start, within
the suite's `adv_eps`). To maximise KL(teacher || student) it is given the teacher's probabilities as soft
labels: PGD's cross-entropy with a probability target p is CE(s, p) = KL(p || softmax(s)) + H(p), and H(p) does
not depend on x', so both have the same gradient.

`kl_reduction` (every method here): "batchmean" (default) sums each example's KL over the classes and averages
over the batch, the KL's definition; "mean" averages over batch x classes, as the ARD and RSLAD reference codes
do (PyTorch's KLDivLoss default there; 1/C of "batchmean"). Under SGD the scale acts like a C-times learning rate
and a 1/C weight decay, so suites that reproduce a paper's SGD setup use "mean".

`attack_mode` (every method here, inner_attack.py): the student's mode during the inner attack, "train" (batch
statistics; the attack's passes update the running statistics) or "eval", each method's default its reference
code's. How each default compares with the reference code: docs/methods-adversarial.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.bounds import POSITIVE, WEIGHT
from ..core.gpu import full_precision
from .base import KL_REDUCTIONS, Batch, Distiller, kd_loss, kl_soft, register_method
from .inner_attack import ATTACK_MODES, set_attack_mode, warm_up


class AdversarialDistiller(Distiller):
    """A student attacked by torchattacks' PGD during training; its `attack_mode` parameter sets the student's
    mode during the attack."""

    teacher_kind = "adversarial"

    def __init__(self, student, teachers, params, ctx):
        import torchattacks
        super().__init__(student, teachers, params, ctx)
        self.pgd = torchattacks.PGD(student, eps=ctx.adv_eps, alpha=ctx.adv_step_size, steps=ctx.adv_steps,
                                    random_start=True)
        set_attack_mode(self.pgd, self.params["attack_mode"])

    def perturb(self, x: torch.Tensor, target: torch.Tensor, progress: float = 1.0) -> torch.Tensor:
        """x' maximising CE(student(x'), target) (hard labels) or KL(target || student(x')) (soft labels), within
        the eps of the training step at `progress` (train.adv_warmup). torchattacks sets the student's mode for
        the attack (`attack_mode`) and restores it afterwards; the attack runs in float32 even when the training
        step runs under autocast."""
        c = self.ctx
        warm_up(self.pgd, c.adv_eps, c.adv_step_size, c.adv_warmup, progress)
        with full_precision(x):
            return self.pgd(x, target).detach()


@register_method("ard")
class ARD(AdversarialDistiller):
    """Adversarially Robust Distillation, ARD (Goldblum et al. 2020), as published: KD on the student's PGD examples.

    Goldblum, Fowl, Feizi & Goldstein, "Adversarially Robust Distillation", AAAI 2020.

    x' = argmax_{||x' - x||_inf <= eps} CE(s(x'), y)        (PGD, hard labels, the student in train mode)
    loss = alpha * T^2 * KL(softmax(t(x)/T) || softmax(s(x')/T)) + (1 - alpha) * CE(s(x), y)
    Defaults T = 30 and alpha = 1 are the paper's CIFAR-10 settings and the reference code's (the CE term is off
    unless alpha < 1). The reference code runs the attack with the student in train mode (batch statistics, and
    running statistics updated by the attack's forward passes; main.py, `net.train()` before `AttackPGD`); so
    does this one by default (`attack_mode = "train"`). Its KL is nn.KLDivLoss()'s mean over batch x classes
    (`kl_reduction = "mean"`; kdbench's default "batchmean" is the KL's definition).
    """

    defaults = {"temperature": 30.0, "alpha": 1.0, "kl_reduction": "batchmean", "attack_mode": "train"}
    bounds = {"temperature": POSITIVE, "alpha": WEIGHT}
    choices = {"kl_reduction": KL_REDUCTIONS, "attack_mode": ATTACK_MODES}
    baselines = ("ce", "at")

    def adversarial_target(self, batch: Batch) -> torch.Tensor:
        return batch.y

    def losses(self, batch: Batch):
        T, alpha = self.params["temperature"], self.params["alpha"]
        t = batch.teacher_logits[0]
        x_adv = self.perturb(batch.x, self.adversarial_target(batch), batch.progress)
        terms = {"kd_adv": alpha * kd_loss(self.student(x_adv), t, T, self.params["kl_reduction"])}
        if alpha < 1:
            terms["ce"] = (1 - alpha) * F.cross_entropy(self.student(batch.x), batch.y)
        return terms


@register_method("ard-kl")
class ARDKL(ARD):
    """ARD with RSLAD's inner maximisation (a kdbench variant, not a published method): KL to the teacher.

    x' = argmax_{||x' - x||_inf <= eps} KL(softmax(t(x)) || softmax(s(x')))     (PGD, the student in eval mode)
    loss = alpha * T^2 * KL(softmax(t(x)/T) || softmax(s(x')/T)) + (1 - alpha) * CE(s(x), y)
    This was kdbench's `ard` before protocol 5. Against RSLAD it differs only in the outer loss (T = 30, no clean
    term), so it isolates RSLAD's outer loss; against `ard` it isolates the inner one (its attack, like RSLAD's,
    sees the student in eval mode).
    """

    defaults = {**ARD.defaults, "attack_mode": "eval"}

    def adversarial_target(self, batch: Batch) -> torch.Tensor:
        return F.softmax(batch.teacher_logits[0], dim=1)


@register_method("rslad")
class RSLAD(AdversarialDistiller):
    """Robust Soft Label Adversarial Distillation, RSLAD (Zi et al. 2021): robust soft labels, no hard labels.

    Zi et al. 2021, "Revisiting Adversarial Robustness Distillation: Robust Soft Labels Make Student Better".

    x' = argmax_{||x' - x||_inf <= eps} KL(softmax(t(x)) || softmax(s(x')))    (PGD, the student in eval mode)
    loss = 5/6 * KL(softmax(t(x)) || softmax(s(x'))) + 1/6 * KL(softmax(t(x)) || softmax(s(x)))
    The reference code attacks with the student in eval mode (rslad_loss.py, `model.eval()` before the attack),
    as here; its KL is averaged over batch x classes (`kl_reduction = "mean"`).
    """

    defaults = {"adv_weight": 5 / 6, "kl_reduction": "batchmean", "attack_mode": "eval"}
    bounds = {"adv_weight": WEIGHT}
    choices = {"kl_reduction": KL_REDUCTIONS, "attack_mode": ATTACK_MODES}
    baselines = ("ce", "at")

    def losses(self, batch: Batch):
        w, red = self.params["adv_weight"], self.params["kl_reduction"]
        p_t = F.softmax(batch.teacher_logits[0], dim=1)
        x_adv = self.perturb(batch.x, p_t, batch.progress)
        return {"kl_adv": w * kl_soft(self.student(x_adv), p_t, reduction=red),
                "kl_clean": (1 - w) * kl_soft(self.student(batch.x), p_t, reduction=red)}
