"""Named attacks, all from torchattacks; eps in [0, 1] pixel scale, an L-inf bound or an L2 radius (`norm`).

Each entry builds a torchattacks `Attack` for (model, eps, eval config, seed). torchattacks switches the model
to eval mode for the attack and restores its mode afterwards. The exact hyper-parameters of each attack are
in its summary (and the README):

- `fgsm`: one signed-gradient step of size eps on the CE loss (Goodfellow et al. 2015).
- `pgd`: PGD on the CE loss (Madry et al. 2018), `pgd_steps` steps of `pgd_step_ratio * eps`, random start.
- `apgd-ce`: APGD with the CE loss (Croce & Hein 2020), `apgd_steps` steps, 1 restart.
- `apgd-dlr`: APGD with the scale-invariant DLR margin loss (Croce & Hein 2020): it does not depend on the
  logits' scale, so it sees through softmax saturation (masked gradients).
- `apgd-t`: targeted APGD with the targeted DLR loss (Croce & Hein 2020), `apgd_steps` steps, 1 restart,
  9 target classes (n_classes - 1 when fewer), AutoAttack's APGD-T at kdbench's step budget.
- `pgd-rescaled`: PGD on the CE loss of the logits divided by their largest magnitude, z / max_c |z_c|: the
  same decision, but a softmax that cannot saturate, so it sees through logit scaling (defensive distillation).
- `square`: the black-box Square attack (Andriushchenko et al. 2020), `square_queries` queries, margin loss.
- `autoattack`: AutoAttack at the reference's strength (autoattack.py): APGD-CE, APGD-T, FAB-T (100 steps,
  9 targets), Square (5000 queries), each on the examples the previous ones left; opt-in, slow.

The L2 attacks (`norm` "l2", run at `eval.eps_l2`) are the same attacks in the L2 norm, named with its suffix:
`pgd-l2` (torchattacks PGDL2: steps along the L2-normalised gradient of size pgd_step_ratio * eps, projection onto
the L2 ball, random start), `apgd-ce-l2`, `apgd-dlr-l2`, `apgd-t-l2` (APGD / APGD-T with norm="L2"),
`pgd-rescaled-l2`, `square-l2` (Square with norm="L2") and `autoattack-l2` (the reference's standard L2 version,
autoattack.py).

An attack needs at least `min_classes` classes (the DLR loss reads the third-largest logit, the targeted DLR
loss the fourth); on a dataset with fewer, evaluation skips it and records a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..core.registry import Registry
from ..models.input_grad import ContiguousInputGrad
from . import autoattack

ATTACKS: Registry = Registry("attack")


@dataclass(frozen=True)
class AttackDef:
    summary: str
    build: Callable | None  # (model, eps, eval_cfg, seed, num_classes) -> torchattacks.Attack; None: an ensemble
    white_box: bool = True
    min_classes: int = 2
    components: tuple = ()  # an ensemble's autoattack.Component's, run in order, each on the survivors
    checked: bool = True  # the regression gate (`check`) compares its metrics, `<name>@<eps>` (and its components')
    grad_steps: Callable = lambda ev: ev.pgd_steps  # (eval config) -> gradient steps per example, for the dry run
    norm: str = "linf"  # the threat model: "linf" (run at eval.eps) or "l2" (run at eval.eps_l2)


def _fgsm(model, eps, ev, seed, num_classes):
    import torchattacks
    return torchattacks.FGSM(model, eps=eps)


def _pgd(model, eps, ev, seed, num_classes):
    import torchattacks
    return torchattacks.PGD(model, eps=eps, alpha=ev.pgd_step_ratio * eps, steps=ev.pgd_steps, random_start=True)


def _pgd_l2(model, eps, ev, seed, num_classes):
    import torchattacks
    return torchattacks.PGDL2(ContiguousInputGrad(model), eps=eps, alpha=ev.pgd_step_ratio * eps, steps=ev.pgd_steps,
                              random_start=True)


def _apgd(loss, norm="linf"):
    def build(model, eps, ev, seed, num_classes):
        import torchattacks
        return torchattacks.APGD(model, norm=autoattack.TORCHATTACKS_NORM[norm], eps=eps, steps=ev.apgd_steps,
                                 n_restarts=1, seed=seed, loss=loss)

    return build


def _apgd_t(norm="linf"):
    def build(model, eps, ev, seed, num_classes):
        return autoattack.build_apgd_t(model, eps, ev.apgd_steps, seed, num_classes, norm=norm)

    return build


class Rescaled(nn.Module):
    """The model with its logits divided by their largest magnitude: same argmax, unsaturated softmax."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        z = self.model(x)
        return z / z.detach().abs().amax(1, keepdim=True).clamp_min(1e-12)


def _pgd_rescaled(model, eps, ev, seed, num_classes):
    return _pgd(Rescaled(model), eps, ev, seed, num_classes)


def _pgd_rescaled_l2(model, eps, ev, seed, num_classes):
    return _pgd_l2(Rescaled(model), eps, ev, seed, num_classes)


def _square(norm="linf"):
    def build(model, eps, ev, seed, num_classes):
        import torchattacks
        return torchattacks.Square(model, norm=autoattack.TORCHATTACKS_NORM[norm], eps=eps,
                                   n_queries=ev.square_queries, n_restarts=1, seed=seed, loss="margin")

    return build


def _autoattack_steps(ev) -> int:
    return autoattack.REFERENCE_STEPS * (1 + 2 * autoattack.REFERENCE_TARGETS) + autoattack.REFERENCE_QUERIES // 2


