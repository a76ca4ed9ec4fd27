"""Per-example loss pieces for the methods that weight or attack examples one by one (IAD, AdaAD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_rows(student_logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per-example KL(target || softmax(student)) = sum_c p_c (log p_c - log q_c), shape (N,). The gradient
    reaches the target too when it requires one (TRADES-style self-distillation terms)."""
    return F.kl_div(F.log_softmax(student_logits, dim=1), target_probs, reduction="none").sum(1)


def batch_mean(rows: torch.Tensor, num_classes: int, reduction: str) -> torch.Tensor:
    """The batch mean of per-example KLs `rows` (N,), reduced as base.kl_soft's `reduction` says: "batchmean" as
    it is, "mean" averaged over the `num_classes` classes as well (1/C of it, the reference codes' KLDivLoss())."""
    return rows.mean() / (num_classes if reduction == "mean" else 1)
