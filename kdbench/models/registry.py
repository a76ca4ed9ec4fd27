"""Architectures. Every model takes images in [0, 1] and normalizes inside (so attacks work in pixel space),
and declares its stages: `forward_stages(x)` returns the logits and the output of each stage, the feature
taps that layer-wise distillation (FitNets, attention transfer) reads.

A model factory is registered by name and called as `factory(shape, num_classes, mean, std)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.registry import Registry

MODELS: Registry = Registry("model")


@dataclass(frozen=True)
class ModelInput:
    """What a factory needs to know about the data: (C, H, W), classes, per-channel mean/std."""

    shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def model_input(data) -> ModelInput:
    """The ModelInput of a dataset (data.TensorData: shape, classes, normalization)."""
    return ModelInput(data.shape, data.num_classes, data.mean, data.std)


class Normalize(nn.Module):
    """(x - mean) / std with per-channel constants, stored as buffers (part of the state dict)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class StagedNet(nn.Module):
    """normalize -> stage_1 -> ... -> stage_k -> head. `forward_stages` exposes each stage's output."""

    def __init__(self, normalize: nn.Module, stages: list[nn.Module], head: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.stages = nn.ModuleList(stages)
        self.head = head

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.normalize(x)
        feats = []
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return self.head(h), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.normalize(x)
        for stage in self.stages:
            h = stage(h)
        return self.head(h)


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def small_image_cnn(inp: ModelInput, widths: tuple[int, int, int], hidden: int) -> StagedNet:
    """Three conv stages for small images (8x8 digits, 28x28 MNIST): HxW -> H/2 -> H/4, then an MLP head."""
    c, h, w = inp.shape
    w1, w2, w3 = widths
    stages = [
        nn.Sequential(*conv_bn_relu(c, w1)),
        nn.Sequential(*conv_bn_relu(w1, w2), nn.MaxPool2d(2)),
        nn.Sequential(*conv_bn_relu(w2, w3), nn.MaxPool2d(2)),
    ]
    flat = w3 * (h // 4) * (w // 4)
    head = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, inp.num_classes))
    return StagedNet(Normalize(inp.mean, inp.std), stages, head)


@MODELS.register("cnn-large", "3-stage CNN, widths 16/32/64, MLP head 320 (teacher for small images)")
def cnn_large(inp: ModelInput) -> nn.Module:
    return small_image_cnn(inp, (16, 32, 64), 320)


@MODELS.register("cnn-small", "3-stage CNN, widths 8/16/32, MLP head 32 (student, ~1/10 of cnn-large on 8x8)")
def cnn_small(inp: ModelInput) -> nn.Module:
    return small_image_cnn(inp, (8, 16, 32), 32)


def build_model(arch: str, inp: ModelInput) -> nn.Module:
    return MODELS.get(arch)(inp)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one (C, H, W) input, counted with forward hooks on every
    Conv2d (output elements x input channels per group x kernel area) and Linear (output elements x input
    features). Normalization, pooling, activations and batch norm are not counted (the usual convention)."""
    total = 0

    def conv_hook(m: nn.Conv2d, inputs, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, inputs, out):
        nonlocal total
        total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    training = model.training
    try:
        model.eval()
        device = next(iter(model.parameters()), torch.empty(0)).device
        model(torch.zeros(1, *shape, device=device))
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    return int(total)


# explicit import: the real-scale architectures register themselves in MODELS

