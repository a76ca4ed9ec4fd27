"""Named L-inf attacks, all from torchattacks; eps in [0, 1] pixel scale.

Each entry builds a torchattacks `Attack` for (model, eps, eval config, seed). torchattacks switches the model
to eval mode for the attack and restores its mode afterwards. The exact hyper-parameters of each attack are
in its summary (and the README):

- `fgsm`: one signed-gradient step of size eps on the CE loss (Goodfellow et al. 2015).
- `pgd`: PGD on the CE loss (Madry et al. 2018), `pgd_steps` steps of `pgd_step_ratio * eps`, random start.
- `apgd-ce`: APGD with the CE loss (Croce & Hein 2020), `apgd_steps` steps, 1 restart.
- `apgd-dlr`: APGD with the scale-invariant DLR margin loss (Croce & Hein 2020): it does not depend on the
  logits' scale, so it sees through softmax saturation (masked gradients).
- `square`: the black-box Square attack (Andriushchenko et al. 2020), `square_queries` queries, margin loss.
- `autoattack`: torchattacks' standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square); opt-in, slow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torchattacks

from .registry import Registry

ATTACKS: Registry = Registry("attack")


@dataclass(frozen=True)
class AttackDef:
    summary: str
    build: Callable  # (model, eps, eval_cfg, seed, num_classes) -> torchattacks.Attack
    white_box: bool = True


def _fgsm(model, eps, ev, seed, num_classes):
    return torchattacks.FGSM(model, eps=eps)


def _pgd(model, eps, ev, seed, num_classes):
    return torchattacks.PGD(model, eps=eps, alpha=ev.pgd_step_ratio * eps, steps=ev.pgd_steps, random_start=True)


def _apgd(loss):
    def build(model, eps, ev, seed, num_classes):
        return torchattacks.APGD(model, norm="Linf", eps=eps, steps=ev.apgd_steps, n_restarts=1, seed=seed, loss=loss)

    return build


def _square(model, eps, ev, seed, num_classes):
    return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=ev.square_queries, n_restarts=1, seed=seed,
                               loss="margin")


def _autoattack(model, eps, ev, seed, num_classes):
    return torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=num_classes, seed=seed)


ATTACKS.add("fgsm", AttackDef("FGSM, one step of eps on the CE loss", _fgsm))
ATTACKS.add("pgd", AttackDef("PGD on the CE loss, pgd_steps steps of pgd_step_ratio*eps, random start", _pgd))
ATTACKS.add("apgd-ce", AttackDef("APGD, CE loss, apgd_steps steps, 1 restart", _apgd("ce")))
ATTACKS.add("apgd-dlr", AttackDef("APGD, DLR margin loss (scale-invariant), apgd_steps steps, 1 restart", _apgd("dlr")))
ATTACKS.add("square", AttackDef("Square attack (black-box), square_queries queries, margin loss", _square,
                                white_box=False))
ATTACKS.add("autoattack", AttackDef("torchattacks' standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square); slow",
                                    _autoattack))


def run_attack(attack, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> torch.Tensor:
    """Adversarial examples for (x, y) in batches; the global RNG (random starts) is seeded first, so the
    result is deterministic for a seed on a given device."""
    torch.manual_seed(seed)
    out = [attack(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(out).detach()


def build_attack(name: str, model, eps: float, ev, seed: int, num_classes: int):
    return ATTACKS.get(name).build(model, eps, ev, seed, num_classes)
