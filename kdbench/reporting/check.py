"""Regression check of a suite's robustness numbers against a stored baseline, seed by seed.

`results/<suite>/baseline.json` (schema 3) holds, per leaderboard row (dataset | pair | method) and per seed,
every checked metric, the machine that made it (machine.py) and the per-example correctness of the record
(examples.py), plus the flags that fired on the row; and, when made with `--variation`, each row's measured
cross-machine variation per metric and the smallest drop the gate detects (variation.py). It changes only
through `check --update-baseline`.

Each seed of the results is compared with the same seed of the baseline:
- **same machine** type, thread count, versions and pinned kernels: equal configs give equal numbers, so a
  metric holds only when it is equal up to float round-trip (FLOAT_NOISE). Any drop is a regression, any rise
  is reported.
- **another machine** (another CPU, GPU or thread count): the seeds' differences are averaged, and the mean
  fails when it drops by more than the tolerance at the one-sided Bonferroni level alpha / m over the m metrics
  compared across machines: t_nu * sd / sqrt(seeds) with the measured, moderated variation of the baseline
  (machine_variation.py); for a baseline without it, z * the per-example noise of rerun_noise.py, or without
  per-example data max(k * std * sqrt(2 / n), floor) over the baseline's seeds. Each metric also gets the
  smallest drop it detects with 80% power; the metrics that cannot detect `[check] drop` are listed.
A `[check] tolerance` (or --tolerance) for a metric replaces the computed tolerance. A flag that fires now but
did not in the baseline is a regression too, except across machines when a sanity threshold's flag (not one of
STRUCTURAL_FLAGS) fires on one seed alone of a row of TRIM_FROM or more seeds: the numbers its threshold sits on
are what machine variation moves, and one seed is what the trimmed mean leaves out, so it is reported as `moved`
and does not fail the check; on two seeds, or on the same machine, it is a regression. Usage errors (no baseline,
another suite's or an older schema's baseline, a row, seed or metric present on one side only) exit 2.
"""

from __future__ import annotations

import fnmatch
import json
import math

import pandas as pd

from ..core.errors import KdbenchError
from ..core.machine import same_machine
from ..core.metric_names import LOWER_IS_BETTER, check_norm, lower_is_better, score_unit, shown, try_parse
from ..records.examples import masks_of
from ..stats.machine_variation import TRIM_FROM, Variation, detectable, tolerance, trimmed_count, trimmed_seeds
from ..stats.rerun_noise import ALPHA, FLOAT_NOISE, flip_rate, rerun_sd
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
BASELINE_SCHEMA = 3
READABLE_SCHEMAS = (2, 3)  # schema 2: no measured variation (the per-example noise model across machines)
ENV_KEYS = ("device", "threads", "torch", "torchattacks", "cpu", "gpu")


def row_key(row) -> str:
    return f"{row['dataset']} | {row['pair']} | {row['label']}"


def record_row(r: dict) -> str:
    """The baseline row of a record."""
    return row_key({"dataset": r["dataset"], "pair": r.get("pair", ""),
                    "label": row_label(r["method"], r.get("teacher_kind") or None, r["role"])})


