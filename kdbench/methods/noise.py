"""Noise-augmented distillation, aimed at corruption robustness."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.bounds import NON_NEGATIVE, POSITIVE, WEIGHT
from .base import Batch, Distiller, kd_loss, register_method


@register_method("noise-kd")
class NoiseKD(Distiller):
    """KD on Gaussian-noise-augmented batches, teacher and student on the same noisy input (cf. Rusak et al. 2020).

    x~ = clip(x + sigma * N(0, I), 0, 1): noise augmentation for corruption robustness (Rusak et al. 2020,
    "A Simple Way to Make Neural Networks Robust Against Diverse Image Corruptions").

    loss = alpha * T^2 * KL(softmax(t(x~)/T) || softmax(s(x~)/T)) + (1 - alpha) * CE(s(x~), y)
    """

    defaults = {"temperature": 4.0, "alpha": 0.9, "sigma": 0.1}
    bounds = {"temperature": POSITIVE, "alpha": WEIGHT, "sigma": NON_NEGATIVE}
    uses_teacher_logits = False

    @classmethod
    def trains_on(cls, params):
        from ..data.corruptions import CORRUPTIONS

        sigma = params["sigma"]
        levels = CORRUPTIONS.get("gaussian_noise").levels
        near = min(range(len(levels)), key=lambda i: abs(levels[i] - sigma))
        how = f"trains on x + N(0, {sigma:g}^2); gaussian_noise severity {near + 1} is sigma {levels[near]:g}"
        return {"gaussian_noise": how, "noise/gaussian": how}

    def losses(self, batch: Batch):
        T, alpha = self.params["temperature"], self.params["alpha"]
        x = (batch.x + self.params["sigma"] * torch.randn_like(batch.x)).clamp(0.0, 1.0)
        with torch.no_grad():
            t = self.teacher(x)
        s = self.student(x)
        return {"kd": alpha * kd_loss(s, t, T), "ce": (1 - alpha) * F.cross_entropy(s, batch.y)}
