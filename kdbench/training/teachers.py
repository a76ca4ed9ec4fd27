"""Teacher kinds and the teacher cache.

A teacher is trained once per (dataset, arch, kind, kind params, training config, seed) and cached on disk
as a state dict (loaded with `weights_only=True`); every method of every suite reuses it.

Kinds:
- `standard`: CE on clean data.
- `adversarial`: PGD adversarial training (Madry et al. 2018, "Towards Deep Learning Models Resistant to
  Adversarial Attacks"): min_theta E[max_{||d||_inf <= eps} CE(f(x + d), y)], the inner max by torchattacks
  PGD (`adv_steps` steps of `adv_step_size`, random start) at the suite's `adv_eps`, with the teacher in eval
  mode during the attack (as the PGD-AT teachers of the IAD and AdaAD codes; the method `at` attacks in train
  mode by default, as MadryLab's code).
- `defensive`: softmax at temperature T during training (Papernot et al. 2016, "Distillation as a Defense to
  Adversarial Perturbations against Deep Neural Networks"): loss = CE(f(x) / T, y), default T = 100.
- `trades`: TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and Accuracy"):
  loss = CE(f(x), y) + beta * KL(f(x) || f(x')), x' from TRADES's KL attack (torchattacks TPGD) at the suite's
  `adv_eps`, default beta = 6 (methods/trades.py). The RSLAD and MTARD papers distil from TRADES teachers.

The two adversarially trained kinds share the students' eps warm-up (`train.adv_warmup`, methods/inner_attack.py):
their attack's eps ramps up over that fraction of the teacher's training, as a student's does over its own.

Each kind names the training settings beyond the common ones (epochs, optimiser, ...) that change its weights,
`train_fields`: they enter its cache key (`cache_settings`), so a new kind needs no edit elsewhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn.functional as F

from ..core.gpu import full_precision
from ..core.identity import digest
from ..core.registry import Registry
from ..methods.inner_attack import warm_up
from ..methods.trades import TRADES_BETA, trades_attack, trades_terms

TEACHER_KINDS: Registry = Registry("teacher kind")


@dataclass(frozen=True)
class TeacherKind:
    summary: str
    defaults: dict[str, Any]
    objective: Callable  # (model, params, train_cfg) -> (x, y, progress) -> dict[str, Tensor]
    train_fields: tuple[str, ...] = ()  # TrainConfig fields beyond the common ones that enter the cache key


def _standard(model, params, train_cfg):
    return lambda x, y, progress: {"ce": F.cross_entropy(model(x), y)}


def _adversarial(model, params, train_cfg):
    import torchattacks
    t = train_cfg
    attack = torchattacks.PGD(model, eps=t.adv_eps, alpha=t.step_size(), steps=t.adv_steps, random_start=True)

    def objective(x, y, progress):
        warm_up(attack, t.adv_eps, t.step_size(), t.adv_warmup, progress)
        with full_precision(x):  # float32 even under autocast (GPU runs)
            x_adv = attack(x, y)  # torchattacks switches to eval for the attack and restores train mode
        return {"adv_ce": F.cross_entropy(model(x_adv), y)}

    return objective


def _defensive(model, params, train_cfg):
    T = params["temperature"]
    return lambda x, y, progress: {"ce_T": F.cross_entropy(model(x) / T, y)}


def _trades(model, params, train_cfg):
    t = train_cfg
    attack = trades_attack(model, t.adv_eps, t.step_size(), t.adv_steps)

    def objective(x, y, progress):
        warm_up(attack, t.adv_eps, t.step_size(), t.adv_warmup, progress)
        return trades_terms(model, attack, x, y, params["beta"])

    return objective


# the inner maximisation of adversarial training (adv_warmup at 0 leaves the cache keys of before: identity.NEUTRAL)
ATTACK_FIELDS = ("adv_eps", "adv_steps", "adv_step_size", "adv_warmup")

TEACHER_KINDS.add("standard", TeacherKind("cross-entropy on clean data", {}, _standard))
TEACHER_KINDS.add("adversarial", TeacherKind("PGD adversarial training at the suite's adv_eps (Madry et al. 2018)",
                                             {}, _adversarial, ATTACK_FIELDS))
TEACHER_KINDS.add("defensive", TeacherKind("softmax at temperature T during training (Papernot et al. 2016)",
                                           {"temperature": 100.0}, _defensive))
TEACHER_KINDS.add("trades", TeacherKind("TRADES at the suite's adv_eps, beta = 6 (Zhang et al. 2019)",
                                        {"beta": TRADES_BETA}, _trades, ATTACK_FIELDS))


def cache_settings(kind_name: str, params: dict, train_cfg) -> tuple[dict, dict]:
    """What a teacher of this kind adds to its cache key: its parameters with the kind's defaults filled in, and
    the values of the kind's `train_fields` (the PGD step size resolved). A kind that is not trained here
    (`pretrained`) adds its parameters only."""
    if kind_name not in TEACHER_KINDS:
        return dict(params), {}
    kind = TEACHER_KINDS.get(kind_name)
    resolved = dataclasses.replace(train_cfg, adv_step_size=train_cfg.step_size())
    return {**kind.defaults, **dict(params)}, {f: getattr(resolved, f) for f in kind.train_fields}


def teacher_key(config: dict) -> str:
    """The teacher cache's key of a teacher config (identity.digest: content, never paths)."""
    return digest(config)
