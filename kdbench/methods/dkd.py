"""Decoupled Knowledge Distillation: KD split into a target-class and a non-target-class term, weighted apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.bounds import FRACTION, NON_NEGATIVE, POSITIVE
from .base import Batch, Distiller, register_method


def binary_log_probs(z: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """log [p_target, 1 - p_target] of softmax(z), shape (N, 2), without forming 1 - p (stable when p -> 1)."""
    log_all = torch.logsumexp(z, dim=1)
    log_target = z[target_mask] - log_all
    log_rest = torch.logsumexp(z.masked_fill(target_mask, float("-inf")), dim=1) - log_all
    return torch.stack([log_target, log_rest], dim=1)


def non_target(z: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """The logits of the classes other than the target, shape (N, C - 1), in class order."""
    return z[~target_mask].view(len(z), -1)


@register_method("dkd")
class DKD(Distiller):
    """Decoupled Knowledge Distillation, DKD (Zhao et al. 2022, "Decoupled Knowledge Distillation", CVPR).

    b = [p_y, 1 - p_y] (target vs the rest), p^ = softmax over the non-target classes, all at temperature T:
    TCKD = T^2 * KL(b_t || b_s),  NCKD = T^2 * KL(p^_t || p^_s)      (batch means)
    loss = CE(s, y) + w * (alpha * TCKD + beta * NCKD),  w = min(progress / warmup, 1)
    (vanilla KD is TCKD + (1 - p_t,y) * NCKD.) Defaults: the paper's CIFAR settings alpha = 1, beta = 8, T = 4,
    CE weight 1, and the reference code's linear warm-up over its first 20 of 240 epochs (1/12 of training).
    A non-robust logit KD, the modern standard that robust distillation is measured against.

    Paper vs code (megvii-research/mdistiller, distillers/DKD.py): the same losses; mdistiller forms the binary
    probabilities by summing softmax entries and takes their log, and removes the target class with a -1000
    logit offset; here both are exact (log-sum-exp over the classes, the target left out), which is the same
    function without its underflow at confident predictions. mdistiller tunes beta per teacher-student pair on
    CIFAR-100 (8 by default, 6 for some pairs).
    """

    defaults = {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "ce_weight": 1.0, "warmup": 20 / 240}
    bounds = {"alpha": NON_NEGATIVE, "beta": NON_NEGATIVE, "temperature": POSITIVE, "ce_weight": NON_NEGATIVE,
              "warmup": FRACTION}

    def losses(self, batch: Batch):
        p = self.params
        T = p["temperature"]
        s, t = self.student(batch.x), batch.teacher_logits[0]
        mask = F.one_hot(batch.y, s.shape[1]).bool()
        log_bs, log_bt = binary_log_probs(s / T, mask), binary_log_probs(t / T, mask)
        tckd = (log_bt.exp() * (log_bt - log_bs)).sum(1).mean()
        log_ps, log_pt = F.log_softmax(non_target(s, mask) / T, 1), F.log_softmax(non_target(t, mask) / T, 1)
        nckd = (log_pt.exp() * (log_pt - log_ps)).sum(1).mean()
        w = min(batch.progress / p["warmup"], 1.0) if p["warmup"] > 0 else 1.0
        return {"ce": p["ce_weight"] * F.cross_entropy(s, batch.y),
                "tckd": w * p["alpha"] * T * T * tckd, "nckd": w * p["beta"] * T * T * nckd}
