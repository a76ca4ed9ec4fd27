"""Regression check of a suite's robustness numbers against a stored baseline, seed by seed.

`results/<suite>/baseline.json` (schema 2) holds, per leaderboard row (dataset | pair | method) and per seed,
every checked metric, the machine that made it (machine.py) and the per-example correctness of the record
(examples.py), plus the flags that fired on the row. It changes only through `check --update-baseline`.

Each seed of the results is compared with the same seed of the baseline:
- **same machine** type, thread count and versions: equal configs give equal numbers, so a metric holds only
  when it is equal up to float round-trip (noise.FLOAT_NOISE). Any drop is a regression, any rise is reported.
- **another machine** (another CPU, GPU or thread count): the seeds' differences are averaged, and the mean
  holds within z * sd, sd from the per-example noise model of noise.py (measured flips where the records keep
  per-example correctness), z at the Bonferroni level alpha / m for the m metrics compared across machines.
  Baselines without per-example data fall back to max(k * std * sqrt(2 / n), floor) over the baseline's seeds.
A `[check] tolerance` (or --tolerance) for a metric replaces the computed tolerance. A flag that fires now but
did not in the baseline is a regression too. Usage errors (no baseline, another suite's or an older schema's
baseline, a row, seed or metric present on one side only) exit 2.
"""

from __future__ import annotations

import fnmatch
import json
import math

import pandas as pd

from ..core.errors import KdbenchError
from ..core.machine import same_machine
from ..core.metric_names import LOWER_IS_BETTER, check_norm, lower_is_better, try_parse
from ..records.examples import masks_of
from ..stats.rerun_noise import FLOAT_NOISE, flip_rate, rerun_sd, z_for
from ..suite.configs import CheckConfig
from .rows import row_label

# Metric kinds (metric_names.py) checked whatever the attacks' entries say: whole-test accuracies and calibration
# errors, the worst case (each norm), transfer and the certified accuracy per eps, and the noise sweeps' areas under
# the curve. A calibration error (better lower) regresses when it rises.
CHECKED_WHOLE = ("clean", "mca") + LOWER_IS_BETTER
CHECKED_AT_EPS = ("robust", "transfer", "robust-l2", "certified-l2")
CHECKED_FAMILIES = ("noise-auc",)


def is_checked(metric: str) -> bool:
    """Whether the regression gate compares `metric`: clean, mca, the calibration errors (clean and over all
    corruptions), the worst case in each norm, transfer, the certified accuracy, the noise-sweep AUCs, and
    `<attack>@<eps>` (or `<attack>/<component>@<eps>`) of every attack whose registry entry says `checked`."""
    name = try_parse(metric)
    if name is None:
        return False
    if name.eps is None:
        return name.kind in (CHECKED_FAMILIES if name.name else CHECKED_WHOLE)
    if name.kind in CHECKED_AT_EPS:
        return True
    from ..evaluation.attacks import ATTACKS

    return name.kind in ATTACKS and ATTACKS.get(name.kind).checked
BASELINE_SCHEMA = 2
ENV_KEYS = ("device", "threads", "torch", "torchattacks", "cpu", "gpu")


def row_key(row) -> str:
    return f"{row['dataset']} | {row['pair']} | {row['label']}"


def baseline_from_records(records: list[dict], suite: str, headline_eps: float) -> dict:

    rows: dict = {}
    for r in sorted(records, key=lambda r: (str(r.get("job_id")))):
        label = row_label(r["method"], r.get("teacher_kind") or None, r["role"])
        key = row_key({"dataset": r["dataset"], "pair": r.get("pair", ""), "label": label})
        row = rows.setdefault(key, {"params": json.dumps(r.get("method_params", {}), sort_keys=True), "flags": [],
                                    "seeds": {}})
        row["flags"] = sorted(set(row["flags"]) | set(r["flags"]))
        env = r.get("env") or {}
        row["seeds"][str(r["seed"])] = {
            "metrics": {m: float(v) for m, v in sorted(r["metrics"].items()) if is_checked(m)},
            "env": {k: env.get(k) for k in ENV_KEYS}, "examples": r.get("examples")}
    return {"schema": BASELINE_SCHEMA, "suite": suite, "headline_eps": headline_eps, "rows": rows}


def tolerance_override(metric: str, cfg: CheckConfig) -> float | None:
    for pattern, tol in cfg.tolerance.items():
        if metric == pattern or fnmatch.fnmatchcase(metric, pattern):
            return float(tol)
    return None


def _fallback(values: list[float], cfg: CheckConfig) -> float:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return max(cfg.k * std * math.sqrt(2.0 / n), cfg.floor)


def _same_sets(what: str, base, now, where: str = "") -> None:
    only_base, only_now = sorted(set(base) - set(now)), sorted(set(now) - set(base))
    if only_base or only_now:
        raise KdbenchError(f"{what} differ between baseline and results{where}: "
                           + "; ".join([f"missing now: {k}" for k in only_base] + [f"new: {k}" for k in only_now])
                           + " (run the missing jobs, or --update-baseline on purpose)")


