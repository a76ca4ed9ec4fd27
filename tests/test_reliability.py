"""Failing jobs, the results-folder lock, pre-flight checks, safe checkpoint loading and `reproduce`."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY_SUITE, run_main
from kdbench.__main__ import main
from kdbench.core.errors import KdbenchError
from kdbench.methods import METHODS, Distiller
from kdbench.models.checkpoints import load_state_dict
from kdbench.execution.safety import results_lock


class _Explodes(Distiller):
    """Raises on the first step."""

    teacher_kind = None
    uses_teacher_logits = False

    def losses(self, batch):
        raise RuntimeError("boom")


class _Diverges(Distiller):
    """Loss is NaN."""

    teacher_kind = None
    uses_teacher_logits = False

    def losses(self, batch):
        return {"nan": self.student(batch.x).sum() * float("nan")}


@pytest.fixture
def broken_methods():
    METHODS.add("test-explodes", _Explodes)
    METHODS.add("test-diverges", _Diverges)
    yield
    for name in ("test-explodes", "test-diverges"):
        del METHODS._entries[name]


def _suite_file(tmp_path, methods: str, seeds="[1]") -> Path:
    doc = TINY_SUITE.replace("[methods]\nce = {}\nkd = {}", f"[methods]\n{methods}").replace("seeds = [1, 2]",
                                                                                            f"seeds = {seeds}")
    path = tmp_path / "suite.toml"
    path.write_text(doc)
    return path


def test_failed_jobs_are_recorded_and_the_rest_completes(tmp_path, broken_methods, capsys):
    suite = _suite_file(tmp_path, 'test-explodes = {}\nce = {}\ntest-diverges = {}')
    out = tmp_path / "out"
    rc = main(["run", "--suite", str(suite), "--out", str(out), "--quiet"])
    assert rc == 1
    records = list((out / "records").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["method"] == "ce"
    failures = sorted((out / "failures").glob("*.json"))
    reasons = sorted(json.loads(p.read_text())["reason"] for p in failures)
    assert len(reasons) == 2
    assert reasons[0].startswith("RuntimeError: boom")
    assert reasons[1].startswith("TrainingDiverged: loss is not finite")
    for p in failures:
        info = json.loads(p.read_text())
        assert info["config"]["method"].startswith("test-")
        assert "Traceback" in (out / "failures" / info["traceback"]).read_text()
    captured = capsys.readouterr()
    assert "2 failed" in captured.out and "FAILED test-explodes" in captured.err


def test_fail_fast_stops_at_the_first_failure(tmp_path, broken_methods):
    suite = _suite_file(tmp_path, 'test-explodes = {}\nce = {}')
    out = tmp_path / "out"
    assert main(["run", "--suite", str(suite), "--out", str(out), "--quiet", "--fail-fast"]) == 1
    assert not list((out / "records").glob("*.json"))
    assert len(list((out / "failures").glob("*.json"))) == 1


def test_a_second_run_on_a_locked_folder_exits_with_a_clear_message(tmp_path, tiny_suite):
    out = tmp_path / "out"
    out.mkdir()
    # this test holds the lock; the run opens the lock file anew, and an flock belongs to an open file, so it is
    # refused as another process's run would be (test_lock_is_released_when_the_holder_exits: another process)
    with results_lock(out):
        proc = run_main("run", "--suite", tiny_suite, "--out", out, "--quiet")
    assert proc.returncode == 2
    assert "is in use by another kdbench run" in proc.stderr and str(os.getpid()) in proc.stderr
    assert not (out / "records").exists()


HOLD_LOCK = """
import sys, time
from kdbench.execution.safety import results_lock
with results_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_lock_is_released_when_the_holder_exits(tmp_path):
    """Another process holds the lock: refused while it lives, free as soon as it dies, even by SIGKILL (no
    clean-up code runs); a lock left by a `with` block is free again too."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(KdbenchError, match=rf"is in use by another kdbench run \(pid {holder.pid}\)"):
            with results_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with results_lock(out):  # the lock died with its holder
        pass
    with results_lock(out):  # and the `with` block above released it
        pass


def test_unwritable_output_folder_fails_before_training(tmp_path, tiny_suite):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    t0 = time.perf_counter()
    proc = run_main("run", "--suite", tiny_suite, "--out", blocker / "out", "--quiet")  # in this process: no start-up
    assert proc.returncode == 2
    assert "is not writable" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "cache" / "teachers").exists()


def test_full_output_folder_fails_before_training(tmp_path, tiny_suite, monkeypatch, capsys):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1024))
    assert main(["run", "--suite", str(tiny_suite), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "MiB free" in capsys.readouterr().err
    assert not (tmp_path / "out" / "records").exists()


class _Payload:
    """Unpickling this runs os.system: a checkpoint must never be unpickled with code execution."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_and_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"weight": _Payload(marker)}, f)
    torch.save({"weight": _Payload(marker)}, tmp_path / "evil2.pt")
    for p in (path, tmp_path / "evil2.pt"):
        with pytest.raises(KdbenchError, match="cannot load checkpoint"):
            load_state_dict(p, "cpu")
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(100)}, good)
    assert torch.equal(load_state_dict(good, "cpu")["w"], torch.ones(100))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:50])
    with pytest.raises(KdbenchError, match="cannot load checkpoint"):
        load_state_dict(bad, "cpu")


