"""The cross-machine variation a baseline carries, measured from a re-run of its jobs under other float order.

`check --update-baseline --variation DIR|auto` pairs every record of the baseline with the record of the same
job in DIR (a run of the suite on another machine, thread count or CPU kernel level; `auto` makes one here with
other CPU kernels; --variation may be given more than once), and stores per leaderboard row and metric the
moderated variation of machine_variation.py, `variation[metric] = [sd, df]`, for every metric of the records
(check reads the checked ones, reproduce all), and `detectable[metric]`, the smallest drop of a checked metric
the gate finds across machines with 80% power.
"""

from __future__ import annotations

from ..core.errors import KdbenchError
from ..core.machine import describe, differences, same_machine
from ..records.examples import examples_n
from ..stats.machine_variation import fit_priors, moderate, rerun_variance


def _groups(records: list[dict], reruns: list[list[dict]], key_of) -> dict:
    """{row key: [(record, [its re-runs]), ...]} over the records that have a re-run of their job."""
    by_job = [{r["job_id"]: r for r in rerun} for rerun in reruns]
    groups: dict = {}
    same = []
    for r in records:
        again = [jobs[r["job_id"]] for jobs in by_job if r["job_id"] in jobs]
        same += [r["job_id"] for a in again if same_machine(r.get("env"), a.get("env"))]
        if again:
            groups.setdefault(key_of(r), []).append((r, again))
    if not groups:
        raise KdbenchError("the variation run holds no record of the baseline's jobs (same suite, same config?): "
                           "run the suite there first")
    if same:
        raise KdbenchError(f"{len(same)} record(s) of the variation run (e.g. {same[0]}) come from the baseline's "
                           "machine type, thread count and versions: their numbers are the baseline's and measure "
                           "no variation; re-run on another thread count, CPU or kernel level (or --variation auto)")
    return groups


def _summary(records: list[dict], rerun: list[dict]) -> dict:
    """Where one re-run was made, against the baseline's records."""
    jobs = {r["job_id"]: r for r in records}
    paired = [(jobs[a["job_id"]], a) for a in rerun if a["job_id"] in jobs]
    if not paired:
        return {"jobs": 0}
    base, again = paired[0]
    env = again.get("env") or {}
    return {"measured_on": describe(env), "differs_by": differences(base.get("env"), env),
            "kernels": (env.get("cpu") or {}).get("kernels") or {}, "threads": env.get("threads"),
            "jobs": len(paired)}


def measure(records: list[dict], reruns: list[list[dict]], key_of, checked) -> tuple[dict, dict]:
    """({row key: {metric: [sd, df]}}, a summary of where the variation was measured) from `records` and the
    records of one or more re-runs of their jobs on other machines (`reruns`); cells without a re-run get their
    prior. The metrics the gate checks (`checked(metric)`) and the others (per level, per severity, which only
    `reproduce` uses) are moderated apart: the many level-wise cells would otherwise set the prior of the few the
    gate decides on."""
    groups = _groups(records, reruns, key_of)
    own: dict = {}  # row -> metric -> (s2, df)
    for key, seeds in groups.items():
        for metric in sorted(set.intersection(*(set(r["metrics"]) for r, _ in seeds))):
            runs = [[float(x["metrics"][metric]) for x in [r, *again] if metric in x["metrics"]] for r, again in seeds]
            s2, df = rerun_variance(runs, examples_n(seeds[0][0]))
            if df:
                own.setdefault(key, {})[metric] = (s2, df)
    cells = {(key_of(r), m): own.get(key_of(r), {}).get(m, (0.0, 0)) for r in records for m in r["metrics"]}
    priors = {**fit_priors({c: v for c, v in cells.items() if checked(c[1])}),
              **fit_priors({c: v for c, v in cells.items() if not checked(c[1])})}
    out: dict = {}
    for (key, metric), (s2, df) in sorted(cells.items()):
        v = moderate(s2 if df else None, df, priors.get((key, metric)))
        if v is not None:
            out.setdefault(key, {})[metric] = [v.sd, v.df]
    return out, {"reruns": [_summary(records, rerun) for rerun in reruns], "of": len(records)}
