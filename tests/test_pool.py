"""The local executor's worker processes (`run --workers N`, pool_executor.py): the same job ids and bit-identical
records as one job at a time in this process with the same threads; a job failing in a worker is recorded with
the worker's traceback and the rest goes on; a killed driver leaves no worker behind; Ctrl-C keeps finished
records and a re-run completes the rest."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import interruptible, ROOT, TINY_SUITE, run_main
from kdbench.execution import job_cost, pool_executor
from kdbench.execution.resources import local_workers
from kdbench.methods import METHODS, Distiller
from kdbench.execution.driver import run_suite
from kdbench.suite.load import load_suite


def _records(out):
    return {json.loads(p.read_text())["job_id"]: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}


# spawned workers (the start method where a job has several threads, or CUDA) take the same path as forked ones
# but their start; they run with the slow tests
@pytest.mark.parametrize("how", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_workers_give_the_records_of_one_process_with_the_same_threads(tmp_path, tiny_run, monkeypatch, how):
    """Two workers against the session's run of the tiny suite (one job at a time in one process, one thread)."""
    monkeypatch.setattr(pool_executor, "start_method", lambda device, threads: how)
    suite = load_suite(str(tiny_run.suite))  # 2 teachers + ce, kd x 2 seeds
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    lines = []
    two = run_suite(suite, tmp_path / "two", cpu, tmp_path / "cache-two", workers=2, threads=1,
                    stream=type("S", (), {"write": lambda self, s: lines.append(s), "flush": lambda self: None})())
    assert torch.get_num_threads() == threads  # the run leaves this process's threads as they were
    assert (two.ran, two.failed) == (6, [])
    got, want = _records(tmp_path / "two"), tiny_run.records()
    assert set(got) == set(want) and len(got) == 6
    for job_id, rec in want.items():
        for key in ("metrics", "flags", "flag_evidence", "train_history", "teacher", "student", "config"):
            assert got[job_id][key] == rec[key], (job_id, key)
        assert got[job_id]["env"]["threads"] == rec["env"]["threads"] == 1
    text = "".join(lines)
    assert "2 workers" in text and f"2 worker processes ({how}ed)" in text and "[job 6/6 done" in text
    assert "2 teacher(s) to train first" in text
    # each teacher was trained once, by a worker, and cached by the driver: the same checkpoints
    trained = sorted((tiny_run.cache / "teachers").glob("*.pt"))
    assert len(trained) == 2
    for path in trained:
        mine = torch.load(tmp_path / "cache-two" / "teachers" / path.name, weights_only=True)
        theirs = torch.load(path, weights_only=True)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    # resume: nothing left, no worker started
    again = run_suite(suite, tmp_path / "two", cpu, tmp_path / "cache-two", quiet=True, workers=2, threads=1)
    assert (again.ran, again.skipped) == (0, 6)


class _FailsInWorker(Distiller):
    """Raises on the first step (registered by this test module: the workers get it by reference)."""

    teacher_kind = None
    uses_teacher_logits = False

    def losses(self, batch):
        raise RuntimeError(f"boom in pid {os.getpid()}")


@pytest.fixture
def failing_method():
    METHODS.add("test-fails-in-worker", _FailsInWorker)
    yield
    del METHODS._entries["test-fails-in-worker"]


def test_a_job_failing_in_a_worker_is_recorded_and_the_rest_completes(tmp_path, failing_method):
    doc = TINY_SUITE.replace("seeds = [1, 2]", "seeds = [1]").replace("kd = {}", "test-fails-in-worker = {}")
    suite = tmp_path / "suite.toml"
    suite.write_text(doc)
    out = tmp_path / "out"
    proc = run_main("run", "--suite", suite, "--out", out, "--workers", "2")
    assert proc.returncode == 1
    assert "1 failed" in proc.stdout and "FAILED test-fails-in-worker" in proc.stderr
    assert [r["method"] for r in _records(out).values()] == ["ce"]
    (failure,) = (out / "failures").glob("*.json")
    info = json.loads(failure.read_text())
    assert info["reason"].startswith("RuntimeError: boom in pid ")
    assert int(info["reason"].rsplit(" ", 1)[1]) != os.getpid()  # it ran in a worker process
    assert "losses" in (out / "failures" / info["traceback"]).read_text()  # the worker's own traceback


def _kdbench(*args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "kdbench", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)