def test_reproduce_is_bit_for_bit_on_the_same_machine(tmp_path, tiny_run):
    """kd on seed 1 of the session's tiny run, re-run from its record alone (its teacher trained again)."""
    record = next(tiny_run.out / "records" / f"{job_id}.json" for job_id, r in tiny_run.records().items()
                  if r["method"] == "kd" and r["seed"] == 1)
    proc = run_main("reproduce", record, "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 differ" in proc.stdout

    # a tampered number is caught
    doc = json.loads(record.read_text())
    doc["metrics"]["clean"] = doc["metrics"]["clean"] - 0.01
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    proc = run_main("reproduce", tampered, "--quiet")
    assert proc.returncode == 1 and "clean" in proc.stdout

    # an edited config no longer matches its job id
    doc = json.loads(record.read_text())
    doc["config"]["seed"] = 99
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    proc = run_main("reproduce", edited, "--quiet")
    assert proc.returncode == 2 and "hashes to" in proc.stderr


def test_reproduce_refuses_a_record_of_an_older_evaluation_protocol(tmp_path):
    from kdbench.suite.jobs import PROTOCOL
    from kdbench.suite.load import load_suite

    suite = load_suite(str(_suite_file(tmp_path, "ce = {}")))
    job = suite.jobs()[0]
    assert job.config()["protocol"] == PROTOCOL
    old = {k: v for k, v in job.config().items() if k != "protocol"}  # records made before protocols existed
    record = {"schema": 1, "job_id": job.job_id, "suite": "tiny", "role": "teacher", "dataset": "digits",
              "method": "teacher:standard", "seed": 1, "metrics": {"clean": 1.0}, "flags": [], "config": old}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(record))
    proc = run_main("reproduce", path, "--quiet")
    assert proc.returncode == 2 and f"evaluation protocol 1; this kdbench computes protocol {PROTOCOL}" in proc.stderr


def test_reproduce_rejects_a_non_record(tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text("{\"hello\": 1}")
    proc = run_main("reproduce", junk)
    assert proc.returncode == 2 and "not a kdbench record" in proc.stderr


def test_a_poisoned_teacher_checkpoint_in_the_cache_fails_the_job_and_runs_no_code(tmp_path):
    """A teacher checkpoint is loaded as a plain state dict: a pickle that would run code is refused."""
    from kdbench.training.teacher_cache import teacher_config
    from kdbench.suite.load import load_suite
    from kdbench.training.teachers import teacher_key

    suite_path = _suite_file(tmp_path, "kd = {}")
    suite = load_suite(str(suite_path))
    job = next(j for j in suite.jobs() if not j.is_teacher)
    (spec,) = job.teacher_specs()
    cache = tmp_path / "poisoned-cache"
    planted = cache / "teachers" / f"{teacher_key(teacher_config(spec, job, 1))}.pt"  # 1 thread per job
    planted.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"weight": _Payload(marker)}, planted)

    out = tmp_path / "out"
    rc = main(["run", "--suite", str(suite_path), "--out", str(out), "--cache-dir", str(cache), "--quiet"])
    assert rc == 1
    assert not marker.exists()
    reasons = [json.loads(p.read_text())["reason"] for p in (out / "failures").glob("*.json")]
    assert reasons and all("cannot load checkpoint" in r for r in reasons)
    assert not list((out / "records").glob("*.json"))  # (a missing folder holds none)


def test_a_diverging_loss_names_its_first_non_finite_step_and_the_epoch_means_are_exact():
    from kdbench.suite.configs import TrainConfig
    from kdbench.training.loop import TrainingDiverged, fit

    w = torch.nn.Parameter(torch.ones(1))
    seen = []

    def losses(idx, progress):  # step 3 of epoch 2 is NaN; the rest are 0.25 * step number
        seen.append(len(seen) + 1)
        value = float("nan") if len(seen) == 7 else 0.25 * len(seen)
        return {"a": (w * 0 + value).sum(), "b": (w * 0).sum()}

    cfg = TrainConfig(batch_size=2, schedule="constant")
    history = fit(torch.nn.Linear(1, 1), [w], losses, 8, 1, cfg, 0, torch.device("cpu"))  # 4 steps
    assert history == [{"a": (0.25 + 0.5 + 0.75 + 1.0) / 4, "b": 0.0}]
    seen.clear()
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 3 \(a=nan, b=0\)"):
        fit(torch.nn.Linear(1, 1), [w], losses, 8, 3, cfg, 0, torch.device("cpu"))
