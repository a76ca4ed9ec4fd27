"""What parallel workers share and hold: `--workers auto` runs no more workers than the available memory holds
(and says so), `--workers N` is taken as given; transfer examples are crafted once per (teacher, seed,
evaluation) for the whole run, not once per worker."""

import json
import os
import re

import pytest
import torch

from conftest import TINY_SUITE, run_main
from kdbench.execution import resources
from kdbench.execution.driver import run_suite
from kdbench.suite.load import load_suite

GIB = 2**30


def test_worker_memory_counts_data_models_and_activations():
    small = resources.worker_memory(load_suite("robustness"))
    big = resources.worker_memory(load_suite("robustness-cifar10"))  # shapes only: no CIFAR files needed
    assert small.total < 1 * GIB and small.base == resources.PROCESS_BASE
    # WRN-34-10 teacher (46M parameters), 50,000 + 10,000 CIFAR images, PGD at batch 500 through WRN-34-10
    assert big.models > 46e6 * 4 and big.data > 60_000 * 3072 * 4 and big.activations > 8 * GIB
    assert big.total > 10 * small.total


def test_worker_memory_counts_one_transfer_set_per_teacher_and_seed():
    """As many transfer sets as the run crafts (one per transfer_cache key), each seed counted once."""
    from kdbench.execution.estimate import data_shape
    from kdbench.execution.transfer_cache import needs_transfer, transfer_key

    suite = load_suite("robustness")
    keys = {transfer_key(j, 1) for j in suite.jobs() if needs_transfer(j)}
    ds = data_shape(suite)
    one_set = ds.n_test * 4 * ds.shape[0] * ds.shape[1] * ds.shape[2] * len(suite.eval.eps)
    assert len(keys) == 3 * len(suite.seeds)  # standard, adversarial and defensive teachers at each seed
    assert resources.worker_memory(suite).transfer == len(keys) * one_set


@pytest.mark.parametrize("available", [400 * GIB, 100 * GIB, 40 * GIB, 1 * GIB, 1])
def test_auto_workers_are_capped_by_the_available_memory(available):
    suite = load_suite("robustness-cifar10")
    need = resources.worker_memory(suite).total
    assert 12 * GIB < need < 20 * GIB
    workers, note = resources.memory_capped_workers(16, suite, available)
    want = min(16, max(1, int(available * resources.MEMORY_SHARE // need)))
    assert workers == want and (want == 16) == (available == 400 * GIB)  # 100 GiB: not 16 WRN-34-10 workers
    if want < 16:
        assert f"memory for {want} of the 16 the cores allow" in note and "--workers N overrides" in note
        assert f"{available / GIB:.1f} GiB available" in note
    assert resources.memory_capped_workers(1, suite, available) == (1, "")  # one worker: nothing to cap


def test_available_memory_reads_the_system():
    avail = resources.available_memory()
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # this machine's memory (POSIX)
    assert isinstance(avail, int) and 0 < avail <= total, (avail, total)


def _progress_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("suite tiny:"))


def test_the_progress_line_says_why_and_workers_n_overrides(tmp_path, tiny_suite, monkeypatch):
    monkeypatch.setattr(resources, "usable_cores", lambda: 4)
    monkeypatch.setattr(resources, "available_memory", lambda: 600 * 2**20)  # room for one worker
    args = ["run", "--suite", tiny_suite, "--methods", "ce", "--cache-dir", tmp_path / "cache"]
    proc = run_main(*args, "--out", tmp_path / "auto")
    assert proc.returncode == 0, proc.stderr
    line = _progress_line(proc.stderr)
    assert re.search(r"device cpu, 1 worker \(auto: memory for 1 of the 4 the cores allow, ~0\.\d GiB per worker "
                     r"of 0\.6 GiB available; --workers N overrides\)$", line), line

    proc = run_main(*args, "--out", tmp_path / "given", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert _progress_line(proc.stderr).endswith("device cpu, 2 workers")

    monkeypatch.setattr(resources, "available_memory", lambda: 64 * GIB)
    proc = run_main(*args, "--out", tmp_path / "roomy")
    assert re.search(r"2 workers \(auto: by the cores; ~0\.\d GiB per worker of 64\.0 GiB available\)$",
                     _progress_line(proc.stderr))


TRANSFER_SUITE = TINY_SUITE.replace("seeds = [1, 2]", "seeds = [1]").replace(
    "kd = {}", "kd = {}\nnoise-kd = {}\ndtkd = {}\nhierarchical = {}").replace(
    'attacks = ["fgsm", "pgd", "apgd-dlr", "apgd-ce-l2"]\neps = [0.1]', 'attacks = ["fgsm"]\neps = [0.1, 0.2]\ntransfer = true'
).replace("eps_l2 = [0.25]\n", "").replace("[eval.certify]\nsigma = [0.25]\nn0 = 8\nn = 64\nalpha = 0.01\n", "")


def test_transfer_examples_are_crafted_once_for_the_whole_run(tmp_path, tiny_run):
    """Four students of one teacher and seed on two workers: one set of transfer examples, crafted by one task
    before the students start; no student crafts its own; the same numbers as one process crafting them. (The
    teacher is the tiny suite's, from the session's cache.)"""
    for cache in ("cache-one", "cache-two"):
        tiny_run.copy_teachers(tmp_path / cache)
    path = tmp_path / "suite.toml"
    path.write_text(TRANSFER_SUITE)
    suite = load_suite(str(path))
    cpu = torch.device("cpu")
    lines = []
    stream = type("S", (), {"write": lambda self, s: lines.append(s), "flush": lambda self: None})()
    two = run_suite(suite, tmp_path / "two", cpu, tmp_path / "cache-two", stream=stream, workers=2, threads=1)
    assert not two.failed and two.ran == 6  # teacher reference + ce + 4 students
    assert "1 set(s) of transfer examples to craft" in "".join(lines)
    assert len(list((tmp_path / "cache-two" / "transfer").glob("*.pt"))) == 1
    records = [json.loads(p.read_text()) for p in (tmp_path / "two" / "records").glob("*.json")]
    students = [r for r in records if r["role"] == "student" and r["teacher"]]
    assert len(students) == 4 and all("transfer@0.2" in r["metrics"] for r in students)
    assert not [r["method"] for r in students if "transfer" in r["eval_timings"]]  # none crafted its own
    assert two.profile["eval: transfer"] > 0  # crafted, once, by the transfer task

    threads = torch.get_num_threads()
    one = run_suite(suite, tmp_path / "one", cpu, tmp_path / "cache-one", quiet=True, workers=1, threads=1)
    assert one.ran == 6
    assert torch.get_num_threads() == threads  # the jobs ran on one thread here; the run gives the setting back
    want = {json.loads(p.read_text())["job_id"]: json.loads(p.read_text())["metrics"]
            for p in (tmp_path / "one" / "records").glob("*.json")}
    for r in students:
        assert {k: v for k, v in r["metrics"].items() if k.startswith(("transfer", "robust"))} == \
               {k: v for k, v in want[r["job_id"]].items() if k.startswith(("transfer", "robust"))}
