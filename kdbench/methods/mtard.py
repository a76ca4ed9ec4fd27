"""Multi-Teacher Adversarial Robustness Distillation: a clean teacher for clean accuracy, a robust teacher for
robustness, and weights between them that follow how fast each distillation term falls."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.bounds import NON_NEGATIVE, WEIGHT
from .adversarial import AdversarialDistiller
from .base import KL_REDUCTIONS, Batch, TeacherSpec, kl_soft, register_method
from .inner_attack import ATTACK_MODES


@register_method("mtard")
class MTARD(AdversarialDistiller):
    """Multi-Teacher Adversarial Robustness Distillation, MTARD (Zhao et al. 2022, ECCV): a clean and a robust teacher.

    Zhao, Yu, Sun, Zhang & Wei 2022, "Enhanced Accuracy and Robustness via Multi-Teacher Adversarial Distillation".

    x' = argmax_{||x' - x||_inf <= eps} CE(s(x'), y)                        (PGD on the student)
    L_adv = KL(softmax(t_rob(x')) || softmax(s(x'))),   L_nat = KL(softmax(t_nat(x)) || softmax(s(x)))
    loss = w_adv * L_adv + w_nat * L_nat,  w_adv + w_nat = 1, starting at 1/2 each
    Adaptive normalisation, once per step before the update, from the losses' values (no gradient):
        r_k = (L_k / L_k at the first step)^bert,   w_nat <- w_nat - eta * (w_nat - r_nat / (r_adv + r_nat))
    so the term that has fallen less, relative to its start, gains weight. Defaults are the authors' CIFAR-10
    settings: eta = 0.025, bert = 1. Teachers: the robust teacher of the job's teacher kind (`adversarial` by
    default; the paper's is TRADES-trained, `teacher = "trades"`) and a `standard` (clean) teacher of the same
    architecture and seed.

    Paper vs code (zhaoshiji123/MTARD, mtard_resnet18_cifar10.py, mtard_loss.py): the reference code starts
    the attack at x + 0.001 N(0, I) (kdbench: uniformly in the eps-ball, as its other PGD-trained students);
    it attacks with the student in eval mode (`model.eval()` in mtard_inner_loss_ce; `attack_mode = "eval"`,
    the default); it averages each KL over classes too (`torch.mean`: `kl_reduction = "mean"`; the default
    "batchmean" is 10x larger on 10 classes, with the same weights, since the weights follow ratios of the
    losses) and adds 1e-5 inside the log (kdbench: the exact KL); and it divides eta by 10 at each of its
    learning-rate decays (epochs 215, 260, 285 of 300), which kdbench's cosine schedule does not have: eta
    stays constant here.
    """

    defaults = {"eta": 0.025, "bert": 1.0, "kl_reduction": "batchmean", "attack_mode": "eval"}
    bounds = {"eta": WEIGHT, "bert": NON_NEGATIVE}
    choices = {"kl_reduction": KL_REDUCTIONS, "attack_mode": ATTACK_MODES}
    baselines = ("ce", "at")

    @classmethod
    def teacher_specs(cls, params, arch, kind, seed):
        if kind is None:
            return []
        return [TeacherSpec(arch, kind, seed), TeacherSpec(arch, "standard", seed)]  # robust first: the source

    def __init__(self, student, teachers, params, ctx):
        super().__init__(student, teachers, params, ctx)
        self.register_buffer("w_nat", torch.tensor(0.5))
        self.register_buffer("start", torch.full((2,), float("nan")))  # (L_adv, L_nat) at the first step

    @property
    def weights(self) -> tuple[float, float]:
        """(w_adv, w_nat) as they stand."""
        return 1.0 - self.w_nat.item(), self.w_nat.item()

    def losses(self, batch: Batch):
        t_nat = batch.teacher_logits[1]
        red = self.params["kl_reduction"]
        x_adv = self.perturb(batch.x, batch.y, batch.progress)
        with torch.no_grad():
            t_rob_adv = self.teacher(x_adv)
        l_adv = kl_soft(self.student(x_adv), F.softmax(t_rob_adv, dim=1), reduction=red)
        l_nat = kl_soft(self.student(batch.x), F.softmax(t_nat, dim=1), reduction=red)
        with torch.no_grad():  # on the device, no host sync: the weights are buffers
            now = torch.stack([l_adv, l_nat]).detach()
            self.start.copy_(torch.where(torch.isnan(self.start), now, self.start))
            r = (now / self.start.clamp_min(1e-30)).pow(self.params["bert"])
            target = r[1] / r.sum()
            target = torch.where(torch.isfinite(target), target, self.w_nat)  # both terms at 0: keep the weights
            self.w_nat.sub_(self.params["eta"] * (self.w_nat - target))
        return {"kl_adv": (1 - self.w_nat) * l_adv, "kl_nat": self.w_nat * l_nat}