def compare(baseline: dict, current: dict, cfg: CheckConfig) -> pd.DataFrame:
    """One row per (leaderboard row, metric, seed) on the same machine, per (leaderboard row, metric) across
    machines (seeds pooled), and per changed flag set; `status` is ok/regressed/improved."""
    if baseline.get("schema") != BASELINE_SCHEMA:
        raise KdbenchError(f"baseline schema {baseline.get('schema')!r} is not {BASELINE_SCHEMA}; re-create it "
                           "with --update-baseline from the records it was made from")
    if baseline["suite"] != current["suite"]:
        raise KdbenchError(f"the baseline is for suite {baseline['suite']!r}, not {current['suite']!r}")
    _same_sets("rows", baseline["rows"], current["rows"])
    plan = []
    for key, base in baseline["rows"].items():
        now = current["rows"][key]
        _same_sets("seeds", base["seeds"], now["seeds"], f" for {key}")
        for seed, b in base["seeds"].items():
            missing = sorted(set(b["metrics"]) ^ set(now["seeds"][seed]["metrics"]))
            if missing:
                raise KdbenchError(f"metric(s) {', '.join(missing)} present on one side only for {key}, seed {seed}")
        same = [s for s in base["seeds"] if same_machine(base["seeds"][s]["env"], now["seeds"][s]["env"])]
        other = [s for s in base["seeds"] if s not in same]
        plan.append((key, base, now, same, other))
    m = sum(len(next(iter(base["seeds"].values()))["metrics"]) for _, base, _, _, other in plan if other)
    z = z_for(m, cfg.alpha)
    out = []
    for key, base, now, same, other in plan:
        metrics = sorted(next(iter(base["seeds"].values()))["metrics"])
        for metric in metrics:
            override = tolerance_override(metric, cfg)
            for s in same:
                b, c = base["seeds"][s]["metrics"][metric], now["seeds"][s]["metrics"][metric]
                out.append(_result(key, metric, s, b, c, FLOAT_NOISE if override is None else override,
                                   "same machine"))
            if other:
                b = [base["seeds"][s]["metrics"][metric] for s in other]
                c = [now["seeds"][s]["metrics"][metric] for s in other]
                tol = override if override is not None else _pooled_tolerance(base, now, other, metric, z, cfg)
                out.append(_result(key, metric, ",".join(other), sum(b) / len(b), sum(c) / len(c), tol,
                                   "other machine"))
        new_flags = sorted(set(now["flags"]) - set(base["flags"]))
        gone = sorted(set(base["flags"]) - set(now["flags"]))
        if new_flags or gone:
            out.append({"row": key, "metric": "flags", "seed": "", "baseline": " ".join(base["flags"]) or "-",
                        "current": " ".join(now["flags"]) or "-", "delta": "", "tolerance": "", "machine": "",
                        "status": "regressed" if new_flags else "improved"})
    return pd.DataFrame(out, columns=["row", "metric", "seed", "baseline", "current", "delta", "tolerance",
                                      "machine", "status"])


def _result(key, metric, seed, b, c, tol, machine) -> dict:
    delta = c - b
    worse = delta > tol if lower_is_better(metric) else delta < -tol
    better = delta < -tol if lower_is_better(metric) else delta > tol
    status = "regressed" if worse else ("improved" if better else "ok")
    return {"row": key, "metric": metric, "seed": seed, "baseline": b, "current": c, "delta": delta,
            "tolerance": tol, "machine": machine, "status": status}


def _pooled_tolerance(base: dict, now: dict, seeds: list[str], metric: str, z: float, cfg: CheckConfig) -> float:
    """z * sd of the mean over `seeds` of (current - baseline), sd per seed from noise.rerun_sd."""
    variances = []
    for s in seeds:
        bs, cs = base["seeds"][s], now["seeds"][s]
        n = (bs.get("examples") or {}).get("n")
        if not isinstance(n, int) or n != (cs.get("examples") or {}).get("n"):
            return _fallback([base["seeds"][x]["metrics"][metric] for x in base["seeds"]], cfg)
        mb, mc = masks_of(bs), masks_of(cs)
        sd = rerun_sd(bs["metrics"][metric], cs["metrics"][metric], n, mb.get(metric), mc.get(metric),
                      flip_rate(mb, mc))
        variances.append(sd * sd)
    return z * math.sqrt(sum(variances)) / len(seeds)


def format_table(table: pd.DataFrame) -> str:
    def pct(v):
        return f"{100 * v:.1f}" if isinstance(v, float) else str(v)

    shown = table.copy()
    for col in ("baseline", "current"):
        shown[col] = shown[col].map(pct)
    shown["tolerance"] = table["tolerance"].map(lambda v: "exact" if v == FLOAT_NOISE else pct(v))
    shown["delta"] = table["delta"].map(lambda v: f"{100 * v:+.2f}" if isinstance(v, float) else str(v))
    return shown.to_string(index=False)


def parse_overrides(items: list[str]) -> dict:
    tol = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            tol[name] = float(value)
        except ValueError:
            raise KdbenchError(f"--tolerance {item!r} must be METRIC=VALUE, e.g. robust@0.1=0.05") from None
        if not tol[name] >= 0:
            raise KdbenchError(f"--tolerance {item!r}: the tolerance must be >= 0")
        try:
            check_norm(name)
        except ValueError as e:
            raise KdbenchError(f"--tolerance {item!r}: {e}") from None
    return tol


def load_baseline(path) -> dict:
    if not path.is_file():
        raise KdbenchError(f"no baseline at {str(path)!r}; create it with: python -m kdbench check --suite "
                           f"{path.parent.name} --update-baseline")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KdbenchError(f"baseline {str(path)!r} is not valid JSON: {e}") from None


def write_baseline(path, baseline: dict) -> None:
    """Store `baseline` (baseline_from_records) as the suite's baseline.json, atomically."""
    from ..core.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(baseline, indent=1, sort_keys=True) + "\n")
