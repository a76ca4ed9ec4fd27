"""Sanity flags: checks that distrust a robustness number.

They automate the evaluation checklist of Carlini et al. 2019 ("On Evaluating Adversarial Robustness") and
AutoAttack's own checks (Croce & Hein 2020, autoattack/checks.py). Each flag is a pure function of the
evidence gathered during evaluation; it returns the evidence that made it fire (or None when silent), and
the record stores both. Thresholds are module constants, documented in the README.

The flags that judge attacks do so per threat model: L-inf evidence is at the top level of the evidence dict,
another norm's under its name (`evidence["l2"]`, the same keys), and its flags carry the norm's suffix
(`ce-above-margin-l2`, `not-converged-l2`, `unbounded-not-broken-l2`, `blackbox-beats-whitebox-l2`). There is no
FGSM in L2, so no `pgd-above-fgsm-l2`; the output checks and zero gradients do not depend on a norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..core.metric_names import NORMS, at_eps, with_norm
from ..core.registry import Registry
from .output_checks import PROB_TOL, RANDOM_TOL

FLAGS: Registry = Registry("flag")

# thresholds (accuracy is a fraction in [0, 1])
FGSM_PGD_TOL = 0.01  # PGD accuracy may exceed FGSM's by at most this
CE_MARGIN_GAP = 0.10  # CE-loss PGD above the margin (DLR) attack by more than this
ZERO_GRAD_NORM = 1e-20  # an input gradient with L-inf norm below this is 'zero'
ZERO_GRAD_FRACTION = 0.05  # flag when more than this fraction of examples has a zero gradient
CONVERGENCE_DROP = 0.03  # the strongest attack at 2x steps + restarts lowering the worst case by more than this
BLACKBOX_FRACTION = 0.01  # black-box/noise succeeding where every white-box attack failed, on more than this
# training-failed: clean accuracy no further above chance (the best constant prediction's accuracy, the test set's
# majority-class rate) than 5 points, or 3 standard errors of a constant prediction's accuracy on a test set this
# size where that is more (small test sets)
CHANCE_MARGIN = 0.05
CHANCE_SES = 3.0

# per norm, the attacks the masking flags compare: a CE-loss attack (the first of these the suite runs), the
# margin (DLR) attack, and FGSM (none in L2)
CE_ATTACKS = {"linf": ("pgd",), "l2": ("pgd-l2", "apgd-ce-l2")}
MARGIN_ATTACK = {"linf": "apgd-dlr", "l2": "apgd-dlr-l2"}
FGSM_ATTACK = {"linf": "fgsm", "l2": None}


def ce_attack(acc: dict, e: str, norm: str = "linf") -> str | None:
    """The CE-loss attack of `norm` whose accuracy at eps `e` is in `acc` (the first of CE_ATTACKS), or None."""
    return next((n for n in CE_ATTACKS[norm] if at_eps(n, e) in acc), None)


@dataclass(frozen=True)
class Flag:
    summary: str
    check: Callable[[dict], dict | None]
    # flags this one explains when both fire: they are dropped from the record's flags and their evidence is kept
    # under this flag's `superseded`
    supersedes: tuple[str, ...] = ()
    always: bool = False  # judged with eval.sanity off too (its evidence is gathered by every evaluation)


def training_evidence(clean_logits: torch.Tensor, y: torch.Tensor, history: list[dict] | None) -> dict:
    """What `training-failed` judges: the clean accuracy against chance (the majority-class rate of `y`, what a
    model that ignores its input scores at best), the share of the most frequent prediction, and the training
    loss (the sum of the loss terms) of the first and last epoch of `history` (None without one)."""
    n = len(y)
    pred = clean_logits.argmax(1)
    chance = torch.bincount(y).max().item() / n
    threshold = chance + max(CHANCE_MARGIN, CHANCE_SES * math.sqrt(chance * (1 - chance) / n))
    total = [sum(epoch.values()) for epoch in history or [] if epoch]
    return {"clean": (pred == y).float().mean().item(), "chance": chance, "threshold": threshold,
            "top_prediction_share": torch.bincount(pred).max().item() / n,
            "loss_first_epoch": total[0] if total else None, "loss_last_epoch": total[-1] if total else None,
            "epochs": len(total)}


def _training_failed(ev: dict):
    t = ev.get("training")
    if t and t["clean"] <= t["threshold"]:
        return dict(t)
    return None


def _pgd_above_fgsm(ev: dict):
    bad = {e: (ev["acc"].get(at_eps("pgd", e)), ev["acc"].get(at_eps("fgsm", e))) for e in ev["eps"]
           if at_eps("pgd", e) in ev["acc"] and at_eps("fgsm", e) in ev["acc"]
           and ev["acc"][at_eps("pgd", e)] > ev["acc"][at_eps("fgsm", e)] + FGSM_PGD_TOL}
    return {"eps": {str(e): {"pgd": p, "fgsm": f} for e, (p, f) in bad.items()}} if bad else None


def _ce_above_margin(ev: dict, norm: str = "linf"):
    bad = {}
    for e in ev["eps"]:
        name, margin_name = ce_attack(ev["acc"], e, norm), MARGIN_ATTACK[norm]
        ce = ev["acc"].get(at_eps(name, e)) if name else None
        margin = ev["acc"].get(at_eps(margin_name, e))
        if ce is not None and margin is not None and ce - margin > CE_MARGIN_GAP:
            bad[str(e)] = {name: ce, margin_name: margin}
    return {"eps": bad} if bad else None


def _zero_gradients(ev: dict):
    frac = ev.get("zero_grad_fraction")
    if frac is not None and frac > ZERO_GRAD_FRACTION:
        return {"zero_grad_fraction": frac, "median_logit_margin": ev.get("median_logit_margin")}
    return None


def _not_converged(ev: dict, norm: str = "linf"):
    """The check itself is kept once, as `flag_evidence.convergence` (`convergence_l2` for L2; evaluate.py): the
    flag keeps the drop and points there."""
    c = ev.get("convergence")
    if c and c["robust"] - c["robust_with_strong_attack"] > CONVERGENCE_DROP:
        return {"drop": c["robust"] - c["robust_with_strong_attack"],
                "check": "convergence" + NORMS[norm].replace("-", "_")}
    return None


def convergence_check(flag_evidence: dict) -> dict | None:
    """A record's convergence check (the worst case at the headline eps before and after the strongest attack at
    2x steps with restarts): `flag_evidence.convergence`; records written before every record kept it there hold
    it under their `not-converged` flag alone."""
    found = flag_evidence.get("convergence") or flag_evidence.get("not-converged")
    return found if found and "robust_with_strong_attack" in found else None


def _randomized(ev: dict):
    r = ev.get("randomness")
    if r and (r["max_normalised_diff"] > RANDOM_TOL or r["predictions_differ"]):
        return dict(r)
    return None


def _probability_outputs(ev: dict):
    p = ev.get("probability_outputs")
    return dict(p) if p and p["rows_are_probabilities"] else None


def _unbounded_not_broken(ev: dict, norm: str = "linf"):
    u = ev.get("unbounded")
    if u and u["acc"] > u["chance"]:
        return dict(u)
    return None


def _blackbox_beats_whitebox(ev: dict, norm: str = "linf"):
    b = ev.get("blackbox")
    if b and b["fraction"] > BLACKBOX_FRACTION:
        return dict(b)
    return None


def _in_norm(check: Callable, norm: str) -> Callable[[dict], dict | None]:
    """`check` on the evidence of `norm` (the top level for L-inf; absent evidence: silent)."""
    def run(evidence: dict):
        sub = evidence if norm == "linf" else evidence.get(norm)
        return check(sub, norm) if sub else None

    return run


# the flags that distrust the attack (gradient masking, an unfinished search): a model that learned nothing
# fires them too, and training-failed says what happened instead
# (in every norm)
ATTACK_FLAGS = ("pgd-above-fgsm", "zero-gradients") + tuple(
    with_norm(flag, norm) for norm in NORMS
    for flag in ("ce-above-margin", "not-converged", "unbounded-not-broken", "blackbox-beats-whitebox"))

FLAGS.add("training-failed", Flag(f"the model did not learn: clean accuracy within {100 * CHANCE_MARGIN:g} points "
                                  f"(or {CHANCE_SES:g} standard errors) of chance, the majority-class rate; replaces "
                                  f"the attack flags it fires, and its seed is left out of its row's means and tests",
                                  _training_failed, ATTACK_FLAGS, True))

FLAGS.add("pgd-above-fgsm", Flag(f"PGD accuracy above FGSM accuracy (+{FGSM_PGD_TOL}) at some eps", _pgd_above_fgsm))
FLAGS.add("ce-above-margin", Flag(f"CE-loss PGD accuracy above APGD-DLR by more than {CE_MARGIN_GAP}",
                                  _in_norm(_ce_above_margin, "linf")))
FLAGS.add("zero-gradients", Flag(f"more than {ZERO_GRAD_FRACTION:.0%} of inputs have an input gradient below "
                                 f"{ZERO_GRAD_NORM:g} (saturated softmax)", _zero_gradients))
FLAGS.add("not-converged", Flag(f"the strongest attack with 2x steps and restarts lowers the worst-case robust "
                                f"accuracy by more than {CONVERGENCE_DROP}", _in_norm(_not_converged, "linf")))
FLAGS.add("unbounded-not-broken", Flag("accuracy at the largest sweep eps above chance",
                                       _in_norm(_unbounded_not_broken, "linf")))
FLAGS.add("blackbox-beats-whitebox", Flag(f"transfer/Square/random noise succeed where every white-box attack failed "
                                          f"on more than {BLACKBOX_FRACTION:.0%} of examples",
                                          _in_norm(_blackbox_beats_whitebox, "linf")))
FLAGS.add("randomized-outputs", Flag(f"two forward passes of the same inputs differ (normalised L2 > {RANDOM_TOL:g}): "
                                     f"a randomised model needs EOT attacks", _randomized))
FLAGS.add("probability-outputs", Flag(f"outputs are probabilities (rows in [0, 1] summing to 1 within {PROB_TOL:g}), "
                                      f"not logits", _probability_outputs))
for _norm in (n for n in NORMS if n != "linf"):
    FLAGS.add(with_norm("ce-above-margin", _norm), Flag(
        f"{_norm.upper()}: CE-loss attack ({' or '.join(CE_ATTACKS[_norm])}) accuracy above {MARGIN_ATTACK[_norm]} by "
        f"more than {CE_MARGIN_GAP}", _in_norm(_ce_above_margin, _norm)))
    FLAGS.add(with_norm("not-converged", _norm), Flag(
        f"{_norm.upper()}: the strongest attack with 2x steps and restarts lowers the worst case by more than "
        f"{CONVERGENCE_DROP}", _in_norm(_not_converged, _norm)))
    FLAGS.add(with_norm("unbounded-not-broken", _norm), Flag(
        f"{_norm.upper()}: accuracy above chance at a radius of half the image diagonal (every image reaches the "
        f"constant grey one)", _in_norm(_unbounded_not_broken, _norm)))
    FLAGS.add(with_norm("blackbox-beats-whitebox", _norm), Flag(
        f"{_norm.upper()}: Square or random noise of the radius succeed where every white-box attack failed on more "
        f"than {BLACKBOX_FRACTION:.0%} of examples", _in_norm(_blackbox_beats_whitebox, _norm)))


def compute_flags(evidence: dict, sanity: bool = True) -> tuple[list[str], dict]:
    """Run every flag on the evidence (with `sanity` off, only the flags judged `always`): (names of the flags
    that fired, their evidence). A fired flag's `supersedes` that fired too are moved under its `superseded`."""
    fired, details = [], {}
    for entry in FLAGS.entries():
        if not (sanity or entry.obj.always):
            continue
        found = entry.obj.check(evidence)
        if found is not None:
            fired.append(entry.name)
            details[entry.name] = found
    for name in list(fired):
        explained = {f: details.pop(f) for f in FLAGS.get(name).supersedes if f in fired}
        if explained:
            details[name]["superseded"] = explained
            fired = [f for f in fired if f not in explained]
    return fired, details
