"""The cross-machine variation a baseline carries, measured from a re-run of its jobs under other float order.

`check --update-baseline --variation DIR|auto` pairs every record of the baseline with the record of the same
job in DIR (a run of the suite on another machine, thread count or CPU kernel level; `auto` makes one here on
another thread count), and stores per leaderboard row and metric the moderated variation of machine_variation.py:
`variation[metric] = [sd, df]`, for every metric of the records (check reads the checked ones, reproduce all),
and `detectable[metric]`, the smallest drop of a checked metric the gate finds across machines with 80% power.
"""

from __future__ import annotations

from ..core.errors import KdbenchError
from ..core.machine import describe, differences, same_machine
from ..records.examples import examples_n
from ..stats.machine_variation import Prior, fit_prior, measured_s2, moderate


def _pairs(records: list[dict], rerun: list[dict], key_of) -> dict:
    """{row key: [(record, re-run record), ...]} over the records that have a re-run of their job."""
    by_job = {r["job_id"]: r for r in rerun}
    pairs: dict = {}
    same = []
    for r in records:
        again = by_job.get(r["job_id"])
        if again is None:
            continue
        if same_machine(r.get("env"), again.get("env")):
            same.append(r["job_id"])
        pairs.setdefault(key_of(r), []).append((r, again))
    if not pairs:
        raise KdbenchError("the variation run holds no record of the baseline's jobs (same suite, same config?): "
                           "run the suite there first")
    if same:
        raise KdbenchError(f"{len(same)} record(s) of the variation run (e.g. {same[0]}) come from the baseline's "
                           "machine type, thread count and versions: their numbers are the baseline's and measure "
                           "no variation; re-run on another thread count, CPU or kernel level (or --variation auto)")
    return pairs


def measure(records: list[dict], rerun: list[dict], key_of) -> tuple[dict, dict]:
    """({row key: {metric: [sd, df]}}, a summary of where the variation was measured) from `records` and the
    records `rerun` of a re-run of their jobs on another machine; rows without a re-run get the prior of their
    metrics (the variation of the rows that have one)."""
    pairs = _pairs(records, rerun, key_of)
    own: dict = {}  # row -> metric -> (s2, df)
    for key, pr in pairs.items():
        for metric in sorted(set.intersection(*(set(r["metrics"]) & set(a["metrics"]) for r, a in pr))):
            diffs = [float(a["metrics"][metric]) - float(r["metrics"][metric]) for r, a in pr]
            own.setdefault(key, {})[metric] = (measured_s2(diffs, examples_n(pr[0][0])), len(diffs))
    priors: dict[str, Prior | None] = {}
    for metric in sorted({m for row in own.values() for m in row}):
        found = [row[metric] for row in own.values() if metric in row]
        priors[metric] = fit_prior([s2 for s2, _ in found], [df for _, df in found])
    out: dict = {}
    for r in records:
        key = key_of(r)
        row = out.setdefault(key, {})
        for metric in r["metrics"]:
            if metric in row:
                continue
            s2, df = own.get(key, {}).get(metric, (None, 0))
            v = moderate(s2, df, priors.get(metric))
            if v is not None:
                row[metric] = [v.sd, v.df]
    first = next(iter(pairs.values()))[0]
    env = first[1].get("env") or {}
    summary = {"measured_on": describe(env), "baseline_on": describe(first[0].get("env")),
               "differs_by": differences(first[0].get("env"), env),
               "kernels": (env.get("cpu") or {}).get("kernels") or {}, "threads": env.get("threads"),
               "jobs": sum(len(p) for p in pairs.values()), "of": len(records)}
    return out, summary
