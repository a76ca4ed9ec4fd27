"""A threat model besides L-inf (today L2): its attacks at its radii, the per-example worst case, and the sanity
evidence its flags judge. evaluate.py runs L-inf itself (with the transfer attack and the eps sweep) and this for
every other norm the suite asks for (`eval.eps_l2`).

As for L-inf:
- `<attack>@<radius>` for each attack of the norm (`apgd-ce-l2@0.5`): radii run in increasing order and each
  attack runs only on the examples it has not broken at a smaller radius (those are broken in the larger ball too);
- `robust-l2@<radius>`: the per-example worst case over the norm's attacks, at that radius and every smaller one,
  strengthened by the attacks that see through gradient masking (`pgd-rescaled-l2`, `apgd-t-l2`) when the norm's
  own evidence suggests masking (worst_case.py); `flag_evidence.worst_case_l2` says which attack broke how many;
- sanity evidence under `evidence["l2"]`: the accuracies (for `ce-above-margin-l2`), the convergence check at the
  headline radius (`not-converged-l2`: the strongest attack again at twice its steps with restarts), random noise of
  the headline radius (`noise-l2@<radius>`: NOISE_DRAWS uniformly random directions; with Square in L2, for
  `blackbox-beats-whitebox-l2`), and the norm's margin attack (`apgd-dlr-l2`; else its first white-box attack) at
  half the image diagonal, where every image reaches the constant grey one (`unbounded-not-broken-l2`: above
  chance there, the attack is not working), on the examples robust at the largest radius.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..core.metric_names import NORMS, at_eps, fmt_number, with_norm
from . import worst_case as wc
from .attacks import ATTACKS, attacks_of

NOISE_DRAWS = 10  # random directions of the headline radius per example


def radii_of(ev, norm: str) -> tuple[float, ...]:
    """The radii of `norm` in the eval config, sorted."""
    return {"l2": tuple(sorted(ev.eps_l2))}.get(norm, ())


def headline_of(ev, norm: str) -> float | None:
    """The headline radius of `norm` (None without radii)."""
    return {"l2": ev.headline_eps_l2}.get(norm)


def evidence_key(base: str, norm: str) -> str:
    """`worst_case` -> `worst_case_l2`: the flag-evidence entry of a norm."""
    return base + NORMS[norm].replace("-", "_")


def evaluate_norm(norm: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, ev, seed: int,
                  clean_ok: torch.Tensor, zero_grad: float, attack: Callable, predict: Callable, timed: Callable,
                  metrics: dict, evidence: dict, details: dict, notes: list, per_example: dict) -> None:
    """Run the threat model `norm`: fills `metrics`, `evidence[norm]` (what the flags judge), `details` (the
    record's flag evidence: which attack broke what), `notes` and `per_example` (`robust-l2@<radius>` masks).
    `attack(name, idx, eps, cfg, tag, broken_outside=False, parts=None, notes=None)` is the correctness mask of
    attack `name` (settings `cfg`) on the examples `idx`, True outside them (False with `broken_outside`);
    `predict(x)` gives the model's classes; `timed(key, fn)` times fn under `key`."""
    radii = radii_of(ev, norm)
    if not radii:
        return
    attacks = tuple(n for n in attacks_of(norm, ev.attacks) if num_classes >= ATTACKS.get(n).min_classes)
    robust_kind = with_norm("robust", norm)
    ev_n: dict = {"eps": [], "acc": {}}
    made_worst: dict[str, dict] = {}
    survivors = {name: clean_ok for name in attacks}
    robust_ok: dict[float, torch.Tensor] = {}
    whitebox_ok: dict[float, torch.Tensor] = {}
    blackbox_ok: dict[float, torch.Tensor] = {}
    for eps in radii:
        e = fmt_number(eps)
        ev_n["eps"].append(e)
        named, worst = [], clean_ok.clone()
        wb, bb = clean_ok.clone(), torch.ones_like(clean_ok)
        for name in attacks:
            parts: dict = {}
            idx = torch.nonzero(survivors[name]).flatten()
            ok = timed(name, lambda: attack(name, idx, eps, ev, "main", True, parts, notes))
            survivors[name] = ok
            metrics[at_eps(name, e)] = ev_n["acc"][at_eps(name, e)] = ok.float().mean().item()
            metrics.update({at_eps(name, e, c): m.float().mean().item() for c, m in parts.items()})
            named.append((name, ok))
            worst &= ok
            if ATTACKS.get(name).white_box:
                wb &= ok
            else:
                bb &= ok
        if robust_ok:  # broken at a smaller radius: broken here too
            worst &= robust_ok[max(robust_ok)]
        masked = wc.masking_suspected(ev_n["acc"], e, zero_grad, norm)
        worst, broke, skipped = timed(with_norm("worst-case", norm), lambda: wc.strengthen(
            worst, attacks, num_classes, lambda n, i: attack(n, i, eps, ev, "worst"), masked, norm))
        notes.extend(m for m in skipped if m not in notes)
        made_worst[e] = {**wc.broken_first_by(clean_ok, named), **broke}
        metrics[at_eps(robust_kind, e)] = worst.float().mean().item()
        per_example[at_eps(robust_kind, e)] = worst
        robust_ok[eps], whitebox_ok[eps], blackbox_ok[eps] = worst, wb, bb
    details[evidence_key("worst_case", norm)] = made_worst
    if ev.sanity:
        timed(with_norm("sanity", norm), lambda: _sanity(norm, x, y, num_classes, ev, seed, clean_ok, attacks,
                                                        robust_ok, whitebox_ok, blackbox_ok, attack, predict, metrics,
                                                        ev_n))
        if "convergence" in ev_n:
            details[evidence_key("convergence", norm)] = ev_n["convergence"]
    evidence[norm] = ev_n


def random_directions(x: torch.Tensor, radius: float, g: torch.Generator) -> torch.Tensor:
    """x plus a uniformly random direction of L2 length `radius` per example, clipped to [0, 1]."""
    d = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
    d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    return (x + radius * d).clamp(0, 1)


def _sanity(norm, x, y, num_classes, ev, seed, clean_ok, attacks, robust_ok, whitebox_ok, blackbox_ok, attack,
            predict, metrics, ev_n) -> None:
    from .seeds import derived_seed

    headline = headline_of(ev, norm)
    e = fmt_number(headline)
    name = wc.strongest({n: metrics[at_eps(n, e)] for n in attacks})
    if name is not None:
        strong = wc.doubled(ev)
        ev_n["convergence"] = {"eps": e, **wc.convergence(
            robust_ok[headline], name, lambda n, i, r: attack(n, i, headline, strong, f"strong{r}"))}

    g = torch.Generator(device=x.device).manual_seed(derived_seed(seed, with_norm("noise", norm)))
    noise_ok = clean_ok.clone()
    for _ in range(NOISE_DRAWS):
        noise_ok &= predict(random_directions(x, headline, g)) == y
    metrics[at_eps(with_norm("noise", norm), e)] = noise_ok.float().mean().item()
    beaten = whitebox_ok[headline] & ~(blackbox_ok[headline] & noise_ok)
    ev_n["blackbox"] = {"eps": e, "examples": int(beaten.sum()), "fraction": beaten.float().mean().item()}

    name = unbounded_attack(attacks, norm)
    if name is not None:
        far = math.sqrt(x[0].numel()) / 2  # every image in [0, 1] lies within this of the constant 0.5 one
        still = robust_ok[max(robust_ok)]
        idx = torch.nonzero(still).flatten()
        if len(idx):
            still = still & attack(name, idx, far, ev, "unbounded")
        ev_n["unbounded"] = {"eps": fmt_number(round(far, 6)), "attack": name, "acc": still.float().mean().item(),
                             "chance": 1.0 / num_classes}


def unbounded_attack(attacks: tuple[str, ...], norm: str) -> str | None:
    """The attack of the unbounded check: the norm's margin attack (scale-invariant, so a saturated softmax does not
    stop it) when the suite runs it, else its first white-box attack."""
    from .sanity import MARGIN_ATTACK

    white = [n for n in attacks if ATTACKS.get(n).white_box]
    return MARGIN_ATTACK[norm] if MARGIN_ATTACK[norm] in white else (white[0] if white else None)
