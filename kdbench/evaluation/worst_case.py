"""A worst case that holds on masked models, and the convergence check that judges it.

A model that masks its gradients (a saturated softmax, as defensive distillation makes) fools the CE-loss attacks
and, partly, the others; its per-example worst case over the suite's attacks is then too high. When the evidence
of masking is there at an eps (`masking_suspected`: the conditions of the zero-gradients, ce-above-margin or
pgd-above-fgsm flags), `strengthen` runs the attacks that see through masking, each on the examples still robust:

- `pgd-rescaled`: PGD on the CE of logits / max_c |z_c| (no saturated softmax; logit scaling undone),
- `apgd-t`: targeted APGD on the targeted DLR margin loss (scale-invariant, 9 target classes).

In L2 the same attacks in that norm (`pgd-rescaled-l2`, `apgd-t-l2`), on the evidence of the L2 attacks.

A black-box attack (`square`) would see through masking too, but its query loop costs more than every other
attack together on the default suite; add it to `eval.attacks` to include it. Without masking evidence the
see-through attacks are not run (measured on an undefended teacher of the default suite: they broke 2 of 359
examples, at 30x the cost of the suite's attacks). The record says which attack broke how many examples first
(`flag_evidence.worst_case`).

`not-converged` (sanity.py) asks whether the worst case has converged: the strongest single attack at the
headline eps (the one with the lowest accuracy) is re-run with twice its steps (queries for Square) and
`STRONG_RESTARTS` restarts (new random starts) on the examples still robust; if that lowers the worst case by
more than sanity.CONVERGENCE_DROP, the number is not to be trusted.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..core.metric_names import at_eps
from .attacks import ATTACKS

SEE_THROUGH = {"linf": ("pgd-rescaled", "apgd-t"), "l2": ("pgd-rescaled-l2", "apgd-t-l2")}
STRONG_RESTARTS = 2  # restarts of the strongest attack at twice its steps


def strengthen(robust: torch.Tensor, ran: tuple[str, ...], num_classes: int,
               attack: Callable[[str, torch.Tensor], torch.Tensor], masked: bool = True, norm: str = "linf"
               ) -> tuple[torch.Tensor, dict[str, int], list[str]]:
    """The worst case `robust` (per-example mask) after the see-through attacks the suite did not run already
    (unchanged when `masked` is False: no evidence of masking).
    `attack(name, idx)` is the correctness mask of attack `name` run on the examples `idx` (True elsewhere).
    Returns (mask, examples each attack newly broke, notes on skipped attacks)."""
    out, broke, notes = robust.clone(), {}, []
    for name in SEE_THROUGH[norm] if masked else ():
        if name in ran:
            continue
        if num_classes < ATTACKS.get(name).min_classes:
            notes.append(f"worst case: {name} skipped, it needs >= {ATTACKS.get(name).min_classes} classes "
                         f"({num_classes} here)")
            continue
        idx = torch.nonzero(out).flatten()
        if not len(idx):
            break
        ok = attack(name, idx)
        broke[name] = int((out & ~ok).sum())
        out &= ok
    return out, broke, notes


def masking_suspected(acc: dict[str, float], e: str, zero_grad_fraction: float, norm: str = "linf") -> bool:
    """Evidence of gradient masking at eps `e` of `norm`: the conditions of the masking flags (sanity.py)."""
    from .sanity import CE_MARGIN_GAP, FGSM_PGD_TOL, FGSM_ATTACK, MARGIN_ATTACK, ZERO_GRAD_FRACTION, ce_attack

    ce, fgsm_name = ce_attack(acc, e, norm), FGSM_ATTACK[norm]
    pgd, dlr = acc.get(at_eps(ce, e)) if ce else None, acc.get(at_eps(MARGIN_ATTACK[norm], e))
    fgsm = acc.get(at_eps(fgsm_name, e)) if fgsm_name else None
    return (zero_grad_fraction > ZERO_GRAD_FRACTION or (pgd is not None and dlr is not None and pgd - dlr > CE_MARGIN_GAP)
            or (pgd is not None and fgsm is not None and pgd > fgsm + FGSM_PGD_TOL))


def broken_first_by(clean_ok: torch.Tensor, masks: list[tuple[str, torch.Tensor]]) -> dict[str, int]:
    """For attacks in the order given: how many clean-correct examples each broke that no earlier one had."""
    alive, out = clean_ok.clone(), {}
    for name, ok in masks:
        out[name] = int((alive & ~ok).sum())
        alive &= ok
    return out


def strongest(acc: dict[str, float]) -> str | None:
    """The single (non-ensemble) attack with the lowest accuracy (ties: the first)."""
    single = {n: a for n, a in acc.items() if not ATTACKS.get(n).components}
    return min(single, key=single.get) if single else None


def doubled(ev):
    """The eval config with twice the steps (and queries) of every attack."""
    return dataclasses.replace(ev, pgd_steps=2 * ev.pgd_steps, apgd_steps=2 * ev.apgd_steps,
                               square_queries=2 * ev.square_queries)


def convergence(robust: torch.Tensor, name: str, attack: Callable[[str, torch.Tensor, int], torch.Tensor]) -> dict:
    """Re-run `name` at twice its steps with STRONG_RESTARTS restarts on the examples still robust;
    `attack(name, idx, restart)` is its correctness mask. Returns the evidence for the not-converged flag."""
    still = robust.clone()
    for r in range(STRONG_RESTARTS):
        idx = torch.nonzero(still).flatten()
        if not len(idx):
            break
        still &= attack(name, idx, r)
    return {"robust": robust.float().mean().item(), "robust_with_strong_attack": still.float().mean().item(),
            "attack": name, "steps": "2x", "restarts": STRONG_RESTARTS}
