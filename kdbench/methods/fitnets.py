"""FitNets as published: one hint in the middle of the network, a convolutional regressor, and two training
stages (hint pre-training of the student's lower half, then KD of the whole student)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.bounds import FRACTION, NON_NEGATIVE, POSITIVE
from .base import Batch, Distiller, register_method
from .hierarchical import same_size


def middle(n: int) -> int:
    """The middle of n stages (the lower one of two middles)."""
    return (n - 1) // 2


@register_method("fitnets")
class FitNets(Distiller):
    """FitNets as published: one middle hint, then KD, in two stages (Romero et al. 2015, ICLR).

    Romero, Ballas, Kahou, Chassang, Gatta & Bengio 2015, "FitNets: Hints for Thin Deep Nets".

    Hint: u = the teacher's middle stage output (the hint layer), v = the student's middle stage output (the
    guided layer), r = a convolutional regressor, kernel (H_v - H_u + 1) x (W_v - W_u + 1) without padding so
    that r(v) has the hint's size, followed by the hint layer's non-linearity (ReLU when the hint is a ReLU
    output, none otherwise).
    Stage 1 (the first `hint_stage` of training): loss = 1/2 * mean_n sum_{c,h,w} (u - r(v))^2, which trains the
    student up to its guided layer (and r); the student's later layers receive no gradient.
    Stage 2 (the rest): loss = CE(s, y) + lambda * CE(softmax(t/T), softmax(s/T)),  T = 3, lambda decaying
    linearly from 4 to 1 over the stage (soft-label cross-entropy, without a T^2 factor, as published).

    Paper vs code (adri-romsor/FitNets: scripts/fitnets_training.py, costs/HintCost.py, KDCost.py, the CIFAR-10
    yaml): the same losses and the same middle hint; the reference stops stage 1 on a validation set (or after
    a given number of epochs) and keeps its best epoch, while kdbench spends a fixed fraction of the training
    steps on it, 1/4 by default (its own choice: the paper gives no fraction), and evaluates the last epoch;
    the reference decays lambda from 4 towards 1 between epochs 5 and 400 of a 288-epoch run (so it ends near
    1.9), kdbench reaches 1 at the end; its regressor is a maxout convolution like its teacher's layers.
    Where the student's map is smaller than the teacher's (no valid convolution can grow it), the teacher's
    hint is average-pooled to the student's size and r is a 1x1 convolution. With SGD and weight decay, the
    student's later layers shrink by the decay during stage 1 (they are not frozen, only without gradient).
    """

    defaults = {"hint_stage": 0.25, "temperature": 3.0, "lambda_start": 4.0, "lambda_end": 1.0}
    bounds = {"hint_stage": FRACTION, "temperature": POSITIVE, "lambda_start": NON_NEGATIVE,
              "lambda_end": NON_NEGATIVE}

    def __init__(self, student, teachers, params, ctx):
        super().__init__(student, teachers, params, ctx)
        device = next(student.parameters()).device
        probe = torch.rand(2, *ctx.input_shape, generator=torch.Generator().manual_seed(0)).to(device)  # own stream
        with torch.no_grad():
            training = student.training
            student.eval()
            s_feats, t_feats = student.forward_stages(probe)[1], self.teacher.forward_stages(probe)[1]
            student.train(training)
        self.guided, self.hint = middle(len(s_feats)), middle(len(t_feats))
        v, u = s_feats[self.guided], t_feats[self.hint]
        grow = v.shape[-2] >= u.shape[-2] and v.shape[-1] >= u.shape[-1]
        kernel = (v.shape[-2] - u.shape[-2] + 1, v.shape[-1] - u.shape[-1] + 1) if grow else (1, 1)
        self.regressor = nn.Conv2d(v.shape[1], u.shape[1], kernel).to(probe.device)
        self.relu = bool((u >= 0).all())

    def hint_loss(self, v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        r = self.regressor(v)
        if self.relu:
            r = F.relu(r)
        r, u = same_size(r, u)
        return 0.5 * (r - u).pow(2).flatten(1).sum(1).mean()

    def losses(self, batch: Batch):
        p = self.params
        zero = batch.x.new_zeros(())  # the same terms every step (the trainer logs them per epoch)
        if batch.progress < p["hint_stage"]:
            v = self.student.forward_stages(batch.x)[1][self.guided]
            with torch.no_grad():
                u = self.teacher.forward_stages(batch.x)[1][self.hint]
            return {"hint": self.hint_loss(v, u), "kd": zero, "ce": zero}
        T = p["temperature"]
        done = (batch.progress - p["hint_stage"]) / (1.0 - p["hint_stage"])
        lam = p["lambda_start"] + (p["lambda_end"] - p["lambda_start"]) * done
        s = self.student(batch.x)
        soft = F.softmax(batch.teacher_logits[0] / T, dim=1)
        return {"hint": zero, "kd": lam * F.cross_entropy(s / T, soft), "ce": F.cross_entropy(s, batch.y)}
