"""End to end: a tiny suite through the CLI, resume without retraining, and recovery from SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, run_main


def _records(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}


def test_tiny_suite_end_to_end_and_resume(tmp_path, tiny_run):
    proc, first = tiny_run.proc, tiny_run.seconds  # the session's run of the tiny suite through the CLI
    out = tiny_run.out
    recs = tiny_run.records()
    assert len(recs) == 6  # 2 teachers + 2 methods x 2 seeds
    for job_id, r in recs.items():
        assert r["job_id"] == job_id and r["schema"] == 1
        m = r["metrics"]
        for key in ("clean", "fgsm@0.1", "pgd@0.1", "apgd-dlr@0.1", "robust@0.1", "corruption/gaussian_noise/5",
                    "mca", "sweep@0.5"):
            assert 0.0 <= m[key] <= 1.0, key
        # the worst case is never above any single attack
        assert m["robust@0.1"] <= min(m["fgsm@0.1"], m["pgd@0.1"], m["apgd-dlr@0.1"], m["clean"])
        assert r["env"]["torch"] and r["config"]["seed"] == r["seed"]
    students = [r for r in recs.values() if r["role"] == "student"]
    assert {r["method"] for r in students} == {"ce", "kd"}
    assert all("transfer@0.1" in r["metrics"] for r in students if r["method"] == "kd")
    for name in ("summary.csv", "leaderboard.md", "plots/robust_vs_clean.png", "plots/accuracy_vs_eps.png"):
        assert (out / name).is_file(), name
    board = (out / "leaderboard.md").read_text()
    assert "| kd |" in board and "teacher (standard)" in board
    assert "[job 1/6" in proc.stderr  # progress with job i/n
    assert "robust@0.1" in proc.stdout  # ends with the summary table

    # a second run (on a copy, with the session's teachers) skips every job and retrains nothing
    out = tiny_run.copy_to(tmp_path / "out")
    tiny_run.copy_teachers(tmp_path / "cache")
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    t1 = time.perf_counter()
    proc2 = run_main("run", "--suite", tiny_run.suite, "--out", out, "--cache-dir", tmp_path / "cache")
    second = time.perf_counter() - t1
    assert proc2.returncode == 0, proc2.stderr
    assert "0 jobs run, 6 already done" in proc2.stdout
    assert "training teacher" not in proc2.stderr
    assert {p: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")} == mtimes
    assert second < first


def test_sigkill_mid_run_then_resume_gives_the_same_records(tmp_path, tiny_run, tiny_teachers):
    """Killed after its first record, then resumed (the teachers come from the session's cache): the records of
    the session's uninterrupted run, number for number. On one seed of kd (its teacher's job, then the student's:
    the kill lands in the student's job, which the resumed run computes again)."""
    out = tmp_path / "killed"
    part = ("--methods", "kd", "--seeds", "1")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", "run", "--suite", str(tiny_run.suite), "--out",
                             str(out), *part], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    # wait until at least one record exists, then kill without warning
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "records").glob("*.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = list((out / "records").glob("*.json"))
    assert len(partial) == 1
    for p in partial:  # every record on disk is whole
        json.loads(p.read_text())

    resumed = run_main("run", "--suite", tiny_run.suite, "--out", out, "--quiet", *part)
    assert resumed.returncode == 0 and "1 jobs run, 1 already done" in resumed.stdout, resumed.stdout + resumed.stderr
    got = _records(out)
    want = {job_id: rec for job_id, rec in tiny_run.records().items()
            if rec["seed"] == 1 and (rec["role"] == "teacher" or rec["method"] == "kd")}
    assert set(got) == set(want) and len(got) == 2
    assert not list((out / "records").glob(".*.tmp"))
    for job_id in want:  # same config, same seed, same CPU: the same numbers
        assert got[job_id]["metrics"] == want[job_id]["metrics"], job_id