ATTACKS.add("fgsm", AttackDef("FGSM, one step of eps on the CE loss", _fgsm, grad_steps=lambda ev: 1))
ATTACKS.add("pgd", AttackDef("PGD on the CE loss, pgd_steps steps of pgd_step_ratio*eps, random start", _pgd))
ATTACKS.add("apgd-ce", AttackDef("APGD, CE loss, apgd_steps steps, 1 restart", _apgd("ce"),
                                 grad_steps=lambda ev: ev.apgd_steps))
ATTACKS.add("apgd-dlr", AttackDef("APGD, DLR margin loss (scale-invariant), apgd_steps steps, 1 restart", _apgd("dlr"),
                                  min_classes=3, grad_steps=lambda ev: ev.apgd_steps))
ATTACKS.add("apgd-t", AttackDef("targeted APGD, targeted DLR loss, apgd_steps steps, 1 restart, 9 targets", _apgd_t(),
                                min_classes=4, grad_steps=lambda ev: ev.apgd_steps * autoattack.REFERENCE_TARGETS))
ATTACKS.add("pgd-rescaled", AttackDef("PGD on the CE of logits / max|logit| (unsaturated), as pgd", _pgd_rescaled))
ATTACKS.add("square", AttackDef("Square attack (black-box), square_queries queries, margin loss", _square(),
                                white_box=False, grad_steps=lambda ev: ev.square_queries // 2))
ATTACKS.add("autoattack", AttackDef("AutoAttack, reference strength: APGD-CE, APGD-T, FAB-T (100 steps, 9 targets), "
                                    "Square (5000 queries), each on the survivors; slow", None,
                                    components=autoattack.STANDARD, grad_steps=_autoattack_steps))

# the L2 threat model (run at eval.eps_l2)
ATTACKS.add("pgd-l2", AttackDef("PGD in L2 (PGDL2), CE loss, pgd_steps L2-normalised steps of pgd_step_ratio*eps, "
                                "random start", _pgd_l2, norm="l2"))
ATTACKS.add("apgd-ce-l2", AttackDef("APGD in L2, CE loss, apgd_steps steps, 1 restart", _apgd("ce", "l2"), norm="l2",
                                    grad_steps=lambda ev: ev.apgd_steps))
ATTACKS.add("apgd-dlr-l2", AttackDef("APGD in L2, DLR margin loss, apgd_steps steps, 1 restart", _apgd("dlr", "l2"),
                                     norm="l2", min_classes=3, grad_steps=lambda ev: ev.apgd_steps))
ATTACKS.add("apgd-t-l2", AttackDef("targeted APGD in L2, targeted DLR loss, apgd_steps steps, 1 restart, 9 targets",
                                   _apgd_t("l2"), norm="l2", min_classes=4,
                                   grad_steps=lambda ev: ev.apgd_steps * autoattack.REFERENCE_TARGETS))
ATTACKS.add("pgd-rescaled-l2", AttackDef("PGD in L2 on the CE of logits / max|logit|, as pgd-l2", _pgd_rescaled_l2,
                                         norm="l2"))
ATTACKS.add("square-l2", AttackDef("Square attack in L2 (black-box), square_queries queries, margin loss",
                                   _square("l2"), norm="l2", white_box=False, grad_steps=lambda ev: ev.square_queries // 2))
ATTACKS.add("autoattack-l2", AttackDef("AutoAttack in L2, the reference's standard version: APGD-CE, APGD-T, FAB-T "
                                       "(100 steps, 9 targets), Square (5000 queries); slow", None, norm="l2",
                                       components=autoattack.STANDARD_L2, grad_steps=_autoattack_steps))


def attacks_of(norm: str, names) -> tuple[str, ...]:
    """The attacks of `names` (registered names) in `norm`, in their order."""
    return tuple(n for n in names if ATTACKS.get(n).norm == norm)


def run_attack(attack, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> torch.Tensor:
    """Adversarial examples for (x, y) in batches; the global RNG (random starts) is seeded first, so the
    result is deterministic for a seed on a given device."""
    torch.manual_seed(seed)
    out = [attack(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(out).detach()


def build_attack(name: str, model, eps: float, ev, seed: int, num_classes: int):
    return ATTACKS.get(name).build(model, eps, ev, seed, num_classes)


def attack_correct(name: str, model, x: torch.Tensor, y: torch.Tensor, eps: float, ev, seed: int, num_classes: int,
                   predict: Callable) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]:
    """Per-example correctness of `model` on (x, y) under attack `name`: (mask, masks after each component of
    an ensemble (cumulative; empty for a single attack), notes on skipped components). `predict(x)` gives the
    model's predicted classes."""
    defn = ATTACKS.get(name)
    if not defn.components:
        x_adv = run_attack(build_attack(name, model, eps, ev, seed, num_classes), x, y, ev.batch_size, seed)
        return predict(x_adv) == y, {}, []
    ok = torch.ones(len(x), dtype=torch.bool, device=x.device)
    parts, notes = {}, []
    for i, comp in enumerate(defn.components):
        if num_classes < comp.min_classes:
            notes.append(f"{name}: {comp.name} skipped, it needs >= {comp.min_classes} classes ({num_classes} here)")
            continue
        idx = torch.nonzero(ok).flatten()
        if len(idx):
            atk = comp.build(model, eps, seed + i, num_classes)
            x_adv = run_attack(atk, x[idx], y[idx], ev.batch_size, seed + i)
            ok[idx] = predict(x_adv) == y[idx]
        parts[comp.name] = ok.clone()
    return ok, parts, notes
