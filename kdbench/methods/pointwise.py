"""Point-wise logit matching."""

from __future__ import annotations

import torch.nn.functional as F

from ..core.bounds import WEIGHT
from .base import Batch, Distiller, register_method


@register_method("pointwise")
class Pointwise(Distiller):
    """Per-sample logit matching (Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?") mixed with CE.

    loss = alpha * mean_{i,c} (s_ic - t_ic)^2 + (1 - alpha) * CE(s, y)
    """

    defaults = {"alpha": 0.5}
    bounds = {"alpha": WEIGHT}

    def losses(self, batch: Batch):
        alpha = self.params["alpha"]
        s = self.student(batch.x)
        return {"mse": alpha * F.mse_loss(s, batch.teacher_logits[0]), "ce": (1 - alpha) * F.cross_entropy(s, batch.y)}
