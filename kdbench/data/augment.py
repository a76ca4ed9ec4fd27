"""Training-time data augmentation as batched tensor ops on the training device.

A suite's `[data] augment = ["random_crop", "horizontal_flip"]` applies each named op, in order, to every
training batch (teachers and students alike; never to the test data). The ops draw from one generator seeded
from the job's seed, so a job is deterministic on a given device. With augmentation the teacher sees a new
input every step, so its logits are computed per batch on the augmented input instead of being cached.

- `random_crop`: pad 4 pixels of zeros on every side and crop back to the original size at a random offset
  per image (torchvision's `RandomCrop(32, padding=4)`, the CIFAR standard).
- `horizontal_flip`: mirror each image left-right with probability 1/2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..core.registry import Registry

AUGMENTATIONS: Registry = Registry("augmentation")

PAD = 4
AUGMENT_SEED_OFFSET = 7_777_777  # keeps the augmentation stream apart from the job's other random streams


def random_crop(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    dy = torch.randint(0, 2 * PAD + 1, (n,), generator=g, device=x.device)
    dx = torch.randint(0, 2 * PAD + 1, (n,), generator=g, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w + 2 * PAD)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
    return out.gather(3, cols)


def horizontal_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


AUGMENTATIONS.add("random_crop", random_crop, "pad 4 pixels (zeros) and crop back at a random offset per image")
AUGMENTATIONS.add("horizontal_flip", horizontal_flip, "mirror left-right with probability 1/2 per image")


def make_augmenter(names: tuple[str, ...], seed: int, device) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The batch transform for `names` (None when there are none), deterministic for `seed` on `device`."""
    if not names:
        return None
    ops = [AUGMENTATIONS.get(name) for name in names]
    g = torch.Generator(device=torch.device(device)).manual_seed(seed + AUGMENT_SEED_OFFSET)

    def augment(x: torch.Tensor) -> torch.Tensor:
        for op in ops:
            x = op(x, g)
        return x

    return augment
