"""Wide residual networks (Zagoruyko & Komodakis 2016, "Wide Residual Networks") for 32x32 images.

WRN-d-k has (d - 4) / 6 pre-activation basic blocks in each of 3 groups of 16k, 32k and 64k channels.
`wrn-34-10` (~46M parameters) is the teacher of the adversarial distillation literature (TRADES, ARD, RSLAD);
`wrn-16-4` (~2.7M) is a small one.

Parameter names follow the TRADES / RSLAD reference code (`conv1`, `block1.layer.0.bn1`, ..., `convShortcut`,
`bn1`, `fc`), so their released WRN-34-10 state dicts load as they are: their unused `sub_block1.*` entries
are declared in `checkpoint_ignore`, and they carry no normalization (load them with `normalize = "none"`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .registry import MODELS, ModelInput, Normalize
from .resnet import PreActBlock


class BasicBlock(PreActBlock):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus the identity or a 1x1 conv shortcut, under
    the attribute names of the reference WideResNet (so its checkpoints load)."""

    shortcut_name = "convShortcut"


class NetworkBlock(nn.Module):
    def __init__(self, n: int, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[BasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """normalize -> conv1 -> block1 -> block2 -> block3 -> BN-ReLU -> global average pool -> fc.
    Stages (feature taps): the outputs of block1, block2 and the final BN-ReLU."""

    checkpoint_ignore = ("sub_block1.",)  # in the TRADES / RSLAD state dicts, never used in their forward

    def __init__(self, inp: ModelInput, depth: int, widen: int):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.normalize = Normalize(inp.mean, inp.std)
        self.conv1 = nn.Conv2d(inp.shape[0], widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], inp.num_classes)
        for m in self.modules():  # the reference code's initialisation
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h1 = self.block1(self.conv1(self.normalize(x)))
        h2 = self.block2(h1)
        h3 = F.relu(self.bn1(self.block3(h2)))
        return self.fc(F.adaptive_avg_pool2d(h3, 1).flatten(1)), [h1, h2, h3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[0]


@MODELS.register("wrn-34-10", "WideResNet-34-10 (TRADES/RSLAD layout), ~46M params: the usual robust teacher")
def wrn_34_10(inp: ModelInput) -> nn.Module:
    return WideResNet(inp, 34, 10)


@MODELS.register("wrn-16-4", "WideResNet-16-4, ~2.7M params")
def wrn_16_4(inp: ModelInput) -> nn.Module:
    return WideResNet(inp, 16, 4)
