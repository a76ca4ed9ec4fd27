"""The training loop: tensors on the device, index-slice batches, Adam or SGD on one flat buffer with a cosine
or constant schedule (optim.py).

`fit` is shared by teachers and students: the caller supplies `step_losses(idx, progress) -> dict` and the
loop sums the named terms, steps, and returns the mean of each term per epoch, after checking once per epoch
that every step's loss was finite (reading the losses every step would stall a GPU at each step).
"""

from __future__ import annotations

import math
import random
from typing import Callable

import numpy as np
import torch
from torch import nn

from .optim import FlatOptimizer

LOSS_SCALE_INIT = 2.0**16  # float16 loss scaling, torch.amp.GradScaler's defaults
LOSS_SCALE_GROWTH_INTERVAL = 2000


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite: the job fails (no metrics record is written)."""


def seed_everything(seed: int) -> None:
    """One integer seeds Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit(module: nn.Module, params: list[nn.Parameter], step_losses: Callable[[torch.Tensor, float], dict],
        n: int, epochs: int, cfg, seed: int, device: torch.device, on_epoch: Callable | None = None,
        amp: torch.dtype | None = None) -> list[dict]:
    """Train `params` for `epochs` over `n` examples. Returns the per-epoch mean of each loss term.

    `amp`: run each step's losses under autocast to this dtype (GPU runs, see gpu.py); float16 scales the
    loss against gradient underflow, as torch.amp.GradScaler does: the scale starts at 2^16, halves at a step
    whose gradients overflow (that step is skipped) and doubles after 2000 steps without overflow."""
    from ..core.gpu import training_precision

    g = torch.Generator().manual_seed(seed)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    total = epochs * steps_per_epoch
    opt = FlatOptimizer(params, cfg, total)
    scale = LOSS_SCALE_INIT if amp == torch.float16 else None
    good_steps = 0  # float16: steps since the scale last changed
    history = []
    module.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g).to(device)
        terms: dict[str, list[torch.Tensor]] = {}  # each loss term per step, read once per epoch (no per-step sync)
        for b in range(steps_per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            if len(idx) < 2:  # batch norm cannot train on a single example
                continue
            with training_precision(device, amp):
                losses = step_losses(idx, opt.calls / total)  # steps taken so far
                values = list(losses.values())
                loss = values[0]
                for v in values[1:]:
                    loss = loss + v
            opt.zero_grad()
            if scale is None:
                loss.backward()
                opt.step()
            else:
                (loss * scale).backward()
                if opt.step(loss_scale=scale):
                    good_steps += 1
                    if good_steps == LOSS_SCALE_GROWTH_INTERVAL:
                        scale, good_steps = scale * 2, 0
                else:
                    scale, good_steps = scale / 2, 0
            for k, v in losses.items():
                terms.setdefault(k, []).append(v.detach())
        history.append(_epoch_means(terms, steps_per_epoch, epoch))
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs, history[-1])
    opt.release()
    module.eval()
    return history


def _epoch_means(terms: dict[str, list[torch.Tensor]], steps_per_epoch: int, epoch: int) -> dict[str, float]:
    """The mean of each loss term over an epoch's steps; TrainingDiverged naming the first step whose loss was not
    finite (the steps after it only trained an already broken model, which is discarded)."""
    if not terms:
        return {}
    per_step = {k: torch.stack(v).float().cpu().tolist() for k, v in terms.items()}  # one device sync per epoch
    names = list(per_step)
    for i, row in enumerate(zip(*per_step.values())):
        if not all(math.isfinite(v) for v in row) or not math.isfinite(sum(row)):
            shown = ", ".join(f"{k}={v:.4g}" for k, v in zip(names, row))
            raise TrainingDiverged(f"loss is not finite at epoch {epoch + 1}, step {i + 1} ({shown})")
    return {k: sum(v) / steps_per_epoch for k, v in per_step.items()}


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
