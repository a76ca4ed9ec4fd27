"""Noise-severity sweeps: accuracy along a continuous severity f in (0, 1] per corruption family, from a barely
visible corruption to one that leaves (almost) no information in the image, summarised as an area under the curve.

CIFAR-10-C's severity constants (corruptions.py) are calibrated for 32x32 natural images; on small or simple
images (8x8 digits) most of them sit at the clean ceiling for every model. The sweep's scale is fixed a priori by
what destroys the signal, never fitted to any model's results:

| family   | at severity f                                                   | at f = 1                        |
|----------|-----------------------------------------------------------------|---------------------------------|
| gaussian | x + N(0, (4 f s)^2), s = the pixel std of the evaluated images  | noise std 4x the signal's        |
| impulse  | each value replaced by 0 or 1 (half each) with probability f    | every value replaced: no signal |
| blur     | Gaussian blur, sigma = f * image size / 2 pixels                | blurred to (nearly) flat        |
| contrast | (x - mean) * (1 - f) + mean, per image and channel              | a constant image: no signal     |

Outputs are clipped to [0, 1]. `s` is one number, the std of all pixel values of the evaluated images (a property
of the inputs, not of any model; it puts the Gaussian family on the data's own scale).

Metrics (stable names): `noise/<family>/<f>` for each f of `eval.noise_levels`, and `noise-auc/<family>`, the
trapezoid area under accuracy vs f on [0, 1] with the clean accuracy at f = 0 (1.0 = unaffected; a model at
chance everywhere scores about 1/C). Corruptions a method also trains on are marked (`trains_on` of the method,
shown in the record).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..core.metric_names import in_family
from ..core.registry import Registry
from ..training.loop import predict_logits
from .inputs import reuse

NOISE_FAMILIES: Registry = Registry("noise family")

GAUSSIAN_SPAN = 4.0  # the Gaussian family's noise std at f = 1, in units of the images' pixel std


@dataclass(frozen=True)
class NoiseFamily:
    summary: str
    apply: Callable  # (x, f, pixel_std, generator) -> x_corrupted (unclipped)


def _gaussian(x, f, s, g):
    return x + GAUSSIAN_SPAN * f * s * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def _impulse(x, f, s, g):
    hit = torch.rand(x.shape, generator=g, device=x.device) < f
    salt = (torch.rand(x.shape, generator=g, device=x.device) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


def _blur(x, f, s, g):
    sigma = f * x.shape[-1] / 2
    radius = max(1, int(4 * sigma + 0.5))
    k = min(2 * radius + 1, 2 * x.shape[-1] - 1)  # reflect padding needs k // 2 < size
    coords = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    w = torch.exp(-coords**2 / (2 * sigma**2))
    w = w / w.sum()
    c = x.shape[1]
    pad = F.pad(x, (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    out = F.conv2d(pad, w.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(out, w.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def _contrast(x, f, s, g):
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return (x - mean) * (1 - f) + mean


NOISE_FAMILIES.add("gaussian", NoiseFamily(f"x + N(0, ({GAUSSIAN_SPAN:g} f s)^2), s the images' pixel std", _gaussian))
NOISE_FAMILIES.add("impulse", NoiseFamily("salt-and-pepper on a fraction f of the values", _impulse))
NOISE_FAMILIES.add("blur", NoiseFamily("Gaussian blur, sigma f * size / 2 px", _blur))
NOISE_FAMILIES.add("contrast", NoiseFamily("contrast scaled by 1 - f", _contrast))


def _noisy(fam: NoiseFamily, x: torch.Tensor, f: float, s: float, seed: int, i: int) -> torch.Tensor:
    """The images of family `fam` (the i-th of the sweep) at severity f, from their own seeded generator."""
    g = torch.Generator(device=x.device).manual_seed(seed * 1_000_003 + 7919 * i + int(f * 1e6))
    return fam.apply(x, f, s, g).clamp(0.0, 1.0)


def noise_sweep(model, x: torch.Tensor, y: torch.Tensor, ev, seed: int) -> dict[str, float]:
    """The metrics above for `ev.noise_families` x `ev.noise_levels` (none when either is empty)."""
    levels = sorted(ev.noise_levels)
    if not levels or not ev.noise_families:
        return {}
    s = x.float().std().item()
    clean = (predict_logits(model, x, ev.batch_size).argmax(1) == y).float().mean().item()
    metrics = {}
    for i, name in enumerate(ev.noise_families):
        fam = NOISE_FAMILIES.get(name)
        accs = [clean]
        for f in levels:
            xc = reuse(x, ("noise", name, i, f, seed), lambda: _noisy(fam, x, f, s, seed, i))
            acc = (predict_logits(model, xc, ev.batch_size).argmax(1) == y).float().mean().item()
            metrics[in_family("noise", name, f)] = acc
            accs.append(acc)
        fs = [0.0] + levels
        area = sum((fs[j + 1] - fs[j]) * (accs[j + 1] + accs[j]) / 2 for j in range(len(levels)))
        metrics[in_family("noise-auc", name)] = area / fs[-1]
    return metrics
