"""Adam and SGD on one flat buffer, with the learning-rate schedule built in.

For the small models kdbench trains on the CPU, `torch.optim.Adam.step` (even fused) costs 0.3-0.5 ms per step
in Python bookkeeping: hooks, per-parameter state lookups, step counters kept as tensors. That is 10-30 % of a
3-7 ms training step of the digits CNNs. `FlatOptimizer` instead makes every parameter, and its gradient, a view
into one contiguous buffer (each view keeps its parameter's shape and strides, so channels-last weights stay
channels-last), and updates that buffer with a handful of whole-buffer tensor operations.

Update rules, per element, with gradient g_t (+ weight_decay * p as an L2 term, as in torch.optim) and the
learning rate lr_t of step t (t = 1, 2, ...):

- Adam (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015), betas (0.9, 0.999), eps 1e-8:
      m_t = b1 m_{t-1} + (1 - b1) g_t          v_t = b2 v_{t-1} + (1 - b2) g_t^2
      p_t = p_{t-1} - lr_t / (1 - b1^t) * m_t / (sqrt(v_t) / sqrt(1 - b2^t) + eps)
- SGD with Nesterov momentum mu (Sutskever et al., ICML 2013, in PyTorch's form, no dampening):
      buf_t = mu buf_{t-1} + g_t  (buf_1 = g_1)        p_t = p_{t-1} - lr_t (g_t + mu buf_t)

These are torch.optim.Adam's and torch.optim.SGD(nesterov=True)'s updates (tests/test_optim.py checks them
against PyTorch's own step by step). One difference: every parameter is stepped every step; a parameter that
received no gradient in a step counts as gradient zero (PyTorch's optimizers skip parameters whose `.grad` is
None). The models and distillers kdbench trains use every parameter in every step.

Schedules: "constant" (lr_t = lr) and "cosine" (lr_t = lr * (1 + cos(pi * (t - 1) / total)) / 2, without
warm restarts; Loshchilov & Hutter, ICLR 2017).

Mixed precision in float16 (GPU runs, gpu.py) scales the loss; `step(loss_scale=s)` unscales the gradient
buffer, and skips the update when it holds an inf or NaN (then the caller lowers the scale).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.errors import KdbenchError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def _strides_of(p: torch.Tensor) -> tuple[int, ...]:
    """The strides of `p` if it is contiguous or channels-last, else those of a contiguous tensor."""
    if p.is_contiguous() or (p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)):
        return p.stride()
    return torch.empty(p.shape, device="meta").stride()


class FlatOptimizer:
    """Adam or SGD (Nesterov) over `params`, which it turns into views of one flat buffer (see the module
    docstring). `cfg` is a TrainConfig (optimizer, lr, momentum, weight_decay, schedule); `total_steps` sets the
    length of the cosine schedule.

    Use: `opt.zero_grad()`, backward, `opt.step()`. The gradients accumulate into the flat gradient buffer, so
    do not set a parameter's `.grad` to None while training; `release()` drops the buffers afterwards."""

    def __init__(self, params, cfg, total_steps: int):
        if cfg.optimizer not in OPTIMIZERS:
            raise KdbenchError(f"unknown optimizer {cfg.optimizer!r}; choose from: {', '.join(OPTIMIZERS)}")
        if cfg.schedule not in SCHEDULES:
            raise KdbenchError(f"unknown schedule {cfg.schedule!r}; choose from: {', '.join(SCHEDULES)}")
        unique: dict[int, nn.Parameter] = {}
        for p in params:
            unique.setdefault(id(p), p)
        self.params = list(unique.values())
        if not self.params:
            raise ValueError("FlatOptimizer got no parameters")
        first = self.params[0]
        if any(p.device != first.device or p.dtype != first.dtype for p in self.params):
            raise ValueError("FlatOptimizer needs every parameter on one device, in one dtype")
        n = sum(p.numel() for p in self.params)
        self.flat = torch.empty(n, device=first.device, dtype=first.dtype)
        self.grad = torch.zeros_like(self.flat)
        offset = 0
        for p in self.params:
            strides = _strides_of(p)
            view = self.flat.as_strided(p.shape, strides, offset)
            view.copy_(p.detach())
            p.data = view
            p.grad = self.grad.as_strided(p.shape, strides, offset)
            offset += p.numel()
        self.kind, self.lr, self.schedule = cfg.optimizer, cfg.lr, cfg.schedule
        self.weight_decay, self.momentum = cfg.weight_decay, getattr(cfg, "momentum", 0.9)
        self.total_steps = max(int(total_steps), 1)
        self.t = 0  # steps taken
        self.calls = 0  # step() calls, skipped ones included: the schedule advances on each
        if self.kind == "adam":
            self.m, self.v, self.denom = torch.zeros_like(self.flat), torch.zeros_like(self.flat), torch.empty_like(self.flat)
        else:
            self.buf = None

    def lr_at(self, call: int) -> float:
        """The learning rate of the `call`-th step() call (0-based)."""
        if self.schedule == "constant":
            return self.lr
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(call, self.total_steps) / self.total_steps))

    def zero_grad(self) -> None:
        self.grad.zero_()

    def step(self, loss_scale: float | None = None) -> bool:
        """One update from the accumulated gradients. With `loss_scale`, the gradients are divided by it
        first, and the update is skipped (returns False) if any of them is not finite."""
        lr = self.lr_at(self.calls)
        self.calls += 1
        g = self.grad
        if loss_scale is not None:
            g.mul_(1.0 / loss_scale)
            if not bool(torch.isfinite(g).all()):
                return False
        if self.weight_decay:
            g.add_(self.flat, alpha=self.weight_decay)
        self.t += 1
        if self.kind == "adam":
            b1, b2 = ADAM_BETAS
            self.m.lerp_(g, 1 - b1)
            self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
            torch.sqrt(self.v, out=self.denom).div_(math.sqrt(1 - b2 ** self.t)).add_(ADAM_EPS)
            self.flat.addcdiv_(self.m, self.denom, value=-lr / (1 - b1 ** self.t))
        else:
            if self.buf is None:
                self.buf = g.clone()
            else:
                self.buf.mul_(self.momentum).add_(g)
            self.flat.add_(g.add(self.buf, alpha=self.momentum), alpha=-lr)
        return True

    def release(self) -> None:
        """Drop the gradients and the optimizer state (the parameters stay views of the flat buffer)."""
        for p in self.params:
            p.grad = None
        self.grad = self.m = self.v = self.denom = self.buf = None
