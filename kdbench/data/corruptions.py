"""Common corruptions, batched torch on the images' device, severities 1-5, deterministic for a generator.

Severity constants are those of CIFAR-10-C (Hendrycks & Dietterich 2019, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", make_cifar_c.py), not the ImageNet-C ones. Constants
measured in pixels (blur sigma) are scaled by image_size / 32 so a corruption means the same at every
resolution; intensity constants (noise levels, contrast, brightness, JPEG quality, pixelate factor) carry
over unchanged. Every output stays in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..core.registry import Registry

CORRUPTIONS: Registry = Registry("corruption")

CIFAR_SIZE = 32


@dataclass(frozen=True)
class Corruption:
    """A registered corruption. `stream` numbers its random stream: the generator of (job seed, corruption,
    severity) is seeded from it, so a corruption's numbers never depend on which others are registered or in
    what order. A new corruption takes a number no other entry uses (the registry test checks it)."""

    summary: str
    levels: tuple  # CIFAR-10-C constants for severities 1..5
    apply: Callable  # (x, level, generator) -> x_corrupted
    stream: int

    def __call__(self, x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
        if severity not in (1, 2, 3, 4, 5):
            raise ValueError(f"severity must be 1..5, got {severity}")
        return self.apply(x, self.levels[severity - 1], generator).clamp(0.0, 1.0)


def _randn(x, g):
    return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def _gaussian_noise(x, sigma, g):
    return x + sigma * _randn(x, g)


def _shot_noise(x, lam, g):
    return torch.poisson(x * lam, generator=g) / lam


def _impulse_noise(x, amount, g):
    """Salt-and-pepper on each element with probability `amount`, half salt, half pepper (skimage 's&p')."""
    u = torch.rand(x.shape, generator=g, device=x.device)
    salt = torch.rand(x.shape, generator=g, device=x.device) < 0.5
    hit = u < amount
    return torch.where(hit, salt.to(x.dtype), x)


def _speckle_noise(x, sigma, g):
    return x + x * sigma * _randn(x, g)


def _gaussian_blur(x, sigma, g):
    sigma = sigma * x.shape[-1] / CIFAR_SIZE
    radius = max(1, int(4 * sigma + 0.5))  # skimage truncates at 4 sigma
    k = min(2 * radius + 1, 2 * (x.shape[-1] // 2) + 1)
    from torchvision.transforms.v2 import functional as TF  # imported when used: torchvision takes ~1.3 s to load

    return TF.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])


def _contrast(x, c, g):
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return (x - mean) * c + mean


def _brightness(x, c, g):
    """Add c to V in HSV (hue and saturation kept): RGB scales by V'/V; grey images simply get x + c."""
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(0.0, 1.0)
    return torch.where(v > 0, x * v_new / v.clamp_min(1e-12), v_new.expand_as(x))


def _jpeg(x, quality, g):
    x8 = (x * 255).round().to(torch.uint8)
    device = x.device
    from torchvision.transforms.v2 import functional as TF

    out = TF.jpeg(x8.cpu(), quality=int(quality))
    return out.to(device=device, dtype=x.dtype) / 255.0


def _pixelate(x, factor, g):
    h, w = x.shape[-2:]
    small = (max(1, int(h * factor)), max(1, int(w * factor)))
    return F.interpolate(F.interpolate(x, size=small, mode="area"), size=(h, w), mode="area")


CORRUPTIONS.add("gaussian_noise", Corruption("x + N(0, sigma^2), sigma .04-.10", (0.04, 0.06, 0.08, 0.09, 0.10),
                                             _gaussian_noise, stream=0))
CORRUPTIONS.add("shot_noise", Corruption("Poisson(x * lam) / lam, lam 500-50", (500, 250, 100, 75, 50), _shot_noise,
                                         stream=1))
CORRUPTIONS.add("impulse_noise", Corruption("salt-and-pepper, amount .01-.07", (0.01, 0.02, 0.03, 0.05, 0.07),
                                            _impulse_noise, stream=2))
CORRUPTIONS.add("speckle_noise", Corruption("x + x * N(0, sigma^2), sigma .06-.20", (0.06, 0.10, 0.12, 0.16, 0.20),
                                            _speckle_noise, stream=3))
CORRUPTIONS.add("gaussian_blur", Corruption("Gaussian blur, sigma .4-1 px at 32x32 (scaled to the image size)",
                                            (0.4, 0.6, 0.7, 0.8, 1.0), _gaussian_blur, stream=4))
CORRUPTIONS.add("contrast", Corruption("(x - mean) * c + mean, c .75-.15", (0.75, 0.5, 0.4, 0.3, 0.15), _contrast,
                                       stream=5))
CORRUPTIONS.add("brightness", Corruption("V + c in HSV, c .05-.30", (0.05, 0.1, 0.15, 0.2, 0.3), _brightness,
                                         stream=6))
CORRUPTIONS.add("jpeg", Corruption("JPEG compression, quality 80-40", (80, 65, 58, 50, 40), _jpeg, stream=7))
CORRUPTIONS.add("pixelate", Corruption("box (area) down-sample to .95-.65 of the size and back",
                                       (0.95, 0.9, 0.85, 0.75, 0.65), _pixelate, stream=8))


def corrupt(name: str, x: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    """Corrupt a batch deterministically: the generator is seeded from (seed, corruption, severity)."""
    g = torch.Generator(device=x.device)
    corruption = CORRUPTIONS.get(name)
    g.manual_seed(seed * 1_000_003 + corruption.stream * 101 + severity)
    return corruption(x, severity, g)
