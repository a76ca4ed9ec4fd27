"""Input gradients in the input's own layout, whatever the model's memory format.

A model in the channels-last memory format (kdbench's layout on the CPU, and on a GPU with `channels_last`) hands
back the gradient with respect to a contiguous NCHW input in channels-last strides. torchattacks' PGDL2 flattens
that gradient with `.view`, which needs contiguous strides, and fails on images of more than one channel; wrapping
the model in `ContiguousInputGrad` gives it the gradient as a contiguous tensor. The values are unchanged."""

from __future__ import annotations

import torch
from torch import nn


class _ContiguousGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class ContiguousInputGrad(nn.Module):
    """`model`, with the gradient with respect to its input made contiguous."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_ContiguousGrad.apply(x))
