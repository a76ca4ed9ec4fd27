"""Leaderboard rows: which row a record belongs to, the row's label, which of its seeds count, and whether the row
is under-trained.

A row is one (dataset, pair, role, method, teacher kind, method parameters); its seeds are the records that share
it. Tables (report.py), model cards (cards.py) and the regression check (check.py) all group records by this key.

A seed whose record carries `training-failed` (evaluation/sanity.py: the model did not learn) is left out of its
row's means and paired tests and shown apart: its numbers measure a failed run, not the method. A student row is
`under-trained` when its mean clean accuracy is more than `UNDER_TRAINED_GAP` below `ce`'s (the same pair's
student without a teacher) over the seeds both have: its robustness then measures the training budget as much as
the method.
"""

from __future__ import annotations

import json

from ..stats.spread import mean_std

GROUP = ["dataset", "pair", "role", "method", "teacher_kind", "params"]
TRAINING_FAILED = "training-failed"  # the flag's name (evaluation/sanity.py registers it)
UNDER_TRAINED_GAP = 0.05  # a row's clean accuracy this far below ce's (a fraction) makes it under-trained
UNDER_TRAINED_BASELINE = "ce"


def group_key(record: dict) -> tuple:
    """The leaderboard row a record belongs to, in the order of GROUP."""
    return (record["dataset"], record.get("pair", ""), record["role"], record["method"],
            record.get("teacher_kind") or "", json.dumps(record.get("method_params", {}), sort_keys=True))


def row_label(method: str, teacher_kind, role: str) -> str:
    """How a row is named in tables: the method, with its teacher kind where that is not the standard one."""
    if role == "teacher":
        return f"teacher ({teacher_kind})"
    if role == "external":  # a model evaluated with `kdbench evaluate` (external.py)
        return f"{method} [external]"
    return method if teacher_kind in (None, "standard") else f"{method} [{teacher_kind} teacher]"


def training_failed(record: dict) -> bool:
    return TRAINING_FAILED in record.get("flags", ())


def counted(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """A row's records split into the seeds that count and those whose training failed, each sorted by seed."""
    records = sorted(records, key=lambda r: r["seed"])
    return [r for r in records if not training_failed(r)], [r for r in records if training_failed(r)]


def under_trained(records: list[dict], baseline: list[dict]) -> tuple[float, float, int] | None:
    """(the row's mean clean accuracy, the baseline's, the number of seeds compared) when the row's is more than
    UNDER_TRAINED_GAP below, over the seeds both have (each row's own seeds where they share none); else None.
    Both lists hold the seeds that count (`counted`)."""
    clean = {r["seed"]: r["metrics"]["clean"] for r in records if "clean" in r["metrics"]}
    base = {r["seed"]: r["metrics"]["clean"] for r in baseline if "clean" in r["metrics"]}
    if not clean or not base:
        return None
    common = sorted(set(clean) & set(base))
    mine, theirs = ([clean[s] for s in common], [base[s] for s in common]) if common else (list(clean.values()),
                                                                                              list(base.values()))
    a, b = mean_std(mine)[0], mean_std(theirs)[0]
    return (a, b, len(common)) if b - a > UNDER_TRAINED_GAP else None


def eval_config(record: dict) -> dict:
    """The evaluation settings a record was made with (a job's `config.eval`, an external record's protocol job's)."""
    config = record.get("config") or {}
    return config.get("eval") or (config.get("protocol_job") or {}).get("eval") or {}


def headline_l2(records: list[dict]) -> float | None:
    """The L2 headline radius most of the records were evaluated at (None: no record has an L2 threat model)."""
    found = [eval_config(r).get("headline_eps_l2") for r in records]
    found = [v for v in found if v is not None]
    return max(set(found), key=found.count) if found else None
