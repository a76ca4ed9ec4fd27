"""L-inf and L2 attacks written from plain torch, independent of torchattacks and of kdbench's attack code, to check
kdbench's worst case against: PGD with random restarts on three losses (cross-entropy, the Carlini-Wagner
margin, and cross-entropy on logits divided by their largest magnitude, which undoes softmax saturation);
an example counts as robust only if it survives every loss and every restart."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _margin(z, y):
    true = z.gather(1, y[:, None]).squeeze(1)
    other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
    return other - true  # > 0: misclassified


def _ce(z, y):
    return F.cross_entropy(z, y, reduction="none")


def _ce_rescaled(z, y):
    return F.cross_entropy(z / z.abs().amax(1, keepdim=True).clamp_min(1e-12), y, reduction="none")


LOSSES = {"margin": _margin, "ce-rescaled": _ce_rescaled, "ce": _ce}  # strongest first: fewer survivors to attack


@torch.no_grad()
def _correct(model, x, y):
    return model(x).argmax(1) == y


def _survivors(model, x, y, losses, restarts, steps, seed, start, move) -> torch.Tensor:
    """Per-example mask: correct clean and under every (loss, restart) run of `steps` steps, each restart from
    `start(x0, g)` (g: the run's generator) with `move(xa, grad, x0, t)` as its step; an example broken at any
    iterate counts as broken. Only the survivors so far are attacked again."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    ok = _correct(model, x, y)
    for name in losses:
        loss_fn = LOSSES[name]
        for _ in range(restarts):
            idx = torch.nonzero(ok).flatten()
            if not len(idx):
                return ok
            x0, y0 = x[idx], y[idx]
            xa = start(x0, g)
            broken = torch.zeros(len(idx), dtype=torch.bool, device=x.device)
            for t in range(steps):
                xa.requires_grad_(True)
                with torch.enable_grad():
                    z = model(xa)
                    loss = loss_fn(z, y0).sum()
                    (grad,) = torch.autograd.grad(loss, xa)
                broken |= (z.argmax(1) != y0).detach()
                xa = move(xa.detach(), grad, x0, t)
            broken |= ~_correct(model, xa, y0)
            ok[idx] = ~broken
    return ok


def strong_robust(model, x, y, eps, steps=200, restarts=10, seed=0, losses=tuple(LOSSES)) -> torch.Tensor:
    """Per-example mask: correct clean and under every (loss, restart) PGD run of `steps` steps (step size
    eps/4 decayed to eps/40 over the run), random uniform start."""
    def start(x0, g):
        return (x0 + (torch.rand(x0.shape, generator=g, device=x0.device) * 2 - 1) * eps).clamp(0, 1)

    def move(xa, grad, x0, t):
        step = eps / 4 * (0.1 ** (t / max(steps - 1, 1)))
        return torch.min(torch.max(xa + step * grad.sign(), x0 - eps), x0 + eps).clamp(0, 1)

    return _survivors(model, x, y, losses, restarts, steps, seed, start, move)


def _l2_normalise(v):
    return v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def _project_l2(xa, x0, eps):
    """Onto the L2 ball of radius eps around x0, then into [0, 1] (clipping moves every coordinate towards x0's
    box, so the result stays inside the ball)."""
    delta = xa - x0
    norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
    delta = delta * torch.clamp(eps / norms.clamp_min(1e-12), max=1.0)
    return (x0 + delta).clamp(0, 1)


def strong_robust_l2(model, x, y, eps, steps=200, restarts=10, seed=0, losses=tuple(LOSSES)) -> torch.Tensor:
    """The L2 counterpart of `strong_robust`: PGD steps along the L2-normalised gradient (step size eps/2 decayed to
    eps/20 over the run), projected onto the L2 ball of radius eps and into [0, 1]; each restart starts at a
    uniformly random direction at a uniformly random fraction of eps. An example is robust only if it survives every
    loss and every restart."""
    def start(x0, g):
        direction = _l2_normalise(torch.randn(x0.shape, generator=g, device=x0.device))
        radius = torch.rand(len(x0), generator=g, device=x0.device).view(-1, *([1] * (x0.dim() - 1)))
        return _project_l2(x0 + direction * radius * eps, x0, eps)

    def move(xa, grad, x0, t):
        step = eps / 2 * (0.1 ** (t / max(steps - 1, 1)))
        return _project_l2(xa + step * _l2_normalise(grad), x0, eps)

    return _survivors(model, x, y, losses, restarts, steps, seed, start, move)
