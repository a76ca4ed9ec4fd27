"""The records a results folder reports: each leaderboard row as it was last run.

A results folder keeps every record written into it. When a suite is edited (more epochs, another learning rate,
another evaluation setting, a new protocol) and run again into the same folder, its rows get new jobs, and the
records of the old jobs stay: averaged together, a row would mix two trainings (its 'epochs' column showing
"12/20") and a seed could count twice. So a row is what its newest record (`created`) says it is: the records of a
row (`rows.group_key`: dataset, pair, role, method, teacher kind, method parameters) whose job configuration, the
seed and the GPU settings aside, differs from the newest one's are superseded. Tables, plots, cards, paired tests
and the regression check leave them out, and say how many; they stay on disk for `reproduce`. Records without a
job configuration (`evaluate`'s external ones) are never superseded.
"""

from __future__ import annotations

import json

from .rows import group_key, row_label

IGNORED = ("seed", "gpu")  # the config fields that may differ within one row: its seeds, and the GPU it ran on


def row_config(record: dict) -> str | None:
    """The record's job configuration without the fields a row's records may differ in; None without one."""
    config = record.get("config")
    if not isinstance(config, dict):
        return None
    return json.dumps({k: v for k, v in config.items() if k not in IGNORED}, sort_keys=True)


def current(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the records of each row's newest configuration, the superseded ones), each in the order given."""
    configs = [row_config(r) for r in records]
    newest: dict[tuple, tuple] = {}  # row -> (created, job id, configuration) of its newest record
    for r, config in zip(records, configs):
        if config is not None:
            stamp = (str(r.get("created", "")), r["job_id"], config)
            newest[group_key(r)] = max(newest.get(group_key(r), stamp), stamp)
    kept, superseded = [], []
    for r, config in zip(records, configs):
        same = config is None or config == newest[group_key(r)][2]
        (kept if same else superseded).append(r)
    return kept, superseded


def superseded_line(superseded: list[dict], folder) -> str:
    """One line on the records left out: how many, of which rows."""
    rows = sorted({row_label(r["method"], r.get("teacher_kind") or None, r["role"]) for r in superseded})
    return (f"note: {len(superseded)} record(s) in {folder} are of an earlier configuration of their row and are "
            f"left out (rows: {', '.join(rows)}; a row is its newest records' configuration; move them away to "
            "silence this)")