def _children(pid: int) -> list[int]:
    try:
        text = open(f"/proc/{pid}/task/{pid}/children").read()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for_record(out, proc, timeout=120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not list((out / "records").glob("*.json")):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads process trees from /proc (Linux)")
def test_a_killed_driver_leaves_no_worker_and_a_rerun_completes(tmp_path, tiny_suite, tiny_teachers):
    out = tmp_path / "out"
    proc = _kdbench("run", "--suite", tiny_suite, "--out", out, "--workers", "2", "--quiet")
    _wait_for_record(out, proc)
    workers = _children(proc.pid)
    assert len(workers) >= 2  # the workers (and, when spawned, multiprocessing's resource tracker)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)]
    partial = _records(out)
    assert 1 <= len(partial) < 6
    again = run_main("run", "--suite", tiny_suite, "--out", out, "--workers", "2", "--quiet")
    assert again.returncode == 0 and f"{6 - len(partial)} jobs run, {len(partial)} already done" in again.stdout
    assert set(_records(out)) >= set(partial) and len(_records(out)) == 6


def test_ctrl_c_keeps_finished_records_and_stops_the_workers(tmp_path, tiny_suite, tiny_teachers):
    out = tmp_path / "out"
    seeds = ["--seeds", "1,2,3"]  # 9 jobs, the teacher of seed 3 trained here: a run the signal can stop
    proc = _kdbench("run", "--suite", tiny_suite, "--out", out, "--workers", "2", *seeds)
    _wait_for_record(out, proc)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted:" in err and "Traceback" not in err
    assert not [p for p in workers if _alive(p)]
    kept = _records(out)
    assert 1 <= len(kept) < 9 and not list((out / "records").glob(".*.tmp"))
    again = run_main("run", "--suite", tiny_suite, "--out", out, "--workers", "2", "--quiet", *seeds)
    assert again.returncode == 0 and len(_records(out)) == 9


def test_workers_are_forked_only_where_that_is_safe(monkeypatch):
    monkeypatch.setattr(pool_executor.sys, "platform", "linux")
    assert pool_executor.start_method("cpu", 1) == "fork"
    assert pool_executor.start_method("cpu", 2) == "spawn"  # OpenMP threads do not survive a fork
    assert pool_executor.start_method("cuda", 1) == "spawn"
    gate = threading.Event()
    other = threading.Thread(target=gate.wait)
    other.start()
    try:
        assert pool_executor.start_method("cpu", 1) == "spawn"  # another thread may hold a lock
    finally:
        gate.set()
        other.join()
    monkeypatch.setattr(pool_executor.sys, "platform", "darwin")
    assert pool_executor.start_method("cpu", 1) == "spawn"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks")
def test_a_forked_worker_does_not_keep_the_results_lock(tmp_path):
    from kdbench.execution.safety import LOCK_NAME, forget_locks, results_lock

    ready_r, ready_w = os.pipe()
    with results_lock(tmp_path):
        child = os.fork()
        if child == 0:  # as a forked worker starts: forget the inherited lock, then keep working
            forget_locks()
            os.write(ready_w, b"1")
            time.sleep(5)
            os._exit(0)
        assert os.read(ready_r, 1) == b"1"
    try:  # the driver is done: the lock must be free although the worker still runs
        fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_auto_workers_follow_the_cores_and_the_threads_per_job(monkeypatch):
    import kdbench.execution.resources as resources

    monkeypatch.setattr(resources, "usable_cores", lambda: 8)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert local_workers(None, cpu, 1) == 8 and local_workers("auto", cpu, 2) == 4
    assert local_workers("auto", cpu, 16) == 1  # never none
    assert local_workers(None, cuda, 1) == 1  # one GPU is not shared unless asked
    assert local_workers(3, cuda, 1) == 3


def test_worker_flags_are_checked(tmp_path, tiny_suite):
    for bad in ("0", "-1", "two"):
        proc = run_main("run", "--suite", tiny_suite, "--out", tmp_path / "out", "--workers", bad)
        assert proc.returncode == 2 and f"expected 'auto' or an integer >= 1, got '{bad}'" in proc.stderr
    proc = run_main("run", "--suite", tiny_suite, "--out", tmp_path / "out", "--executor", "ray", "--workers", "2")
    assert proc.returncode == 2 and "--workers only applies to --executor local" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_cpu_teacher_is_cached_per_thread_count(tiny_suite):
    """Threads change a CPU teacher's weights in the last bits: a teacher trained on 2 threads is never handed to
    a job that runs on 1 (its numbers would then depend on the cache's history)."""
    from kdbench.training.teacher_cache import teacher_config
    from kdbench.training.teachers import teacher_key

    job = next(j for j in load_suite(str(tiny_suite)).jobs() if not j.is_teacher and j.teacher_specs())
    spec = job.teacher_specs()[0]
    assert teacher_key(teacher_config(spec, job, 1)) != teacher_key(teacher_config(spec, job, 2))
    assert teacher_config(spec, job, 1)["threads"] == 1


def test_teacher_cost_counts_the_inner_attack_of_an_adversarial_teacher():
    """The pool trains the costliest teachers first (epochs x passes per step, counted on a stand-in), so the
    adversarial teacher, and with it the ARD/RSLAD students, start early and cheap jobs fill the end."""
    from kdbench.methods import TeacherSpec

    t = load_suite("robustness").train
    assert job_cost.teacher_cost(TeacherSpec("cnn-large", "standard", 1), t) == t.teacher_epochs
    assert job_cost.teacher_cost(TeacherSpec("cnn-large", "defensive", 1), t) == t.teacher_epochs
    adv = job_cost.teacher_cost(TeacherSpec("cnn-large", "adversarial", 1), t)
    assert adv == t.teacher_epochs * (1 + t.adv_steps)  # each step: the PGD steps, then the training pass
