"""Dynamic Temperature Knowledge Distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.bounds import FRACTION, NON_NEGATIVE, POSITIVE
from .base import Batch, Distiller, kd_loss, register_method

MIN_MAX_SUM = 1e-6  # below this, max(z_t) + max(z_s) gives no usable temperatures


def dynamic_temperatures(z_s: torch.Tensor, z_t: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (T_s, T_t) = (2 max z_s, 2 max z_t) / (max z_t + max z_s) * tau.

    Fallback: where max z_t + max z_s <= 1e-6 (the temperatures would flip sign or explode), both are tau,
    which turns that sample's term into vanilla KD at temperature tau. Shapes (N, 1)."""
    ms = z_s.max(dim=1, keepdim=True).values
    mt = z_t.max(dim=1, keepdim=True).values
    total = ms + mt
    ok = total > MIN_MAX_SUM
    safe = torch.where(ok, total, torch.ones_like(total))
    t_s = torch.where(ok, 2 * ms / safe * tau, torch.full_like(total, tau))
    t_t = torch.where(ok, 2 * mt / safe * tau, torch.full_like(total, tau))
    # max z_s alone may be <= 0 while the sum is positive: keep both temperatures positive
    bad = (t_s <= 0) | (t_t <= 0)
    t_s = torch.where(bad, torch.full_like(t_s, tau), t_s)
    t_t = torch.where(bad, torch.full_like(t_t, tau), t_t)
    return t_s, t_t


@register_method("dtkd")
class DTKD(Distiller):
    """Dynamic Temperature KD (Wei & Bai 2024, "Dynamic Temperature Knowledge Distillation", arXiv 2404.12711).

    T_s = 2 max(z_s) / (max(z_t) + max(z_s)) * tau,  T_t = 2 max(z_t) / (max(z_t) + max(z_s)) * tau
    loss = w * [alpha * mean_i KL(softmax(z_t/T_t) || softmax(z_s/T_s))_i * T_t,i * T_s,i
                + beta * tau^2 * KL(softmax(z_t/tau) || softmax(z_s/tau))] + CE(z_s, y)
    w = min(progress / warmup, 1): the official linear warm-up (20 of 240 epochs = 1/12 of training).
    Per-sample fallback to T_s = T_t = tau where the temperatures are unusable (see dynamic_temperatures).
    """

    defaults = {"tau": 4.0, "alpha": 3.0, "beta": 1.0, "ce_weight": 1.0, "warmup": 20 / 240}
    bounds = {"tau": POSITIVE, "alpha": NON_NEGATIVE, "beta": NON_NEGATIVE, "ce_weight": NON_NEGATIVE,
              "warmup": FRACTION}

    def losses(self, batch: Batch):
        p = self.params
        z_s = self.student(batch.x)
        z_t = batch.teacher_logits[0]
        t_s, t_t = dynamic_temperatures(z_s, z_t.detach(), p["tau"])
        log_ps = F.log_softmax(z_s / t_s, dim=1)
        pt = F.softmax(z_t / t_t, dim=1)
        kl = (pt * (torch.log(pt.clamp_min(1e-30)) - log_ps)).sum(1, keepdim=True)
        w = min(batch.progress / p["warmup"], 1.0) if p["warmup"] > 0 else 1.0
        return {
            "dtkd": w * p["alpha"] * (kl * t_t * t_s).mean(),
            "kd": w * p["beta"] * kd_loss(z_s, z_t, p["tau"]),
            "ce": p["ce_weight"] * F.cross_entropy(z_s, batch.y),
        }