def baseline_from_records(records: list[dict], suite: str, headline_eps: float,
                          reruns: list[list[dict]] | None = None, alpha: float = ALPHA) -> dict:
    """The baseline of `records`; with `reruns` (the records of re-runs of their jobs on other machines), each
    row's measured variation (variation.py) and the smallest drop each checked metric detects at `alpha`."""
    rows: dict = {}
    for r in sorted(records, key=lambda r: (str(r.get("job_id")))):
        row = rows.setdefault(record_row(r), {"params": json.dumps(r.get("method_params", {}), sort_keys=True),
                                              "flags": [], "seeds": {}})
        row["flags"] = sorted(set(row["flags"]) | set(r["flags"]))
        env = r.get("env") or {}
        row["seeds"][str(r["seed"])] = {
            "metrics": {m: float(v) for m, v in sorted(r["metrics"].items()) if is_checked(m)},
            "env": {k: env.get(k) for k in ENV_KEYS}, "examples": r.get("examples"), "flags": sorted(r["flags"])}
    baseline = {"schema": BASELINE_SCHEMA, "suite": suite, "headline_eps": headline_eps, "rows": rows}
    if reruns:
        from .variation import measure

        variation, baseline["variation"] = measure(records, reruns, record_row, is_checked)
        checks = sum(len(next(iter(row["seeds"].values()))["metrics"]) for row in rows.values())
        for key, row in rows.items():
            measured = sorted(variation.get(key, {}).items())
            row["variation"] = {m: [round(sd, 7), round(df, 2)] for m, (sd, df) in measured}
            seeds = trimmed_count(len(row["seeds"]))  # the seeds a comparison averages
            row["detectable"] = {m: round(detectable(Variation(*row["variation"][m]), seeds, alpha / checks), 5)
                                 for m in next(iter(row["seeds"].values()))["metrics"] if m in row["variation"]}
    return baseline


def elsewhere(baseline: dict) -> dict:
    """`baseline` as another machine would have made it (same numbers, another machine in every seed's env): what
    compare(baseline, elsewhere(baseline)) says is what a check across machines can catch."""
    rows = {key: {**row, "seeds": {s: {**seed, "env": {"cpu": {"model": "(another machine)"}}}
                                   for s, seed in row["seeds"].items()}} for key, row in baseline["rows"].items()}
    return {**baseline, "rows": rows}


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


COLUMNS = ["row", "metric", "seed", "baseline", "current", "delta", "tolerance", "detectable", "machine", "model",
           "status"]


def compare(baseline: dict, current: dict, cfg: CheckConfig) -> pd.DataFrame:
    """One row per (leaderboard row, metric, seed) on the same machine, per (leaderboard row, metric) across
    machines (seeds pooled), and per changed flag set; `status` is ok/regressed/improved; across machines
    `detectable` is the smallest drop found with 80% power and `model` where the tolerance came from (measured,
    per-example, seed-spread, override)."""
    if baseline.get("schema") not in READABLE_SCHEMAS:
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
    level = cfg.alpha / max(m, 1)
    out = []
    for key, base, now, same, other in plan:
        metrics = sorted(next(iter(base["seeds"].values()))["metrics"])
        for metric in metrics:
            override = tolerance_override(metric, cfg)
            for s in same:
                b, c = base["seeds"][s]["metrics"][metric], now["seeds"][s]["metrics"][metric]
                tol = FLOAT_NOISE if override is None else override
                out.append(_result(key, metric, s, b, c, tol, tol, "same machine", "exact"))
            if other:
                kept = trimmed_seeds({s: now["seeds"][s]["metrics"][metric] - base["seeds"][s]["metrics"][metric]
                                      for s in other})
                b = [base["seeds"][s]["metrics"][metric] for s in kept]
                c = [now["seeds"][s]["metrics"][metric] for s in kept]
                tol, det, model = _tolerance(base, now, kept, metric, level, cfg)
                if override is not None:
                    tol, det, model = override, override, "override"
                out.append(_result(key, metric, ",".join(other), sum(b) / len(b), sum(c) / len(c), tol, det,
                                   "other machine", model))
        new_flags = sorted(set(now["flags"]) - set(base["flags"]))
        gone = sorted(set(base["flags"]) - set(now["flags"]))
        if new_flags or gone:
            alone = one_seeds_flags(new_flags, now, other)
            out.append({"row": key, "metric": "flags", "seed": ",".join(alone or []),
                        "baseline": " ".join(base["flags"]) or "-", "current": " ".join(now["flags"]) or "-",
                        "delta": "", "tolerance": "", "detectable": "", "machine": "",
                        "model": "", "status": "moved" if alone else ("regressed" if new_flags else "improved")})
    return pd.DataFrame(out, columns=COLUMNS)


