"""LeNet-style CNNs for 28x28 grey images (MNIST, Fashion-MNIST): a teacher and a student.

- `lenet-small`: LeNet-5 (LeCun et al. 1998, "Gradient-Based Learning Applied to Document Recognition") with
  ReLU and max pooling: C1 conv5x5x6 (padding 2) -> S2 pool -> C3 conv5x5x16 -> S4 pool -> C5 conv5x5x120 ->
  F6 84 -> classes. About 62k parameters on 28x28.
- `lenet-large`: the "small CNN" that TRADES (Zhang et al. 2019) and many MNIST robustness papers use:
  conv3x3x32, conv3x3x32, pool, conv3x3x64, conv3x3x64, pool, FC 200, FC 200 -> classes. About 0.31M
  parameters on 28x28.
"""

from __future__ import annotations

from torch import nn

from .registry import MODELS, ModelInput, Normalize, StagedNet


def _conv_out(size: int, kernel: int, padding: int = 0) -> int:
    return size + 2 * padding - kernel + 1


@MODELS.register("lenet-small", "LeNet-5 (conv 6/16/120, FC 84) with ReLU and max pooling, ~62k params on 28x28")
def lenet_small(inp: ModelInput) -> nn.Module:
    c, h, w = inp.shape
    h3, w3 = _conv_out(h // 2, 5) // 2, _conv_out(w // 2, 5) // 2  # after C3 + S4
    if min(h3, w3) < 5:
        raise ValueError(f"lenet-small needs images of at least 28x28, got {h}x{w}")
    stages = [
        nn.Sequential(nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(16, 120, 5), nn.ReLU(inplace=True)),
    ]
    flat = 120 * (h3 - 4) * (w3 - 4)
    head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 84), nn.ReLU(inplace=True), nn.Linear(84, inp.num_classes))
    return StagedNet(Normalize(inp.mean, inp.std), stages, head)


@MODELS.register("lenet-large", "TRADES' small CNN for MNIST (conv 32/32/64/64, FC 200/200), ~0.31M params on 28x28")
def lenet_large(inp: ModelInput) -> nn.Module:
    c, h, w = inp.shape
    h2, w2 = _conv_out(_conv_out(h, 3), 3) // 2, _conv_out(_conv_out(w, 3), 3) // 2
    h3, w3 = _conv_out(_conv_out(h2, 3), 3) // 2, _conv_out(_conv_out(w2, 3), 3) // 2
    if min(h3, w3) < 1:
        raise ValueError(f"lenet-large needs images of at least 14x14, got {h}x{w}")
    stages = [
        nn.Sequential(nn.Conv2d(c, 32, 3), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Conv2d(32, 32, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True), nn.Conv2d(64, 64, 3), nn.ReLU(inplace=True),
                      nn.MaxPool2d(2)),
    ]
    head = nn.Sequential(nn.Flatten(), nn.Linear(64 * h3 * w3, 200), nn.ReLU(inplace=True), nn.Linear(200, 200),
                         nn.ReLU(inplace=True), nn.Linear(200, inp.num_classes))
    return StagedNet(Normalize(inp.mean, inp.std), stages, head)
