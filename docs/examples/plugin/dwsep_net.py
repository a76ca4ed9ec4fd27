"""A small architecture of a user's own, as a kdbench plugin: `dwsep-small`, a CNN of depthwise-separable
convolutions for small images (8x8 digits, 28x28 MNIST), 8,074 parameters on digits (cnn-small: 10,402).

What kdbench asks of an architecture: a factory `f(inp: ModelInput) -> nn.Module` registered by name, whose module
takes images in [0, 1] and normalizes them inside (so attacks work in pixel space) and returns logits. Methods
that read features (FitNets, attention transfer) also call `forward_stages(x) -> (logits, [stage outputs])`.
"""

from torch import nn

from kdbench import ModelInput, Normalize, register_model


def separable(c_in: int, c_out: int) -> nn.Sequential:
    """A depthwise 3x3 convolution (one filter per channel), then a pointwise 1x1 one, each with batch norm."""
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
                         nn.ReLU(inplace=True), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class DepthwiseSeparableNet(nn.Module):
    """normalize -> 3x3 stem -> separable, pool -> separable, pool -> global average pool -> linear."""

    def __init__(self, inp: ModelInput, widths=(24, 48, 96)):
        super().__init__()
        w1, w2, w3 = widths
        self.normalize = Normalize(inp.mean, inp.std)
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(inp.shape[0], w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1),
                          nn.ReLU(inplace=True)),
            nn.Sequential(separable(w1, w2), nn.MaxPool2d(2)),
            nn.Sequential(separable(w2, w3), nn.MaxPool2d(2)),
        ])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w3, inp.num_classes))

    def forward_stages(self, x):
        h, feats = self.normalize(x), []
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return self.head(h), feats

    def forward(self, x):
        return self.forward_stages(x)[0]


@register_model("dwsep-small", "depthwise-separable CNN, widths 24/48/96, global average pool (a user's own)")
def dwsep_small(inp: ModelInput) -> nn.Module:
    return DepthwiseSeparableNet(inp)