# flags that say what the model or its code is, not where a number fell against a threshold: new, they fail a check
# on any machine
STRUCTURAL_FLAGS = ("training-failed", "randomized-outputs", "probability-outputs")


def one_seeds_flags(new_flags: list[str], now: dict, other: list[str]) -> list[str] | None:
    """The seeds on which `new_flags` fire, when each fires on one seed alone of a row of TRIM_FROM or more seeds,
    that seed on another machine, and none is structural (the module docstring); else None."""
    seeds = now["seeds"]
    if not new_flags or len(seeds) < TRIM_FROM or set(new_flags) & set(STRUCTURAL_FLAGS):
        return None
    if any("flags" not in seed for seed in seeds.values()):
        return None  # records of an older baseline format: no per-seed flags
    fired = [[s for s, seed in seeds.items() if flag in seed["flags"]] for flag in new_flags]
    if any(len(on) != 1 or on[0] not in other for on in fired):
        return None
    return sorted({on[0] for on in fired})


def _result(key, metric, seed, b, c, tol, det, machine, model) -> dict:
    delta = c - b
    worse = delta > tol if lower_is_better(metric) else delta < -tol
    better = delta < -tol if lower_is_better(metric) else delta > tol
    status = "regressed" if worse else ("improved" if better else "ok")
    return {"row": key, "metric": metric, "seed": seed, "baseline": b, "current": c, "delta": delta,
            "tolerance": tol, "detectable": det, "machine": machine, "model": model, "status": status}


def _tolerance(base: dict, now: dict, seeds: list[str], metric: str, level: float,
               cfg: CheckConfig) -> tuple[float, float, str]:
    """(tolerance, smallest detectable drop, model) of the mean over `seeds` of (current - baseline) across
    machines at one-sided `level`: the baseline's measured variation where it has one, else the per-example
    noise of rerun_noise.py, else the baseline's seed spread."""
    measured = (base.get("variation") or {}).get(metric)
    if measured is not None:
        v = Variation(*measured)
        return tolerance(v, len(seeds), level), detectable(v, len(seeds), level), "measured"
    variances = []
    for s in seeds:
        bs, cs = base["seeds"][s], now["seeds"][s]
        n = (bs.get("examples") or {}).get("n")
        if not isinstance(n, int) or n != (cs.get("examples") or {}).get("n"):
            tol = _fallback([base["seeds"][x]["metrics"][metric] for x in base["seeds"]], cfg)
            return tol, tol, "seed spread"
        mb, mc = masks_of(bs), masks_of(cs)
        sd = rerun_sd(bs["metrics"][metric], cs["metrics"][metric], n, mb.get(metric), mc.get(metric),
                      flip_rate(mb, mc))
        variances.append(sd * sd)
    v = Variation(math.sqrt(sum(variances)) / math.sqrt(len(seeds)), math.inf)  # per seed, as tolerance() takes
    return tolerance(v, len(seeds), level), detectable(v, len(seeds), level), "per-example"


def format_table(table: pd.DataFrame) -> str:
    """The check table as text: fractions in points, NLL and Brier scores in their own units (a closing line says
    so when the table has any)."""
    def cell(metric, v, signed=False):
        return shown(metric, v, signed) if isinstance(v, float) else str(v)

    out = table.copy()
    for col in ("baseline", "current"):
        out[col] = [cell(m, v) for m, v in zip(table["metric"], table[col])]
    for col in ("tolerance", "detectable"):
        out[col] = ["exact" if v == FLOAT_NOISE else cell(m, v) for m, v in zip(table["metric"], table[col])]
    out["delta"] = [cell(m, v, signed=True) for m, v in zip(table["metric"], table["delta"])]
    scores = sorted({f"{m.split('/')[0]} ({score_unit(m)})" for m in table["metric"] if score_unit(m)})
    note = f"\n(points, except the scores {', '.join(scores)}, shown as they are)" if scores else ""
    return out.to_string(index=False) + note


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
