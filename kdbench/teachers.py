"""Teacher kinds and the teacher cache.

A teacher is trained once per (dataset, arch, kind, kind params, training config, seed) and cached on disk
as a state dict (loaded with `weights_only=True`); every method of every suite reuses it.

Kinds:
- `standard`: CE on clean data.
- `adversarial`: PGD adversarial training (Madry et al. 2018, "Towards Deep Learning Models Resistant to
  Adversarial Attacks"): min_theta E[max_{||d||_inf <= eps} CE(f(x + d), y)], the inner max by torchattacks
  PGD (`adv_steps` steps of `adv_step_size`, random start) at the suite's `adv_eps`.
- `defensive`: softmax at temperature T during training (Papernot et al. 2016, "Distillation as a Defense to
  Adversarial Perturbations against Deep Neural Networks"): loss = CE(f(x) / T, y), default T = 100.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn.functional as F
import torchattacks

from .gpu import full_precision
from .registry import Registry

TEACHER_KINDS: Registry = Registry("teacher kind")


@dataclass(frozen=True)
class TeacherKind:
    summary: str
    defaults: dict[str, Any]
    objective: Callable  # (model, params, train_cfg) -> (x, y, progress) -> dict[str, Tensor]


def _standard(model, params, train_cfg):
    return lambda x, y, progress: {"ce": F.cross_entropy(model(x), y)}


def _adversarial(model, params, train_cfg):
    attack = torchattacks.PGD(model, eps=train_cfg.adv_eps, alpha=train_cfg.step_size(), steps=train_cfg.adv_steps,
                              random_start=True)

    def objective(x, y, progress):
        with full_precision(x):  # float32 even under autocast (GPU runs)
            x_adv = attack(x, y)  # torchattacks switches to eval for the attack and restores train mode
        return {"adv_ce": F.cross_entropy(model(x_adv), y)}

    return objective


def _defensive(model, params, train_cfg):
    T = params["temperature"]
    return lambda x, y, progress: {"ce_T": F.cross_entropy(model(x) / T, y)}


TEACHER_KINDS.add("standard", TeacherKind("cross-entropy on clean data", {}, _standard))
TEACHER_KINDS.add("adversarial", TeacherKind("PGD adversarial training at the suite's adv_eps (Madry et al. 2018)",
                                             {}, _adversarial))
TEACHER_KINDS.add("defensive", TeacherKind("softmax at temperature T during training (Papernot et al. 2016)",
                                           {"temperature": 100.0}, _defensive))


def teacher_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
