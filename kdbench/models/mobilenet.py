"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks"), CIFAR variant.

As in the RSLAD and ARD reference code: a 3x3 stride-1 stem and stride 1 in the second bottleneck group, so a
32x32 input reaches the classifier at 4x4; a stride-1 block whose width changes gets a 1x1-conv shortcut.
~2.3M parameters. Stages: the stem, then the bottleneck groups at 32x32, 16x16, 8x8 and 4x4 (the last one
ends with the 1x1 conv to 1280 channels).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .registry import MODELS, ModelInput, Normalize, StagedNet

# (expansion, out channels, blocks, stride) of each bottleneck group
CONFIG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
STAGE_OF_GROUP = [0, 0, 1, 2, 2, 3, 3]  # groups sharing a resolution form one stage


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, expansion: int, stride: int):
        super().__init__()
        mid = expansion * c_in
        self.stride = stride
        self.conv1 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride == 1 and c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


@MODELS.register("mobilenetv2", "MobileNetV2, CIFAR variant of the RSLAD/ARD code (stride-1 stem), ~2.3M params")
def mobilenetv2(inp: ModelInput) -> nn.Module:
    stem = nn.Sequential(nn.Conv2d(inp.shape[0], 32, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(32),
                         nn.ReLU(inplace=True))
    groups: list[list[nn.Module]] = [[] for _ in range(4)]
    c_in = 32
    for (expansion, c_out, n, stride), stage in zip(CONFIG, STAGE_OF_GROUP):
        for i in range(n):
            groups[stage].append(InvertedResidual(c_in, c_out, expansion, stride if i == 0 else 1))
            c_in = c_out
    groups[3] += [nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU(inplace=True)]
    stages = [stem] + [nn.Sequential(*g) for g in groups]
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, inp.num_classes))
    return StagedNet(Normalize(inp.mean, inp.std), stages, head)
