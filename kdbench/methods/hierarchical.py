"""Layer-wise (hierarchical) feature distillation on the models' declared stages: FitNets-style hints at
every stage (`hierarchical`) and attention transfer. FitNets as published (one middle hint, two stages) is
`fitnets` (fitnets.py). Every registered model exposes `forward_stages(x) -> (logits, [stage outputs])`; the
student's and teacher's stages are matched in order (the last `len(stages)` of the deeper model), and maps of
different spatial size are average-pooled to the smaller one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.bounds import NON_NEGATIVE, POSITIVE, WEIGHT
from .base import Batch, Distiller, kd_loss, register_method


def match_stages(s_feats: list, t_feats: list, stages: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pairs (student feature, teacher feature) at the requested stage indices (negative = from the end)."""
    k = min(len(s_feats), len(t_feats))
    s_feats, t_feats = s_feats[-k:], t_feats[-k:]
    return [(s_feats[i], t_feats[i]) for i in stages]


def same_size(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger spatial map to the smaller one's size."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return F.adaptive_avg_pool2d(a, size), F.adaptive_avg_pool2d(b, size)


class FeatureDistiller(Distiller):
    """Shared by the layer-wise methods: one teacher forward per batch for its stage outputs, plus the KD
    terms alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)."""

    uses_teacher_logits = False

    def stage_pairs(self, x: torch.Tensor):
        s_logits, s_feats = self.student.forward_stages(x)
        with torch.no_grad():
            t_logits, t_feats = self.teacher.forward_stages(x)
        return s_logits, t_logits, match_stages(s_feats, t_feats, list(self.params["stages"]))

    def kd_terms(self, s_logits, t_logits, y) -> dict:
        T, alpha = self.params["temperature"], self.params["alpha"]
        terms = {"ce": (1 - alpha) * F.cross_entropy(s_logits, y)}
        if alpha > 0:
            terms["kd"] = alpha * kd_loss(s_logits, t_logits, T)
        return terms


@register_method("hierarchical")
class StageHints(FeatureDistiller):
    """FitNets-style hints at every stage, joint with KD (after Romero et al. 2015, ICLR); not FitNets as published.

    loss = beta * sum_k mean (r_k(s_k) - t_k)^2 + alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE
    where s_k, t_k are the student's and teacher's k-th stage outputs and r_k a learned 1x1-conv regressor
    from the student's channels to the teacher's (trained jointly with the student).
    Not FitNets as published, which hints one middle layer with a convolutional regressor and trains in two
    stages (hints first, then KD): that is the method `fitnets`. This one puts a hint on several stages at once
    and trains hints and KD together from the first step.
    """

    defaults = {"beta": 1.0, "temperature": 4.0, "alpha": 0.9, "stages": [-3, -2, -1]}
    bounds = {"beta": NON_NEGATIVE, "temperature": POSITIVE, "alpha": WEIGHT}

    def __init__(self, student, teachers, params, ctx):
        super().__init__(student, teachers, params, ctx)
        probe = torch.zeros(2, *ctx.input_shape, device=next(student.parameters()).device)
        with torch.no_grad():
            training = student.training
            student.eval()
            pairs = match_stages(student.forward_stages(probe)[1], self.teacher.forward_stages(probe)[1],
                                 list(self.params["stages"]))
            student.train(training)
        self.regressors = nn.ModuleList(nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1, bias=False)
                                        for s, t in pairs)

    def losses(self, batch: Batch):
        s_logits, t_logits, pairs = self.stage_pairs(batch.x)
        hint = sum(F.mse_loss(*same_size(reg(s), t)) for reg, (s, t) in zip(self.regressors, pairs))
        return {"hint": self.params["beta"] * hint, **self.kd_terms(s_logits, t_logits, batch.y)}


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis: at(f) = normalize(mean_c |f_c|^p), flattened over space (L2-normalized)."""
    return F.normalize(f.abs().pow(p).mean(1).flatten(1), dim=1)


@register_method("attention")
class AttentionTransfer(FeatureDistiller):
    """Attention transfer at several depths (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention").

    loss = beta * sum_k mean (at(s_k) - at(t_k))^2 + alpha * T^2 * KL(..) + (1 - alpha) * CE(s, y),
    at(f) = normalize(mean_c f_c^p) over spatial positions; beta = 1000 and p = 2 as in the authors' code,
    alpha = 0 by default (the paper's AT + CE).
    """

    defaults = {"beta": 1000.0, "p": 2.0, "temperature": 4.0, "alpha": 0.0, "stages": [-3, -2, -1]}
    bounds = {"beta": NON_NEGATIVE, "p": POSITIVE, "temperature": POSITIVE, "alpha": WEIGHT}

    def losses(self, batch: Batch):
        s_logits, t_logits, pairs = self.stage_pairs(batch.x)
        p = self.params["p"]
        at = sum((attention_map(a, p) - attention_map(b, p)).pow(2).mean() for a, b in
                 (same_size(s, t) for s, t in pairs))
        return {"at": self.params["beta"] * at, **self.kd_terms(s_logits, t_logits, batch.y)}
