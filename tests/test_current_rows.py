"""A results folder reports each leaderboard row as it was last run (kdbench/reporting/current.py): records of an
earlier configuration of a row (a suite edited and run again into the same folder) are left out and named."""

import copy
import json
from pathlib import Path

from conftest import ROOT, run_main

from kdbench.records.store import write_record
from kdbench.reporting.current import current
from kdbench.reporting.report import summarize

RECORDS = ROOT / "results" / "robustness" / "records"


def _committed(method: str, seeds=(1, 2)) -> list[dict]:
    found = [json.loads(p.read_text()) for p in sorted(RECORDS.glob("*.json"))]
    return sorted((r for r in found if r["method"] == method and r["role"] == "student" and r["seed"] in seeds),
                  key=lambda r: r["seed"])


def _older(record: dict, seed: int, epochs: int) -> dict:
    """`record` as a run of an earlier suite (fewer epochs) would have written it for `seed`."""
    old = copy.deepcopy(record)
    old["seed"] = old["config"]["seed"] = seed
    old["config"]["train"]["epochs"] = epochs
    old["job_id"] = f"old{seed}{epochs}".ljust(16, "0")
    old["created"] = "2020-01-01T00:00:00Z"
    old["metrics"] = {m: v / 2 for m, v in old["metrics"].items()}
    return old


def test_a_row_is_its_newest_configuration():
    new = _committed("ce")
    assert [r["seed"] for r in new] == [1, 2]
    old = [_older(new[0], 1, 6), _older(new[0], 3, 6)]  # seed 1 re-run since; seed 3 not in the edited suite
    mixed = summarize(new + old)
    assert mixed.iloc[0]["seeds"] == 4 and mixed.iloc[0]["epochs"] == "6/12"  # what the folder held, unfiltered
    kept, superseded = current(old + new)
    assert [r["job_id"] for r in kept] == [r["job_id"] for r in new]
    assert [r["job_id"] for r in superseded] == [r["job_id"] for r in old]
    row = summarize(kept).iloc[0]
    assert row["seeds"] == 2 and row["epochs"] == "12" and row["seed_list"] == "1 2"


def test_seeds_gpu_settings_and_other_rows_never_supersede():
    ce, kd = _committed("ce"), _committed("kd", seeds=(1,))
    other_gpu = copy.deepcopy(ce[1])
    other_gpu["config"]["gpu"] = {"amp": True}  # the same job's settings on a GPU: the same row's configuration
    other_gpu["created"] = "2999-01-01T00:00:00Z"
    external = {**copy.deepcopy(kd[0]), "role": "external", "config": None, "created": "2000-01-01T00:00:00Z"}
    kept, superseded = current(ce[:1] + [other_gpu] + kd + [external])
    assert superseded == [] and len(kept) == 4


def test_leaderboard_and_check_name_what_they_left_out(tmp_path):
    out = tmp_path / "results" / "robustness"
    new = _committed("ce")
    for r in new + [_older(new[0], 1, 6)]:
        write_record(out, r)
    proc = run_main("leaderboard", "--results", tmp_path / "results", "--suite", "robustness")
    assert proc.returncode == 0, proc.stderr
    assert "1 record(s)" in proc.stderr and "earlier configuration of their row" in proc.stderr
    assert "2 records ->" in proc.stdout
    board = (out / "leaderboard.md").read_text()
    row = next(line for line in board.splitlines() if line.startswith("| 1 | ce |"))
    assert "| 12 | 2 |" in row  # epochs 12 (not 6/12), 2 seeds (not 3)
    proc = run_main("check", "--suite", "robustness", "--results", tmp_path / "results", "--update-baseline")
    assert proc.returncode == 0, proc.stderr
    assert "earlier configuration of their row" in proc.stderr
    baseline = json.loads((out / "baseline.json").read_text())
    seeds = next(iter(baseline["rows"].values()))["seeds"]
    assert sorted(seeds) == ["1", "2"] and seeds["1"]["metrics"]["clean"] == new[0]["metrics"]["clean"]
