"""evaluate(model, data, config) -> metrics, sanity flags and their evidence.

Metric names (stable strings read by tables, plots, the leaderboard and the regression check):
- `clean`: accuracy on the test split.
- `<attack>@<eps>`: accuracy under each attack of `eval.attacks` at each `eval.eps`. The eps are run in increasing
  order and each attack runs only on the examples it has not broken yet: one misclassified clean, or broken by
  the same attack at a smaller eps (that adversarial example lies in the larger ball too), counts as broken.
  So accuracy never rises with eps, and no attack time goes to examples that are known to be broken.
- `transfer@<eps>`: accuracy on PGD examples crafted on the teacher (students only).
- `autoattack/<component>@<eps>`: with `autoattack` in `eval.attacks`, the accuracy after each of its components
  (cumulative, as the reference reports it; autoattack.py).
- `robust@<eps>`: per-example worst case: an example counts only if it is classified correctly clean and
  under every attack run at that eps (transfer included), and under the attacks that see through gradient
  masking (worst_case.py), run on the survivors. `flag_evidence.worst_case` says which attack broke how many;
  `flag_evidence.convergence` holds the convergence check (the worst case at the headline eps before and after
  the strongest attack at 2x steps with restarts), whether or not its flag fired.
- `sweep@<eps>`: worst case of PGD and APGD-DLR along `eval.sweep_eps` (accuracy-vs-eps curves).
- `noise-auc/<family>`, `noise/<family>/<level>`: the noise-severity sweep (noise_sweep.py).
- the L2 threat model (`eval.eps_l2`): `<attack>-l2@<radius>`, `robust-l2@<radius>` and its sanity evidence
  (threat_model.py), as above for L-inf.
- `ece`, `nll`, `brier`: calibration on the clean test split (calibration.py), and per corruption
  (`ece/<name>`, mean over severities) and over all corruptions (`corruption-ece`, averaged as `mca`).
- `certified-l2@<radius>`: with `eval.certify`, the certified accuracy of the smoothed model (certify.py).

An attack that needs more classes than the dataset has (DLR: 3, targeted DLR: 4) is skipped, with a line in
`flag_evidence.notes`.
- `corruption/<name>/<severity>`, `corruption/<name>` (mean over severities), `mca` (mean corruption
  accuracy over all corruptions and severities) and `relative_mca` (mca / clean).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..core.metric_names import NORMS, at_eps, fmt_number, in_family
from ..data.corruptions import corrupt
from ..models.fold import fold_batch_norm
from ..training.loop import predict_logits
from . import worst_case as wc
from .attacks import ATTACKS, attack_correct, attacks_of
from .calibration import calibration, reliability
from .inputs import reuse
from .noise_sweep import noise_sweep
from .output_checks import output_evidence
from .sanity import ZERO_GRAD_NORM, compute_flags, training_evidence
from .seeds import derived_seed as _seed
from .threat_model import evaluate_norm
from .transfer import craft_transfer

NOISE_DRAWS = 10  # random sign-noise draws of L-inf size eps per example


def worst_case(masks: list[torch.Tensor]) -> torch.Tensor:
    """Per-example worst case: robust only where every mask (clean, each attack) says correct."""
    out = masks[0].clone()
    for m in masks[1:]:
        out &= m
    return out


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    return predict_logits(model, x, batch_size).argmax(1) == y


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """L-inf norm of d CE / d x per example."""
    norms = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].clone().requires_grad_(True)
        loss = F.cross_entropy(model(xb), y[i:i + batch_size], reduction="sum")
        (g,) = torch.autograd.grad(loss, xb)
        norms.append(g.flatten(1).abs().amax(1))
    return torch.cat(norms)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, ev, seed: int,
             headline_eps: float, source: nn.Module | None = None, timings: dict | None = None,
             transfer_cache: dict | None = None, per_example: dict | None = None, train_history: list | None = None):
    """Evaluate `model` in eval mode, on a copy with its batch norms folded (`fold_batch_norm`). `source` (the
    teacher) enables the transfer attack; its adversarial examples depend only on (source, eps, seed), so a
    caller evaluating several students of one teacher can pass the same `transfer_cache` dict to craft them once.
    A `per_example` dict receives the per-example correctness: `clean` and `robust@<eps>` (the worst case per eps),
    `robust-l2@<radius>` and `certified-l2@<radius>` where those run.
    `train_history` (the per-epoch losses of the model's training, `loop.fit`) is evidence for `training-failed`.

    Returns (metrics, flags, flag_evidence)."""
    transfer_cache = {} if transfer_cache is None else transfer_cache
    model = fold_batch_norm(model.eval())  # the same function, cheaper attack steps (fold.py)
    if source is not None:
        source.eval()
    timings = timings if timings is not None else {}
    bs = ev.batch_size

    def timed(key, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
        return out

    metrics: dict[str, float] = {}
    clean_logits = timed("clean", lambda: predict_logits(model, x, bs))
    clean_ok = clean_logits.argmax(1) == y
    metrics["clean"] = clean_ok.float().mean().item()
    metrics.update(calibration(clean_logits, y))
    evidence: dict = {"eps": [], "acc": {}, "training": training_evidence(clean_logits, y, train_history)}
    notes = [f"{n}: skipped, it needs >= {ATTACKS.get(n).min_classes} classes ({num_classes} here)"
             for n in ev.attacks if num_classes < ATTACKS.get(n).min_classes]
    attacks = tuple(n for n in attacks_of("linf", ev.attacks) if num_classes >= ATTACKS.get(n).min_classes)
    made_worst: dict[str, dict] = {}
    grad_norms = timed("worst-case", lambda: input_gradients(model, x, y, bs))
    zero_grad = (grad_norms < ZERO_GRAD_NORM).float().mean().item()
    whitebox_ok: dict[float, torch.Tensor] = {}
    masks: dict[tuple[str, str], torch.Tensor] = {}  # (attack, eps) -> per-example correct
    robust_ok: dict[float, torch.Tensor] = {}
    blackbox_ok: dict[float, torch.Tensor] = {}

    survivors = {name: clean_ok for name in attacks}  # per attack: not broken at any smaller eps yet
    for eps in sorted(ev.eps):
        e = fmt_number(eps)
        evidence["eps"].append(e)
        run: list[torch.Tensor] = [clean_ok]
        named: list[tuple[str, torch.Tensor]] = []
        wb = clean_ok.clone()
        bb = torch.ones_like(clean_ok)
        for name in attacks:
            idx = torch.nonzero(survivors[name]).flatten()
            parts: dict = {}
            ok = timed(name, lambda: _attack_subset(name, model, x, y, idx, eps, ev, seed, num_classes, "main",
                                                    broken_outside=True, parts=parts, notes=notes))
            masks[(name, e)] = survivors[name] = ok
            metrics[f"{name}@{e}"] = evidence["acc"][f"{name}@{e}"] = ok.float().mean().item()
            metrics.update({f"{name}/{c}@{e}": m.float().mean().item() for c, m in parts.items()})
            run.append(ok)
            named.append((name, ok))
            if ATTACKS.get(name).white_box:
                wb &= ok
            else:
                bb &= ok
        if source is not None and ev.transfer:
            if e not in transfer_cache:
                source = fold_batch_norm(source)  # a no-op once folded
                transfer_cache[e] = timed("transfer", lambda: craft_transfer(source, x, y, eps, ev, seed, num_classes))
            ok = correct(model, transfer_cache[e], y, bs)
            metrics[at_eps("transfer", e)] = ok.float().mean().item()
            run.append(ok)
            named.append(("transfer", ok))
            bb &= ok
        worst = worst_case(run)
        if robust_ok:  # broken at a smaller eps: broken here too (that example lies in this ball)
            worst &= robust_ok[max(robust_ok)]
        masked = wc.masking_suspected(evidence["acc"], e, zero_grad)
        worst, broke, skipped = timed("worst-case", lambda: wc.strengthen(
            worst, attacks, num_classes, lambda n, i: _attack_subset(n, model, x, y, i, eps, ev, seed, num_classes,
                                                                     "worst"), masked))
        notes.extend(m for m in skipped if m not in notes)
        made_worst[e] = {**wc.broken_first_by(clean_ok, named), **broke}
        metrics[at_eps("robust", e)] = worst.float().mean().item()
        whitebox_ok[eps], blackbox_ok[eps], robust_ok[eps] = wb, bb, worst

    timed("sweep", lambda: _sweep(model, x, y, num_classes, ev, seed, clean_ok, masks, metrics))
    other_norms: dict = {}  # per-example masks of the other threat models (and of certification)
    details_norms: dict = {}  # their flag evidence: which attack broke what, the convergence check, certification
    for norm in (n for n in NORMS if n != "linf"):
        evaluate_norm(norm, x, y, num_classes, ev, seed, clean_ok, zero_grad,
                      lambda n, i, eps, cfg, tag, broken_outside=False, parts=None, notes=None: _attack_subset(
                          n, model, x, y, i, eps, cfg, seed, num_classes, tag, broken_outside, parts, notes),
                      lambda xa: predict_logits(model, xa, bs).argmax(1), timed, metrics, evidence, details_norms,
                      notes, other_norms)
    timed("corruptions", lambda: _corruptions(model, x, y, ev, seed, metrics))
    timed("noise-sweep", lambda: metrics.update(noise_sweep(model, x, y, ev, seed)))
    if ev.certify is not None:
        from .certify import certified_metrics

        certified, certified_masks, details_norms["certify"] = timed("certify", lambda: certified_metrics(
            model, x, y, num_classes, ev.certify, seed))
        metrics.update(certified)
        other_norms.update(certified_masks)
    if ev.sanity:
        timed("sanity", lambda: _sanity_evidence(model, x, y, num_classes, ev, seed, headline_eps, clean_ok,
                                                 whitebox_ok, blackbox_ok, robust_ok, metrics, evidence, attacks,
                                                 grad_norms, clean_logits))
    flags, details = compute_flags(evidence, sanity=ev.sanity)
    details = {**details, "worst_case": made_worst, **({"notes": notes} if notes else {}),
               **({"convergence": evidence["convergence"]} if "convergence" in evidence else {}),
               **details_norms, "calibration": reliability(clean_logits, y)}
    if per_example is not None:
        per_example.update({"clean": clean_ok, **{at_eps("robust", eps): ok for eps, ok in robust_ok.items()},
                            **other_norms})
    return metrics, flags, details


SWEEP_ATTACKS = ("pgd", "apgd-dlr")


def _attack_subset(name, model, x, y, idx, eps, ev, seed, num_classes, tag, broken_outside=False, parts=None,
                   notes=None) -> torch.Tensor:
    """Correctness under attack `name` of the examples `idx` (a 1-D index tensor), as a full-size mask that
    is True outside `idx` (False with `broken_outside`: those examples are known to be broken already).
    An ensemble's masks after each component go into `parts`, notes on skipped components into `notes`."""
    ok = torch.full((len(x),), not broken_outside, dtype=torch.bool, device=x.device)
    if len(idx):
        s = _seed(seed, tag, name, fmt_number(eps))
        sub, comp, skipped = attack_correct(name, model, x[idx], y[idx], eps, ev, s, num_classes,
                                            lambda xa: predict_logits(model, xa, ev.batch_size).argmax(1))
        ok[idx] = sub
        for c, m in comp.items():
            full = ok.clone()
            full[idx] = m
            if parts is not None:
                parts[c] = full
        if notes is not None:
            notes.extend(n for n in skipped if n not in notes)
    return ok


def _sweep(model, x, y, num_classes, ev, seed, clean_ok, masks, metrics):
    """Worst case of PGD and APGD-DLR along the sweep eps, in increasing order. An example broken at a smaller
    eps stays broken at every larger one (its adversarial example lies in the larger ball too), so each eps
    attacks only the examples that survived the previous one; results of the main attacks are reused."""
    survivors = clean_ok.clone()
    for eps in sorted(ev.sweep_eps):
        e = fmt_number(eps)
        for name in SWEEP_ATTACKS:
            if num_classes < ATTACKS.get(name).min_classes:
                continue
            if (name, e) in masks:
                survivors &= masks[(name, e)]
            else:
                idx = torch.nonzero(survivors).flatten()
                survivors &= _attack_subset(name, model, x, y, idx, eps, ev, seed, num_classes, "sweep")
        metrics[at_eps("sweep", e)] = survivors.float().mean().item()


def _corruptions(model, x, y, ev, seed, metrics):
    """Accuracy per corruption and severity, its means (`mca`), and the calibration of the same predictions
    (`ece/<name>`, ..., mean over severities; `corruption-ece`, ..., over all, as `mca`)."""
    if not ev.corruptions:
        return
    all_acc, all_cal = [], []
    for name in ev.corruptions:
        accs, cals = [], []
        for sev in ev.severities:
            xc = reuse(x, ("corruption", name, sev, seed), lambda: corrupt(name, x, sev, seed))
            logits = predict_logits(model, xc, ev.batch_size)
            acc = (logits.argmax(1) == y).float().mean().item()
            metrics[in_family("corruption", name, sev)] = acc
            accs.append(acc)
            cals.append(calibration(logits, y))
        metrics[in_family("corruption", name)] = sum(accs) / len(accs)
        for k in cals[0]:
            metrics[in_family(k, name)] = sum(c[k] for c in cals) / len(cals)
        all_acc.extend(accs)
        all_cal.extend(cals)
    metrics["mca"] = sum(all_acc) / len(all_acc)
    metrics["relative_mca"] = metrics["mca"] / metrics["clean"] if metrics["clean"] > 0 else 0.0
    for k in all_cal[0]:
        metrics[f"corruption-{k}"] = sum(c[k] for c in all_cal) / len(all_cal)


def _sanity_evidence(model, x, y, num_classes, ev, seed, headline_eps, clean_ok, whitebox_ok, blackbox_ok,
                     robust_ok, metrics, evidence, attacks, grad_norms, clean_logits):
    """Gather what the flags in sanity.py judge. `grad_norms` and `clean_logits`: the L-inf norms of the input
    gradients (`input_gradients`) and the logits on `x`, as evaluate computed them already."""
    bs = ev.batch_size
    evidence.update(output_evidence(model, x))
    # saturated softmax: input gradients that are exactly (numerically) zero
    evidence["zero_grad_fraction"] = (grad_norms < ZERO_GRAD_NORM).float().mean().item()
    top2 = clean_logits.topk(2, dim=1).values
    evidence["median_logit_margin"] = (top2[:, 0] - top2[:, 1]).median().item()

    # convergence: does the strongest attack with twice the steps and restarts lower the reported worst case?
    e = fmt_number(headline_eps)
    name = wc.strongest({n: metrics[f"{n}@{e}"] for n in attacks})
    if headline_eps in robust_ok and name is not None:
        strong = wc.doubled(ev)
        evidence["convergence"] = {"eps": e, **wc.convergence(
            robust_ok[headline_eps], name, lambda n, i, r: _attack_subset(n, model, x, y, i, headline_eps, strong,
                                                                          seed, num_classes, f"strong{r}"))}

    # unbounded: the largest sweep eps must take accuracy to chance or below
    if ev.sweep_eps:
        e_max = fmt_number(max(ev.sweep_eps))
        evidence["unbounded"] = {"eps": e_max, "acc": metrics[at_eps("sweep", e_max)], "chance": 1.0 / num_classes}

    # black-box beats white-box: random sign noise of the same L-inf size, transfer, Square
    g = torch.Generator(device=x.device).manual_seed(_seed(seed, "noise"))
    noise_ok = clean_ok.clone()
    for _ in range(NOISE_DRAWS):
        sign = torch.randint(0, 2, x.shape, generator=g, device=x.device).to(x.dtype) * 2 - 1
        noise_ok &= correct(model, (x + headline_eps * sign).clamp(0, 1), y, bs)
    metrics[at_eps("noise", e)] = noise_ok.float().mean().item()
    wb = whitebox_ok.get(headline_eps)
    if wb is not None:
        bb = blackbox_ok[headline_eps] & noise_ok
        beaten = wb & ~bb
        evidence["blackbox"] = {"eps": e, "examples": int(beaten.sum()), "fraction": beaten.float().mean().item()}
