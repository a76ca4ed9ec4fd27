"""Calibration: how well a model's confidence matches its accuracy, from its logits.

- `ece`, expected calibration error (Guo, Pleiss, Sun & Weinberger, ICML 2017, "On Calibration of Modern Neural
  Networks"; gpleiss/temperature_scaling's `_ECELoss`): the confidence of a prediction is its largest softmax
  probability; the predictions are put in `BINS` = 15 equal-width bins of confidence, (0, 1/15], (1/15, 2/15], ...,
  (14/15, 1], and
      ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|,
  acc and conf the bin's accuracy and mean confidence.
- `nll`, negative log-likelihood: the mean over examples of -log p_y (the cross-entropy of the logits), in nats.
- `brier`, the Brier score (Brier 1950) of the multi-class forecast: the mean over examples of
  sum_c (p_c - 1[y = c])^2, in [0, 2].

All three are better lower. They cost one softmax over logits the evaluation computes anyway (clean data and every
corrupted set), so they are computed for every model. `reliability` keeps the per-bin sums that a reliability
diagram (reporting/plots.py) draws.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BINS = 15


def _bin_of(confidence: torch.Tensor, bins: int) -> torch.Tensor:
    """The bin (0 .. bins - 1) of each confidence in (0, 1]: bin b holds (b / bins, (b + 1) / bins]."""
    return (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)


def reliability(logits: torch.Tensor, y: torch.Tensor, bins: int = BINS) -> dict[str, list]:
    """Per confidence bin: the number of examples, how many are correct, and the sum of their confidences."""
    p = logits.detach().double().softmax(1)
    confidence, pred = p.max(1)
    b = _bin_of(confidence, bins)
    count = torch.zeros(bins, dtype=torch.float64).index_add_(0, b.cpu(), torch.ones_like(confidence).cpu())
    correct = torch.zeros(bins, dtype=torch.float64).index_add_(0, b.cpu(), (pred == y).double().cpu())
    conf = torch.zeros(bins, dtype=torch.float64).index_add_(0, b.cpu(), confidence.cpu())
    return {"bins": bins, "count": [int(c) for c in count.tolist()], "correct": [int(c) for c in correct.tolist()],
            "confidence": [round(c, 6) for c in conf.tolist()]}


def ece_from_bins(count, correct, confidence) -> float:
    """ECE from per-bin sums (`reliability`; or the sums of several models' bins, pooled)."""
    n = sum(count)
    if n == 0:
        return float("nan")
    return sum(abs(k - c) for k, c, m in zip(correct, confidence, count) if m) / n


def calibration(logits: torch.Tensor, y: torch.Tensor, bins: int = BINS) -> dict[str, float]:
    """{"ece", "nll", "brier"} of `logits` (N x C) for the labels `y`."""
    z = logits.detach().double()
    logp = F.log_softmax(z, 1)
    nll = F.nll_loss(logp, y, reduction="mean").item()
    p = logp.exp()
    onehot = F.one_hot(y, z.shape[1]).double()
    brier = ((p - onehot) ** 2).sum(1).mean().item()
    r = reliability(logits, y, bins)
    return {"ece": ece_from_bins(r["count"], r["correct"], r["confidence"]), "nll": nll, "brier": brier}
