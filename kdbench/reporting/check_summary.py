"""What `check` says after the table of changed checks: how each machine case was judged, what the gate can
catch across machines (each row's headline metric, and every metric that cannot detect the `[check] drop`)."""

from __future__ import annotations

import pandas as pd

from ..core.metric_names import SCORE_UNITS, at_eps, score_unit, shown

MODELS = {
    "measured": "tolerances from the variation measured in the baseline",
    "per-example": "tolerances from per-example noise alone (the baseline has no measured variation: make it with "
                   "--update-baseline --variation auto)",
    "seed spread": "tolerances from the baseline's seed spread (its records keep no per-example data)",
    "override": "tolerances given by [check] tolerance / --tolerance",
}


def _pts(v: float) -> str:
    return f"{100 * v:.1f}"


def _short(row: str) -> str:
    return row.split(" | ")[-1]


def machine_lines(table: pd.DataFrame, alpha: float, baseline: dict) -> list[str]:
    """One line per machine case: how many checks and how they were judged."""
    lines = []
    for machine, rows in table[table["machine"] != ""].groupby("machine"):
        if machine == "same machine":
            lines.append(f"same machine: {len(rows)} checks, exact (equal configs give equal numbers)")
            continue
        how = "; ".join(f"{n} {MODELS[model]}" for model, n in rows["model"].value_counts().items())
        reruns = (baseline.get("variation") or {}).get("reruns") or []
        where = "".join(f" (re-run on {r['measured_on']}: {', '.join(r['differs_by'])}; {r['jobs']} of "
                        f"{baseline['variation']['of']} jobs)" for r in reruns if r.get("jobs")) \
            if "measured" in set(rows["model"]) else ""
        lines.append(f"other machine: {len(rows)} checks, one-sided Bonferroni over {len(rows)} metrics (alpha "
                     f"{alpha:g}); {how}{where}")
    return lines


def power_lines(table: pd.DataFrame, headline_eps: float, drop: float, every: bool = False) -> list[str]:
    """What a check across machines can catch: the headline metric of each row (every metric with `every`), then
    the metrics in points whose smallest detectable drop exceeds `drop`, and the smallest detectable rise of the
    scores (NLL, Brier), which are not in points and are not judged against `drop`."""
    other = table[table["machine"] == "other machine"]
    if not len(other):
        return []
    headline = at_eps("robust", headline_eps)
    rows = (other if every else other[other["metric"] == headline]).copy()
    rows["teacher"] = rows["row"].map(lambda r: _short(r).startswith("teacher ("))
    rows = rows.sort_values(["teacher", "row", "metric"])
    lines = ["what a check on another machine can catch: the smallest drop of the mean over the compared seeds "
             "found with 80% power (points; NLL in nats and Brier as scores)"]
    width = max(len(_short(r)) for r in rows["row"]) if len(rows) else 4
    lines.append(f"  {'row':<{width}}  {'metric':<20} {'seeds':>5} {'tolerance':>9} {'detectable':>10}")
    for _, r in rows.iterrows():
        lines.append(f"  {_short(r['row']):<{width}}  {r['metric']:<20} {len(str(r['seed']).split(',')):>5} "
                     f"{shown(r['metric'], r['tolerance']):>9} {shown(r['metric'], r['detectable']):>10}")
    is_score = other["metric"].map(lambda m: score_unit(m) is not None)
    points, scores = other[~is_score], other[is_score]
    weak = points[points["detectable"] > drop + 1e-12]
    lines.append(f"{len(points) - len(weak)} of {len(points)} metrics in points detect a {_pts(drop)}-point drop"
                 + (f"; {len(weak)} cannot and are checked at their own tolerance (smallest detectable drop):"
                    if len(weak) else ""))
    for row, group in weak.groupby("row", sort=True):
        items = ", ".join(f"{r['metric']} ({_pts(r['detectable'])})" for _, r in group.iterrows())
        lines.append(f"  {_short(row)}: {items}")
    if len(scores):
        units = ", ".join(f"{k} in {u}" if u != "Brier" else f"{k} as a score (0 to 2)"
                          for k, u in SCORE_UNITS.items())
        lines.append(f"{len(scores)} scores ({units}), checked at their own tolerance; the smallest detectable "
                     "rise, median [largest] over the rows: " + ", ".join(
                         f"{m} {d.median():.3f} [{d.max():.3f}]"
                         for m, d in scores.groupby("metric")["detectable"]))
    return lines
