"""Introspective Adversarial Distillation: the student trusts the teacher only as far as the teacher is right on
the student's adversarial example. Two variants, after the authors' two scripts: IAD-I (on ARD) and IAD-II (on
AKD2, with a standard teacher beside the robust one)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.bounds import FRACTION, NON_NEGATIVE, POSITIVE, WEIGHT
from .adversarial import AdversarialDistiller
from .base import KL_REDUCTIONS, Batch, TeacherSpec, kd_loss, register_method
from .inner_attack import ATTACK_MODES
from .perexample import batch_mean, kl_rows


def trust(teacher, x_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """w_i = P_t(y_i | x'_i)^beta: how far the teacher is right on the student's adversarial example (no gradient)."""
    with torch.no_grad():
        return F.softmax(teacher(x_adv), dim=1).gather(1, y[:, None])[:, 0].pow(beta)


@register_method("iad")
class IAD(AdversarialDistiller):
    """Introspective Adversarial Distillation, IAD-I (Zhu et al. 2022, ICLR): trust the teacher where it is right on x'.

    Zhu, Yao, Han, Zhang, Liu, Niu, Zhou, Xu & Yang 2022, "Reliable Adversarial Distillation with Unreliable
    Teachers".

    x' = argmax_{||x' - x||_inf <= eps} CE(s(x'), y)                  (PGD, uniform random start, as in ARD)
    w_i = P_t(y_i | x'_i)^beta                                       (the teacher's trust in x'_i, no gradient)
    loss = alpha * T^2 * KL(softmax(t(x)/T) || softmax(s(x')/T))
         + alpha * mean_i (1 - w_i) KL(softmax(s(x_i)) || softmax(s(x'_i)))        (introspection)
         + (1 - alpha) * CE(s(x), y)
    The introspection term is on only after a warm-up, `begin` (a fraction of training; before it the loss is
    ARD's). Defaults are the authors' IAD-I settings: T = 1, alpha = 1 (no CE term), beta = 0.1, begin = 60 of
    200 epochs = 0.3. The student's clean term KL(s(x) || s(x')) carries the gradient through both s(x) and
    s(x'), as in the reference code.

    Paper vs code (ZFancy/IAD, IAD-I.py): the formula above is the reference code's IAD-I script. Its teacher
    term is not multiplied by w_i: the teacher keeps full weight and the distrust 1 - w_i is handed to the
    student's own clean/adversarial agreement. The trust-weighted teacher term is the IAD-II script's, the
    variant `iad-ii`. The reference code attacks with the student in train mode (`net.train()` before
    `AttackPGD`: batch statistics, running statistics updated by the attack's passes), as here by default
    (`attack_mode = "train"`); its KLs are sums over classes divided by the batch size (`kl_reduction =
    "batchmean"`, the default). Differences: the trust weights are computed on the whole batch at once; the
    code's unused extra pass of the student on x' (`basicop`, which also moves the running statistics) is not made.
    """

    defaults = {"temperature": 1.0, "alpha": 1.0, "beta": 0.1, "begin": 0.3, "kl_reduction": "batchmean",
                "attack_mode": "train"}
    bounds = {"temperature": POSITIVE, "alpha": WEIGHT, "beta": NON_NEGATIVE, "begin": FRACTION}
    choices = {"kl_reduction": KL_REDUCTIONS, "attack_mode": ATTACK_MODES}
    baselines = ("ce", "at")

    def losses(self, batch: Batch):
        p = self.params
        T, alpha, red = p["temperature"], p["alpha"], p["kl_reduction"]
        t_clean = batch.teacher_logits[0]
        x_adv = self.perturb(batch.x, batch.y, batch.progress)
        s_adv = self.student(x_adv)
        terms = {"kd_adv": alpha * kd_loss(s_adv, t_clean, T, red)}
        if batch.progress >= p["begin"]:
            w = trust(self.teacher, x_adv, batch.y, p["beta"])
            s_clean = self.student(batch.x)
            rows = (1 - w) * kl_rows(s_adv, F.softmax(s_clean, dim=1))
            terms["introspect"] = alpha * batch_mean(rows, s_adv.shape[1], red)
        else:  # the same terms every step (the trainer logs them per epoch)
            s_clean = self.student(batch.x) if alpha < 1 else None
            terms["introspect"] = s_adv.new_zeros(())
        if alpha < 1:
            terms["ce"] = (1 - alpha) * F.cross_entropy(s_clean, batch.y)
        return terms


@register_method("iad-ii")
class IADII(AdversarialDistiller):
    """IAD-II (Zhu et al. 2022, ICLR): the robust teacher's term weighted by its trust, beside a standard teacher.

    Zhu, Yao, Han, Zhang, Liu, Niu, Zhou, Xu & Yang 2022, "Reliable Adversarial Distillation with Unreliable
    Teachers"; IAD on AKD2 (Chen et al. 2021, "Robust Overfitting may be Mitigated by Properly Learned Smoothening").

    x' = argmax_{||x' - x||_inf <= eps} CE(s(x'), y)          (PGD, uniform random start, the student in train mode)
    w_i = P_rob(y_i | x'_i)^beta from `begin` on, 1 before it           (the robust teacher's trust, no gradient)
    loss = (1 - a1 - a2) * CE(s(x'), y)
         + a1 * T^2 * [ mean_i w_i KL(softmax(t_rob(x'_i)/T) || softmax(s(x'_i)/T))
                      + mean_i (1 - w_i) KL(softmax(s(x_i)) || softmax(s(x'_i))) ]
         + a2 * T^2 * mean_i KL(softmax(t_std(x'_i)/T) || softmax(s(x'_i)/T))
    with a1 = robust_weight, a2 = standard_weight (a1 + a2 <= 1). Before `begin` every w_i = 1: the loss is
    AKD2's, CE plus both teachers' KD on x'. Teachers: the robust teacher of the job's kind (`adversarial` by
    default) and a `standard` teacher of the same architecture and seed.

    Defaults are the reference code's (ZFancy/IAD, IAD-II.py): T = 1, a1 = 0.5, a2 = 0.25 (its alpha1, alpha2;
    so the CE weight is 0.25), beta = 0.1, begin = 40 of 200 epochs = 0.2; its teachers are a PGD-AT and a
    standard ResNet-18. As in the code: both teachers see x' (IAD-I's teacher sees x), the CE is on x', the
    clean/adversarial agreement KL(s(x) || s(x')) carries the gradient through both and is multiplied by T^2
    too, the attack sees the student in train mode (`attack_mode = "train"`), and the KLs are sums over
    classes divided by the batch size (`kl_reduction = "batchmean"`).
    """

    defaults = {"temperature": 1.0, "robust_weight": 0.5, "standard_weight": 0.25, "beta": 0.1, "begin": 0.2,
                "kl_reduction": "batchmean", "attack_mode": "train"}
    bounds = {"temperature": POSITIVE, "robust_weight": WEIGHT, "standard_weight": WEIGHT, "beta": NON_NEGATIVE,
              "begin": FRACTION}
    choices = {"kl_reduction": KL_REDUCTIONS, "attack_mode": ATTACK_MODES}
    uses_teacher_logits = False  # both teachers are run on x', which exists only inside the step
    baselines = ("ce", "at")

    @classmethod
    def params_problem(cls, params):
        a1, a2 = params["robust_weight"], params["standard_weight"]
        if a1 + a2 > 1:
            return (f"robust_weight + standard_weight = {a1 + a2:g} exceeds 1 (the CE term's weight is "
                    f"1 - robust_weight - standard_weight)")
        return ""

    @classmethod
    def teacher_specs(cls, params, arch, kind, seed):
        if kind is None:
            return []
        return [TeacherSpec(arch, kind, seed), TeacherSpec(arch, "standard", seed)]  # robust first: the source

    def losses(self, batch: Batch):
        p = self.params
        T, a1, a2, red = p["temperature"], p["robust_weight"], p["standard_weight"], p["kl_reduction"]
        x_adv = self.perturb(batch.x, batch.y, batch.progress)
        s_adv = self.student(x_adv)
        C = s_adv.shape[1]
        with torch.no_grad():
            t_rob, t_std = self.teachers[0](x_adv), self.teachers[1](x_adv)
        soft = F.log_softmax(s_adv / T, dim=1)
        rob_rows = F.kl_div(soft, F.softmax(t_rob / T, dim=1), reduction="none").sum(1)
        std_rows = F.kl_div(soft, F.softmax(t_std / T, dim=1), reduction="none").sum(1)
        terms = {"ce_adv": (1 - a1 - a2) * F.cross_entropy(s_adv, batch.y)}
        if batch.progress >= p["begin"]:
            w = F.softmax(t_rob, dim=1).gather(1, batch.y[:, None])[:, 0].pow(p["beta"])
            agree = kl_rows(s_adv, F.softmax(self.student(batch.x), dim=1))
            terms["kd_robust"] = a1 * T * T * batch_mean(w * rob_rows, C, red)
            terms["introspect"] = a1 * T * T * batch_mean((1 - w) * agree, C, red)
        else:  # every w_i = 1; the same terms every step (the trainer logs them per epoch)
            terms["kd_robust"] = a1 * T * T * batch_mean(rob_rows, C, red)
            terms["introspect"] = s_adv.new_zeros(())
        terms["kd_standard"] = a2 * T * T * batch_mean(std_rows, C, red)
        return terms
