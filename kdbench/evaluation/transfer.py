"""Transfer examples: PGD examples crafted on a student's teacher, on which the student is evaluated
(`transfer@<eps>`).

They depend only on the teacher, the test data, the job's seed and the evaluation settings, never on the
student: crafting is seeded per eps (`craft_transfer`), so the examples are bit for bit the same wherever and
in whichever order they are crafted, on the same device with the same threads. That lets every student of a
(teacher, seed, evaluation) share one set within a run (transfer_cache.py).
"""

from __future__ import annotations

import torch

from ..core.metric_names import fmt_number
from ..models.fold import fold_batch_norm
from .attacks import build_attack, run_attack
from .seeds import derived_seed


def craft_transfer(source, x: torch.Tensor, y: torch.Tensor, eps: float, ev, seed: int,
                   num_classes: int) -> torch.Tensor:
    """PGD examples at `eps` crafted on `source` (the teacher, batch norms folded), seeded by (seed, eps)."""
    s = derived_seed(seed, "transfer", fmt_number(eps))
    return run_attack(build_attack("pgd", source, eps, ev, s, num_classes), x, y, ev.batch_size, s)


def craft_all(teacher, data, ev, seed: int) -> dict[str, torch.Tensor]:
    """The transfer examples at every eps of `ev` ({eps as in metric names: examples}), as `evaluate` crafts them."""
    source = fold_batch_norm(teacher.eval())
    return {fmt_number(eps): craft_transfer(source, data.x_test, data.y_test, eps, ev, seed, data.num_classes)
            for eps in sorted(ev.eps)}
