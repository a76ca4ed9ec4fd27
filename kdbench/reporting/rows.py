"""Leaderboard rows: which row a record belongs to, and the row's label.

A row is one (dataset, pair, role, method, teacher kind, method parameters); its seeds are the records that share
it. Tables (report.py), model cards (cards.py) and the regression check (check.py) all group records by this key.
"""

from __future__ import annotations

import json

GROUP = ["dataset", "pair", "role", "method", "teacher_kind", "params"]


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


def eval_config(record: dict) -> dict:
    """The evaluation settings a record was made with (a job's `config.eval`, an external record's protocol job's)."""
    config = record.get("config") or {}
    return config.get("eval") or (config.get("protocol_job") or {}).get("eval") or {}


def headline_l2(records: list[dict]) -> float | None:
    """The L2 headline radius most of the records were evaluated at (None: no record has an L2 threat model)."""
    found = [eval_config(r).get("headline_eps_l2") for r in records]
    found = [v for v in found if v is not None]
    return max(set(found), key=found.count) if found else None
