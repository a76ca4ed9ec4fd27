"""The leaderboard's difference columns: each student row against the baselines its method declares
(`Distiller.baselines`, e.g. `ce`, and `at` for adversarial methods), paired on seeds and, where records keep
per-example correctness, on examples (paired.py), with Holm's correction over every comparison of a table: every
compared metric (the L-inf worst case, and where the records have them the L2 worst case, the certified accuracy
and the ECE) times every baseline. A baseline row absent from the table is skipped.

A difference is always row minus baseline; for a metric that is better lower (ECE: metric_names.lower_is_better)
a negative difference is the improvement, and the note says so.
"""

from __future__ import annotations

import math
import statistics

from ..core.metric_names import lower_is_better
from ..records.examples import masks_of
from ..stats.paired import ALPHA, TESTS, Paired, compare, holm


def baselines_of(method: str) -> tuple[str, ...]:
    from ..methods import METHODS

    if method not in METHODS:  # a method this kdbench does not know (records from elsewhere): the default
        return ("ce",)
    return tuple(METHODS.get(method).baselines)


def _per_seed(records: list[dict], metric: str):
    values = {r["seed"]: r["metrics"][metric] for r in records if metric in r["metrics"]}
    masks = {}
    for r in records:
        m = masks_of(r).get(metric)
        if m is not None:
            masks[r["seed"]] = m
    return values, masks


def _fmt(p: Paired, significant: bool, common: str = "") -> str:
    d = f"{100 * p.diff:+.1f}"
    if p.test == "none":
        return d + common
    return f"{d} [{100 * p.low:+.1f}, {100 * p.high:+.1f}]" + ("*" if significant else "") + common


def _common(values: dict, base_values: dict) -> str:
    """Where the seeds a difference is computed on are not all of both rows' seeds: their number and the two
    rows' means over them (the row's own mean, in its cell, is over all of its seeds)."""
    seeds = sorted(set(values) & set(base_values))
    if set(seeds) == set(values) == set(base_values):
        return ""
    mine, theirs = (100 * statistics.mean(v[s] for s in seeds) for v in (values, base_values))
    return f" ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}: {mine:.1f} vs {theirs:.1f})"


def delta_columns(rows: list[dict], records_of, metrics) -> tuple[dict[str, list[str]], str]:
    """For the student `rows` of one table (in display order; `records_of(row)` gives a row's records): the
    difference columns and the note that names the test, the correction and the smallest detectable difference.
    `metrics`: the compared metrics as (metric, tag) pairs, or one metric name; a column is "Δ vs <baseline>" for
    the first (untagged) metric and "Δ <tag> vs <baseline>" for the others."""
    if isinstance(metrics, str):
        metrics = [(metrics, "")]
    first = {}
    for i, r in enumerate(rows):
        first.setdefault(r["method"], i)
    names = []
    for r in rows:
        for b in baselines_of(r["method"]):
            if b in first and b not in names:
                names.append(b)
    cells: dict[tuple[str, int, str], Paired] = {}
    common: dict[tuple[str, int, str], str] = {}
    for metric, _tag in metrics:
        data = [_per_seed(records_of(r), metric) for r in rows]
        for i, r in enumerate(rows):
            for b in baselines_of(r["method"]):
                j = first.get(b)
                if j is None or j == i or r["method"] == b:
                    continue
                p = compare(data[i][0], data[j][0], data[i][1], data[j][1])
                if p is not None:
                    cells[(metric, i, b)] = p
                    common[(metric, i, b)] = _common(data[i][0], data[j][0])
    keys = list(cells)
    significant = dict(zip(keys, holm([cells[k].p for k in keys])))
    columns = {}
    for metric, tag in metrics:
        for b in names:
            columns[f"Δ {tag} vs {b}" if tag else f"Δ vs {b}"] = [
                _fmt(cells[(metric, i, b)], significant[(metric, i, b)], common[(metric, i, b)])
                if (metric, i, b) in cells else "" for i in range(len(rows))]
    return columns, _note(cells, metrics, names, any(common.values()))


def _note(cells: dict[tuple, Paired], metrics: list[tuple[str, str]], names: list[str], partial: bool = False) -> str:
    results = list(cells.values())
    if not results:
        return ""
    tested = [p for p in results if p.test != "none"]
    m = len(tested)
    used = sorted({p.test for p in results}, key=list(TESTS).index)
    metric = metrics[0][0]
    text = (f"Δ vs {' / '.join(names)}: paired difference in {metric} to that baseline row (on the seeds both have"
            + (", same examples" if any(t in ("crossed", "mcnemar") for t in used) else "")
            + ("; where those are not all of both rows' seeds, '(k seeds: a vs b)' gives their number and the two "
               "rows' means over them" if partial else "") + "), in points")
    others = [f"Δ {tag}: in {name}" + (" (lower is better: a negative difference is the improvement)"
                                       if lower_is_better(name) else "") for name, tag in metrics[1:]]
    if others:
        text += "; " + "; ".join(others)
    if not tested:
        return text + "; one seed and no per-example data: no interval and no test apply."
    mdd = [p.detectable(m) for (name, _, _), p in cells.items() if p.test != "none" and name == metric]
    mdd = [v for v in mdd if not math.isnan(v)]
    text += (f", with its 95% interval. Test: {'; '.join(TESTS[t] for t in used)}. * marks a difference "
             f"significant after Holm's correction over the {m} comparison(s) of this table (family-wise "
             f"{ALPHA:g}).")
    if mdd:
        text += (f" Smallest detectable difference in {metric}: {100 * statistics.median(mdd):.1f} points (median "
                 f"over its comparisons; 80% power at {ALPHA:g}/{m}).")
    return text
