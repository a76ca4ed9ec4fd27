"""Introspective Adversarial Distillation: the student trusts the teacher only as far as the teacher is right on
the student's adversarial example."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.bounds import FRACTION, NON_NEGATIVE, POSITIVE, WEIGHT
from .adversarial import AdversarialDistiller
from .base import Batch, kd_loss, register_method
from .perexample import kl_rows


@register_method("iad")
class IAD(AdversarialDistiller):
    """Introspective Adversarial Distillation, IAD-I (Zhu et al. 2022, ICLR): trust the teacher where it is right on x'.

    Zhu, Yao, Han, Zhang, Liu, Niu, Zhou, Xu & Yang 2022, "Reliable Adversarial Distillation with Unreliable
    Teachers".

    x' = argmax_{||x' - x||_inf <= eps} CE(s(x'), y)                  (PGD, uniform random start, as in ARD)
    w_i = P_t(y_i | x'_i)^beta                                       (the teacher's trust in x'_i, no gradient)
    loss = alpha * T^2 * KL(softmax(t(x)/T) || softmax(s(x')/T))
         + alpha * mean_i (1 - w_i) * KL(softmax(s(x_i)) || softmax(s(x'_i)))        (introspection)
         + (1 - alpha) * CE(s(x), y)
    The introspection term is on only after a warm-up, `begin` (a fraction of training; before it the loss is
    ARD's). Defaults are the authors' IAD-I settings: T = 1, alpha = 1 (no CE term), beta = 0.1, begin = 60 of
    200 epochs = 0.3. The student's clean term KL(s(x) || s(x')) carries the gradient through both s(x) and
    s(x'), as in the reference code.

    Paper vs code (ZFancy/IAD, IAD-I.py): the formula above is the reference code's. Its teacher term is not
    multiplied by w_i: the teacher keeps full weight and the distrust 1 - w_i is handed to the student's own
    clean/adversarial agreement. The paper's own equations were not available to check when this was written
    (its abstract describes the three cases: full trust, partial trust, the student's own soft labels).
    Differences from the code: the attack runs with the student in eval mode (the reference code attacks in
    train mode, batch-norm statistics of the adversarial batch); the KL terms are batch means of the sum over
    classes, as the code's sum / batch size; the trust weights are computed on the whole batch at once.
    """

    defaults = {"temperature": 1.0, "alpha": 1.0, "beta": 0.1, "begin": 0.3}
    bounds = {"temperature": POSITIVE, "alpha": WEIGHT, "beta": NON_NEGATIVE, "begin": FRACTION}
    baselines = ("ce", "at")

    def losses(self, batch: Batch):
        p = self.params
        T, alpha = p["temperature"], p["alpha"]
        t_clean = batch.teacher_logits[0]
        x_adv = self.perturb(batch.x, batch.y)
        s_adv = self.student(x_adv)
        terms = {"kd_adv": alpha * kd_loss(s_adv, t_clean, T)}
        if batch.progress >= p["begin"]:
            with torch.no_grad():
                trust = F.softmax(self.teacher(x_adv), dim=1).gather(1, batch.y[:, None])[:, 0].pow(p["beta"])
            s_clean = self.student(batch.x)
            terms["introspect"] = alpha * ((1 - trust) * kl_rows(s_adv, F.softmax(s_clean, dim=1))).mean()
        else:  # the same terms every step (the trainer logs them per epoch)
            s_clean = self.student(batch.x) if alpha < 1 else None
            terms["introspect"] = s_adv.new_zeros(())
        if alpha < 1:
            terms["ce"] = (1 - alpha) * F.cross_entropy(s_clean, batch.y)
        return terms
