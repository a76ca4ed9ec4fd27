"""AutoAttack at the strength of its reference implementation (Croce & Hein 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks", fra31/auto-attack, version
"standard"), built from torchattacks' classes, in L-inf (`autoattack`) and in L2 (`autoattack-l2`).

The reference's standard version (autoattack.py, `set_version('standard')`) is the same for `norm='Linf'` and
`norm='L2'`: it runs, in this order, each on the examples still robust after the previous ones:

| component | torchattacks class           | reference settings (and here)                                        |
|-----------|------------------------------|----------------------------------------------------------------------|
| apgd-ce   | APGD(loss="ce")              | 100 steps, 1 restart, rho 0.75                                       |
| apgd-t    | APGDT (targeted DLR loss)    | 100 steps, 1 restart, 9 target classes (n_classes - 1 when fewer)    |
| fab-t     | FAB(multi_targeted=True)     | 100 steps, 1 restart, 9 target classes (n_classes - 1 when fewer)    |
| square    | Square(loss="margin")        | 5000 queries, 1 restart, p_init 0.8, fixed p schedule                |

The Square of the reference's AutoAttack is built with `resc_schedule=False` (its schedule of the square size p
is the one for 10,000 queries, run for 5000); torchattacks' default rescales it to the query budget
(`resc_schedule=True`, which halves every step of the schedule at 5000 queries), so kdbench sets it to False.

torchattacks' own `AutoAttack(version="standard")` differs: it leaves APGD, APGD-T and FAB at their default 10
steps, and targets n_classes - 1 classes (99 on CIFAR-100); so kdbench builds the components itself and sets
`n_target_classes` on the APGDT and FAB objects, the attribute the reference sets. What is not the reference's:
torchattacks' implementations themselves (ported from the reference, seeded per component here).

Component accuracies are cumulative, as the reference prints them: `autoattack/<component>@<eps>` is the accuracy
after that component and every earlier one; the last equals `autoattack@<eps>`. A component that needs more
classes than the dataset has (the DLR losses: 3, the targeted DLR loss: 4) is skipped with a note, as the
reference's check_n_classes warns.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

REFERENCE_STEPS = 100
REFERENCE_TARGETS = 9
REFERENCE_QUERIES = 5000
TORCHATTACKS_NORM = {"linf": "Linf", "l2": "L2"}  # kdbench's norm names -> torchattacks' (and the reference's)


def n_targets(num_classes: int) -> int:
    """The reference's 9 target classes, or every other class when there are fewer."""
    return max(1, min(REFERENCE_TARGETS, num_classes - 1))


@dataclass(frozen=True)
class Component:
    name: str
    build: Callable  # (model, eps, seed, num_classes) -> torchattacks.Attack
    min_classes: int = 2


def _apgd_ce(model, eps, seed, num_classes, norm="linf"):
    import torchattacks
    return torchattacks.APGD(model, norm=TORCHATTACKS_NORM[norm], eps=eps, steps=REFERENCE_STEPS, n_restarts=1,
                             seed=seed, loss="ce", rho=0.75)


def _apgd_t(model, eps, seed, num_classes, steps=REFERENCE_STEPS, norm="linf"):
    import torchattacks
    atk = torchattacks.APGDT(model, norm=TORCHATTACKS_NORM[norm], eps=eps, steps=steps, n_restarts=1, seed=seed,
                             rho=0.75, n_classes=num_classes)
    atk.n_target_classes = n_targets(num_classes)
    return atk


def _fab_t(model, eps, seed, num_classes, norm="linf"):
    import torchattacks
    atk = torchattacks.FAB(model, norm=TORCHATTACKS_NORM[norm], eps=eps, steps=REFERENCE_STEPS, n_restarts=1,
                           seed=seed, multi_targeted=True, n_classes=num_classes)
    atk.n_target_classes = n_targets(num_classes)
    return atk


def _square(model, eps, seed, num_classes, norm="linf"):
    import torchattacks
    return torchattacks.Square(model, norm=TORCHATTACKS_NORM[norm], eps=eps, n_queries=REFERENCE_QUERIES,
                               n_restarts=1, seed=seed, p_init=0.8, loss="margin", resc_schedule=False)


def standard(norm: str) -> tuple[Component, ...]:
    """The reference's standard AutoAttack in `norm` ("linf" or "l2"): the same components and settings."""
    return (
        Component("apgd-ce", partial(_apgd_ce, norm=norm)),
        Component("apgd-t", partial(_apgd_t, norm=norm), min_classes=4),
        Component("fab-t", partial(_fab_t, norm=norm)),
        Component("square", partial(_square, norm=norm)),
    )


STANDARD = standard("linf")
STANDARD_L2 = standard("l2")


def build_apgd_t(model, eps, steps: int, seed: int, num_classes: int, norm: str = "linf"):
    """Targeted APGD (DLR-targeted loss) at `steps` steps and the reference's number of target classes."""
    return _apgd_t(model, eps, seed, num_classes, steps, norm=norm)
