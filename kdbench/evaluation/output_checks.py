"""Checks of a model's outputs before its robustness is believed (after AutoAttack's checks.py, Croce & Hein
2020): a randomised model (two forward passes of the same input differ) needs an attack that averages over the
randomness (EOT), and a model whose outputs are already probabilities (rows in [0, 1] summing to 1) is attacked
through a second softmax, whose gradients vanish. Each check returns its evidence; sanity.py decides."""

from __future__ import annotations

import torch

RANDOM_TOL = 1e-4  # largest L2 distance of the two passes' L2-normalised outputs that still counts as equal
PROB_TOL = 1e-5  # rows in [-tol, 1 + tol] summing to 1 within tol count as probabilities


@torch.no_grad()
def output_evidence(model, x: torch.Tensor, n: int = 256) -> dict:
    """Two forward passes of the first `n` examples (in the model's current mode, eval during evaluation)."""
    xb = x[:n]
    a, b = model(xb).float(), model(xb).float()
    na = a / (a.norm(dim=1, keepdim=True) + 1e-10)
    nb = b / (b.norm(dim=1, keepdim=True) + 1e-10)
    diff = (na - nb).norm(dim=1).max().item()
    prob = bool(a.min() > -PROB_TOL and a.max() < 1 + PROB_TOL and ((a.sum(1) - 1).abs() < PROB_TOL).all())
    return {"randomness": {"max_normalised_diff": diff, "examples": len(xb),
                           "predictions_differ": int((a.argmax(1) != b.argmax(1)).sum())},
            "probability_outputs": {"rows_are_probabilities": prob, "min": a.min().item(), "max": a.max().item(),
                                    "max_row_sum_error": (a.sum(1) - 1).abs().max().item()}}
