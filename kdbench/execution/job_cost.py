"""What a job costs, relative to the others: the driver orders the work by it (the costliest teachers first), and
the dry run (estimate.py) counts its passes with it. Counted on small stand-in models, never measured."""

from __future__ import annotations

import torch

from ..models.registry import ModelInput, build_model
from ..training.teachers import TEACHER_KINDS


class PassCounter:
    """Counts forward passes of a model (with and without autograd) through a hook on its first module."""

    def __init__(self, model):
        self.grad = self.nograd = 0
        target = getattr(model, "normalize", model)
        self.handle = target.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if torch.is_grad_enabled():
            self.grad += 1
        else:
            self.nograd += 1


def teacher_passes(kind_name: str, params, train_cfg, channels: int = 1, num_classes: int = 10) -> int:
    """Forward passes of one training step of a teacher of this kind (the inner attack's included), counted on a
    stand-in model."""
    shape = (channels, 8, 8)
    inp = ModelInput(shape, num_classes, (0.5,) * channels, (0.25,) * channels)
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        x, y = torch.rand(4, *shape), torch.randint(0, num_classes, (4,))
        model = build_model("cnn-small", inp)
        kind = TEACHER_KINDS.get(kind_name)
        counter = PassCounter(model)
        model.train()
        kind.objective(model, {**kind.defaults, **dict(params)}, train_cfg)(x, y, 0.5)
    return counter.grad + counter.nograd


def teacher_cost(spec, train_cfg, memo: dict | None = None) -> int:
    """A relative cost of training the teacher `spec`: epochs x forward passes per step (`teacher_passes`, the
    inner attack of an adversarial teacher included). `memo` keeps the counts of the kinds seen so far."""
    memo = {} if memo is None else memo
    key = (spec.kind, repr(spec.params), repr(train_cfg))
    if key not in memo:
        memo[key] = teacher_passes(spec.kind, spec.params, train_cfg)
    return train_cfg.teacher_epochs * memo[key]
