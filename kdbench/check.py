"""Regression check of a suite's robustness numbers against a stored baseline.

`results/<suite>/baseline.json` holds, per leaderboard row (dataset | pair | method), the mean and std over
seeds of every checked metric and the flags that fired. It changes only through `check --update-baseline`.

A metric holds when current >= baseline - tolerance, with
    tolerance = max(k * std_baseline * sqrt(2 / n), floor)        (defaults k = 3, floor = 0.02)
i.e. k standard errors of a difference of two means of n seeds, never below 2 accuracy points. A drop beyond
it is a regression (exit 1), a rise beyond it is reported as `improved` (exit 0: update the baseline on
purpose). A flag that fires now but did not in the baseline is a regression too. Usage errors (no baseline,
another suite's baseline, a row or metric present on one side only) exit 2.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from dataclasses import dataclass, field

import pandas as pd

from .errors import KdbenchError

CHECKED = re.compile(r"^(clean|mca|robust@.*|(fgsm|pgd|apgd-ce|apgd-dlr|square|autoattack|transfer)@.*)$")
BASELINE_SCHEMA = 1


@dataclass(frozen=True)
class CheckConfig:
    """The `[check]` table of a suite file; the command line overrides it."""

    k: float = 3.0
    floor: float = 0.02
    tolerance: dict = field(default_factory=dict)  # metric name or glob -> absolute tolerance


def row_key(row) -> str:
    return f"{row['dataset']} | {row['pair']} | {row['label']}"


def baseline_from_summary(summary: pd.DataFrame, suite: str, headline_eps: float) -> dict:
    rows = {}
    for _, r in summary.iterrows():
        metrics = {}
        for col in summary.columns:
            if col.endswith(":mean") and CHECKED.match(col[:-5]) and not pd.isna(r[col]):
                name = col[:-5]
                metrics[name] = {"mean": float(r[col]), "std": float(r[f"{name}:std"])}
        rows[row_key(r)] = {"seeds": int(r["seeds"]), "params": r["params"], "metrics": metrics,
                            "flags": sorted(f.split("(")[0] for f in str(r["flags"] or "").split())}
    return {"schema": BASELINE_SCHEMA, "suite": suite, "headline_eps": headline_eps, "rows": rows}


def tolerance_for(metric: str, std: float, n: int, cfg: CheckConfig) -> float:
    for pattern, tol in cfg.tolerance.items():
        if metric == pattern or fnmatch.fnmatchcase(metric, pattern):
            return float(tol)
    return max(cfg.k * std * math.sqrt(2.0 / max(n, 1)), cfg.floor)


def compare(baseline: dict, current: dict, cfg: CheckConfig) -> pd.DataFrame:
    """One row per (leaderboard row, metric) and per changed flag set; `status` is ok/regressed/improved."""
    if baseline.get("schema") != BASELINE_SCHEMA:
        raise KdbenchError(f"baseline schema {baseline.get('schema')!r} is not {BASELINE_SCHEMA}")
    if baseline["suite"] != current["suite"]:
        raise KdbenchError(f"the baseline is for suite {baseline['suite']!r}, not {current['suite']!r}")
    only_base = sorted(set(baseline["rows"]) - set(current["rows"]))
    only_now = sorted(set(current["rows"]) - set(baseline["rows"]))
    if only_base or only_now:
        raise KdbenchError("rows differ between baseline and results: "
                           + "; ".join([f"missing now: {k}" for k in only_base] + [f"new: {k}" for k in only_now])
                           + " (run the missing jobs, or --update-baseline on purpose)")
    out = []
    for key, base in baseline["rows"].items():
        now = current["rows"][key]
        missing = sorted(set(base["metrics"]) ^ set(now["metrics"]))
        if missing:
            raise KdbenchError(f"metric(s) {', '.join(missing)} present on one side only for {key}")
        for metric, b in base["metrics"].items():
            c = now["metrics"][metric]["mean"]
            tol = tolerance_for(metric, b["std"], base["seeds"], cfg)
            delta = c - b["mean"]
            status = "regressed" if delta < -tol else ("improved" if delta > tol else "ok")
            out.append({"row": key, "metric": metric, "baseline": b["mean"], "current": c, "delta": delta,
                        "tolerance": tol, "status": status})
        new_flags = sorted(set(now["flags"]) - set(base["flags"]))
        gone = sorted(set(base["flags"]) - set(now["flags"]))
        if new_flags or gone:
            out.append({"row": key, "metric": "flags", "baseline": " ".join(base["flags"]) or "-",
                        "current": " ".join(now["flags"]) or "-", "delta": "", "tolerance": "",
                        "status": "regressed" if new_flags else "improved"})
    return pd.DataFrame(out)


def format_table(table: pd.DataFrame) -> str:
    def pct(v):
        return f"{100 * v:.1f}" if isinstance(v, float) else str(v)

    shown = table.copy()
    for col in ("baseline", "current", "tolerance"):
        shown[col] = shown[col].map(pct)
    shown["delta"] = table["delta"].map(lambda v: f"{100 * v:+.1f}" if isinstance(v, float) else str(v))
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
    return tol


def load_baseline(path) -> dict:
    if not path.is_file():
        raise KdbenchError(f"no baseline at {str(path)!r}; create it with: python -m kdbench check --suite "
                           f"{path.parent.name} --update-baseline")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KdbenchError(f"baseline {str(path)!r} is not valid JSON: {e}") from None
