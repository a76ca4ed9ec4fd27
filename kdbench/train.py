"""The training loop: tensors on the device, index-slice batches, Adam or SGD, cosine or constant schedule.

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

from .errors import KdbenchError


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite: the job fails (no metrics record is written)."""


def seed_everything(seed: int) -> None:
    """One integer seeds Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    """Adam or SGD (Nesterov momentum), with PyTorch's fused kernels (one kernel per step for all parameters
    instead of one per tensor: 4x cheaper steps for small models on the CPU)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True,
                               fused=True)
    raise KdbenchError(f"unknown optimizer {cfg.optimizer!r}; choose from: adam, sgd")


def fit(module: nn.Module, params: list[nn.Parameter], step_losses: Callable[[torch.Tensor, float], dict],
        n: int, epochs: int, cfg, seed: int, device: torch.device, on_epoch: Callable | None = None,
        amp: torch.dtype | None = None) -> list[dict]:
    """Train `params` for `epochs` over `n` examples. Returns the per-epoch mean of each loss term.

    `amp`: run each step's losses under autocast to this dtype (GPU runs, see gpu.py); float16 scales the
    loss against gradient underflow (a step whose gradients overflow is skipped by the scaler)."""
    from .gpu import training_precision

    g = torch.Generator().manual_seed(seed)
    opt = make_optimizer(params, cfg)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    bs = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    total = epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    else:
        sched = None
    history = []
    step = 0
    module.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g).to(device)
        terms: dict[str, list[torch.Tensor]] = {}  # each loss term per step, read once per epoch (no per-step sync)
        for b in range(steps_per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            if len(idx) < 2:  # batch norm cannot train on a single example
                continue
            with training_precision(device, amp):
                losses = step_losses(idx, step / total)
                values = list(losses.values())
                loss = values[0]
                for v in values[1:]:
                    loss = loss + v
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            if sched is not None:
                sched.step()
            step += 1
            for k, v in losses.items():
                terms.setdefault(k, []).append(v.detach())
        history.append(_epoch_means(terms, steps_per_epoch, epoch))
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs, history[-1])
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
