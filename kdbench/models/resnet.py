"""ResNets for 32x32 images (CIFAR), as `StagedNet`s whose stages are the stem and the residual groups.

- `resnet18`: torchvision's ResNet-18 (He et al. 2016, "Deep Residual Learning for Image Recognition") adapted
  to 32x32 as is customary for CIFAR: a 3x3 stride-1 stem and no max pooling. ~11.2M parameters.
- `preact-resnet18`: pre-activation ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks"),
  BN-ReLU before every convolution and a final BN-ReLU, as in the adversarial training literature (Rice et
  al. 2020). ~11.2M parameters.
- `resnet20`: the CIFAR ResNet-20 of He et al. 2016 (section 4.2): 3 groups of 3 basic blocks, 16/32/64
  channels, parameter-free "option A" shortcuts (stride-2 subsampling and zero-padded channels). ~0.27M.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .registry import MODELS, ModelInput, Normalize, StagedNet


def _classifier(width: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


@MODELS.register("resnet18", "torchvision ResNet-18 adapted to 32x32 (3x3 stem, no max-pool), ~11.2M params")
def resnet18(inp: ModelInput) -> nn.Module:
    from torchvision.models import resnet as tv_resnet  # imported when used: torchvision takes ~1.3 s to load

    net = tv_resnet.resnet18(num_classes=inp.num_classes)  # torchvision's blocks and initialisation
    net.conv1 = nn.Conv2d(inp.shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    stem = nn.Sequential(net.conv1, net.bn1, net.relu)
    return StagedNet(Normalize(inp.mean, inp.std), [stem, net.layer1, net.layer2, net.layer3, net.layer4],
                     nn.Sequential(net.avgpool, nn.Flatten(), net.fc))


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the identity (or a 1x1 conv of the pre-activation).

    `shortcut_name` is the 1x1 conv's attribute, so its key in checkpoints: `shortcut` here, `convShortcut` in the
    wide ResNets of the robustness literature (wide_resnet.py)."""

    shortcut_name = "shortcut"

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        projection = stride != 1 or c_in != c_out
        setattr(self, self.shortcut_name, nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if projection else None)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = getattr(self, self.shortcut_name)
        skip = shortcut(out) if shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


def _group(block, c_in: int, c_out: int, n: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*[block(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1) for i in range(n)])


@MODELS.register("preact-resnet18", "pre-activation ResNet-18 for 32x32 (He et al. 2016), ~11.2M params")
def preact_resnet18(inp: ModelInput) -> nn.Module:
    stem = nn.Conv2d(inp.shape[0], 64, 3, stride=1, padding=1, bias=False)
    stages = [stem, _group(PreActBlock, 64, 64, 2, 1), _group(PreActBlock, 64, 128, 2, 2),
              _group(PreActBlock, 128, 256, 2, 2),
              nn.Sequential(*_group(PreActBlock, 256, 512, 2, 2), nn.BatchNorm2d(512), nn.ReLU(inplace=True))]
    return StagedNet(Normalize(inp.mean, inp.std), stages, _classifier(512, inp.num_classes))


class ShortcutA(nn.Module):
    """He et al.'s option A: subsample by the stride and zero-pad the new channels (no parameters)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlockA(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = ShortcutA(c_in, c_out, stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _init_kaiming(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
    return model


@MODELS.register("resnet20", "CIFAR ResNet-20 (He et al. 2016), 16/32/64 channels, option-A shortcuts, ~0.27M params")
def resnet20(inp: ModelInput) -> nn.Module:
    stem = nn.Sequential(nn.Conv2d(inp.shape[0], 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
    stages = [stem, _group(BasicBlockA, 16, 16, 3, 1), _group(BasicBlockA, 16, 32, 3, 2),
              _group(BasicBlockA, 32, 64, 3, 2)]
    return _init_kaiming(StagedNet(Normalize(inp.mean, inp.std), stages, _classifier(64, inp.num_classes)))

