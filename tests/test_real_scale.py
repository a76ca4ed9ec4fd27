"""The real-scale suites: each -smoke variant runs end to end through the CLI on generated files of the
real dataset's layout (torchvision's MNIST idx files, its CIFAR pickles, CIFAR-10-C .npy files); the full
suites load and follow their protocol; `run --dry-run` prints the grid and a device-specific estimate."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_main
from fake_datasets import patch_cifar_checksums, write_cifar, write_cifar_c, write_mnist

from kdbench.records.store import load_records
from kdbench.suite.load import load_suite

EPS_8 = 8 / 255


def check_records(out, suite_name, corruptions_from=None):
    from kdbench.evaluation.cifar_c import with_cifar_c

    suite = with_cifar_c(load_suite(str(suite_name)), corruptions_from)
    records, bad = load_records(out)
    assert not bad and not (out / "failures").exists()
    assert {r["job_id"] for r in records} == {j.job_id for j in suite.jobs()}
    for r in records:
        assert r["student"]["macs"] > 0 and r["student"]["params"] > 0
        if r["teacher"] is not None:
            assert r["teacher"]["macs"] > r["student"]["macs"] or r["role"] == "teacher"
        assert 0.0 <= r["metrics"]["clean"] <= 1.0
    return records


# Every method's contract and training steps are tested at small size (test_methods.py, test_methods_robust.py,
# test_gpu_check.py), so a smoke run needs a few methods: here one for each way a job gets its teachers (none,
# one standard, several, one trained at a temperature, an adversarial one, an adversarial and a standard one), a
# layer-wise one (feature taps of the real architectures) and one that runs the teacher itself (no cached logits).
SMOKE_METHODS = ("ce", "kd", "multi-teacher", "defensive", "rslad", "mtard", "hierarchical", "noise-kd")


def smoke_subset(tmp_path, suite_name: str, methods) -> Path:
    """The built-in suite `suite_name` (same name, data, pairs, training and evaluation) with `methods` only."""
    import tomllib

    from kdbench.methods import METHODS

    doc = (ROOT / "benchmarks" / f"{suite_name}.toml").read_text()
    table = tomllib.loads(doc)["methods"]
    assert set(methods) <= set(table), set(methods) - set(table)
    head, rest = doc.split("\n[methods]\n")
    tail = rest[rest.index("\n["):]  # the tables after [methods]
    lines = [line for line in rest[:rest.index("\n[")].splitlines() if line.split("=")[0].strip() in methods]
    path = tmp_path / f"{suite_name}.toml"
    path.write_text(head + "\n[methods]\n" + "\n".join(lines) + "\n" + tail)
    subset = load_suite(str(path))
    assert [m.name for m in subset.methods] == [m for m in table if m in methods]
    full = load_suite(suite_name)
    assert (subset.name, subset.data, subset.pairs, subset.train, subset.eval) == \
        (full.name, full.data, full.pairs, full.train, full.eval)
    if methods != ("ce", "kd"):  # every teacher kind of the full suite
        kinds = lambda s: {t.kind for j in s.jobs() for t in j.teacher_specs()}  # noqa: E731
        assert kinds(subset) == kinds(full)
    if methods == SMOKE_METHODS:  # and both ways of getting teacher logits
        assert {METHODS.get(m).uses_teacher_logits for m in methods} == {True, False}
    return path


# The eight methods' run (about 20 s) runs with the slow tests; the fast loop keeps the ce and kd run of the same
# path (real files, a run, a dry run, `check --run`), and every method's training step in test_methods.py
@pytest.mark.parametrize("suite_name,folder,methods", [
    pytest.param("robustness-mnist-smoke", "MNIST", SMOKE_METHODS, marks=pytest.mark.slow),
    ("robustness-fashion-smoke", "FashionMNIST", ("ce", "kd")),  # the MNIST family's other files: the data path
])
def test_mnist_family_smoke_suites(tmp_path, monkeypatch, suite_name, folder, methods):
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path / "elsewhere"))  # not the user's data folder
    write_mnist(tmp_path / "data", folder)
    suite = smoke_subset(tmp_path, suite_name, methods)
    out = tmp_path / "out"
    r = run_main("run", "--suite", suite, "--data-dir", tmp_path / "data", "--out", out, "--device", "cpu",
                 "--quiet")
    assert r.returncode == 0, r.stderr
    records = check_records(out, suite)
    assert {r["dataset"] for r in records} == {load_suite(suite_name).data.name}
    assert all(f"pgd@{e}" in r["metrics"] for r in records for e in ("0.1", "0.2", "0.3"))

    dry = run_main("run", "--suite", suite, "--out", out, "--dry-run", "--device", "cpu", "--quiet")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count(" done") == len(records) and "ESTIMATE for this device (cpu" in dry.stdout

    # `check --run` finds the data where `run` does: without --data-dir the dataset is missing (exit 2)
    check = ("check", "--suite", suite, "--run", "--out", out, "--results", tmp_path / "results", "--device",
             "cpu", "--quiet", "--update-baseline")
    missing = run_main(*check)
    assert missing.returncode == 2 and f"dataset {load_suite(suite_name).data.name!r} is not in" in missing.stderr
    assert not (tmp_path / "results").exists()
    assert run_main(*check, "--data-dir", tmp_path / "data").returncode == 0
    r = run_main(*check[:-1], "--data-dir", tmp_path / "data")
    assert r.returncode == 0 and "0 regressed" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow  # WRN-34-10 teachers (46M parameters) trained and attacked on the CPU
def test_cifar10_smoke_suite_with_cifar_c(tmp_path, monkeypatch):
    """Of the suite's methods, the two whose wiring differs (the attack through the teacher; an adversarial and a
    standard teacher): with them every teacher kind of the suite is trained."""
    patch_cifar_checksums(monkeypatch)
    written = write_cifar(tmp_path / "data", 10)
    corruptions = write_cifar_c(tmp_path / "CIFAR-10-C", *written["test"])
    suite = smoke_subset(tmp_path, "robustness-cifar10-smoke", ("adaad", "mtard"))
    out = tmp_path / "out"
    # one process: the patched checksums do not reach worker processes
    r = run_main("run", "--suite", suite, "--data-dir", tmp_path / "data", "--corruptions-from",
                 corruptions, "--out", out, "--device", "cpu", "--quiet", "--workers", "1", "--cpus-per-job", "2")
    assert r.returncode == 0, r.stderr
    records = check_records(out, suite, corruptions)
    students = [r for r in records if r["role"] == "student"]
    assert {r["pair"] for r in students} == {"wrn-34-10->resnet18", "wrn-34-10->mobilenetv2"}
    assert {r["method"] for r in students} == {"adaad", "mtard"}
    assert {r["teacher_kind"] for r in records if r["role"] == "teacher"} == {"adversarial", "trades", "standard"}
    for rec in records:
        m = rec["metrics"]
        assert {"cifar-c/gaussian_noise/1", "cifar-c/fog/5", "cifar-c/mca", "corruption/contrast/5"} <= set(m)
        assert "pgd@0.0313725" in m and "robust@0.0313725" in m
        assert rec["config"]["eval"]["cifar_c"] == ["fog", "gaussian_noise"]  # part of the job id
    teacher = next(r for r in records if r["role"] == "teacher")
    assert 46_000_000 < teacher["student"]["params"] < 46_300_000
    assert teacher["student"]["macs"] == 6_658_906_368


def test_a_cifar_c_folder_enters_the_job_ids(tmp_path):
    """Records with and without CIFAR-C metrics never share an id: a re-run with (or without) the folder runs
    the jobs again instead of resuming records that lack (or carry) those metrics."""
    import dataclasses

    import numpy as np

    from kdbench.evaluation.cifar_c import with_cifar_c
    from kdbench.core.errors import KdbenchError

    folder = write_cifar_c(tmp_path / "C", np.zeros((4, 3, 32, 32), np.uint8), np.arange(4))
    suite = load_suite("robustness-cifar10-smoke")
    assert with_cifar_c(suite, None) is suite
    with_c = with_cifar_c(suite, folder)
    assert with_c.eval.cifar_c == ("fog", "gaussian_noise") and with_cifar_c(with_c, folder) == with_c
    assert {j.job_id for j in suite.jobs(False)}.isdisjoint(j.job_id for j in with_c.jobs(False))
    named = dataclasses.replace(suite, eval=dataclasses.replace(suite.eval, cifar_c=("snow",)))
    with pytest.raises(KdbenchError, match="has no snow.npy.*it has: fog, gaussian_noise"):
        with_cifar_c(named, folder)
    suite_file = tmp_path / "named.toml"  # a suite that names its CIFAR-C corruptions needs the folder
    suite_file.write_text((ROOT / "benchmarks" / "robustness-cifar10-smoke.toml").read_text()
                          .replace("[eval]", '[eval]\ncifar_c = ["fog"]'))
    r = run_main("run", "--suite", suite_file, "--out", tmp_path / "out")
    assert r.returncode == 2 and "give their folder with --corruptions-from" in r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_bad_corruptions_folder_is_one_line(tmp_path):
    out = tmp_path / "out"
    r = run_main("run", "--suite", "robustness-cifar10-smoke", "--corruptions-from", tmp_path / "nope", "--out", out)
    assert r.returncode == 2 and "does not exist" in r.stderr and r.stderr.count("\n") == 1
    assert not out.exists()


def test_augmented_training_is_deterministic_and_computes_teacher_logits_per_batch(tmp_path, monkeypatch):
    """With augmentation the teacher's logits come per batch (never the cached clean ones); same seed, same run."""
    from kdbench.execution import job as runner
    from kdbench.execution.job import run_job
    from kdbench.execution.run_progress import Progress
    from kdbench.execution.workspace import Workspace
    from kdbench.suite.load import parse_suite

    doc = {"dataset": "digits", "data": {"augment": ["random_crop", "horizontal_flip"]}, "seeds": [1],
           "train": {"epochs": 2, "teacher_epochs": 1, "batch_size": 256}, "methods": {"kd": {}},
           "eval": {"attacks": ["fgsm"], "eps": [0.1], "sweep_eps": [], "corruptions": [], "sanity": False,
                    "transfer": False}}
    job = parse_suite(doc).jobs()[-1]
    sizes = []
    original = runner.predict_logits
    monkeypatch.setattr(runner, "predict_logits", lambda m, x, *a: sizes.append(len(x)) or original(m, x, *a))
    a = run_job(job, Workspace(torch.device("cpu"), tmp_path / "c1"), Progress(1, True))
    n_train = 1438  # digits' training split
    assert n_train not in sizes  # the teacher never labelled the (clean) training set up front
    b = run_job(job, Workspace(torch.device("cpu"), tmp_path / "c2"), Progress(1, True))
    assert a["metrics"] == b["metrics"] and a["train_history"] == b["train_history"]
    sizes.clear()
    plain = run_job(parse_suite({**doc, "data": {}}).jobs()[-1], Workspace(torch.device("cpu"), tmp_path / "c3"),
                    Progress(1, True))
    assert n_train in sizes and plain["metrics"] != a["metrics"]


def test_real_suites_load_with_their_protocol():
    mnist, fashion = load_suite("robustness-mnist"), load_suite("robustness-fashion")
    for suite, name in ((mnist, "mnist"), (fashion, "fashion-mnist")):
        assert suite.data.name == name and suite.eval.eps == (0.1, 0.2, 0.3)
        assert [(p.teacher, p.student) for p in suite.pairs] == [("lenet-large", "lenet-small")]
    c10 = load_suite("robustness-cifar10")
    assert c10.data.name == "cifar10" and c10.data.augment == ("random_crop", "horizontal_flip")
    assert [(p.teacher, p.student) for p in c10.pairs] == [("wrn-34-10", "resnet18"), ("wrn-34-10", "mobilenetv2")]
    assert {m.name for m in c10.methods} == {"ard", "rslad", "at", "trades", "iad", "iad-ii", "adaad", "mtard", "dkd",
                                             "fitnets"}
    kinds = {m.name: m.teacher_kind for m in c10.methods}
    assert kinds["mtard"] == "trades" and kinds["at"] is None and kinds["trades"] is None
    assert math.isclose(c10.headline_eps, EPS_8) and c10.eval.eps == (c10.headline_eps,)
    assert c10.eval.pgd_steps == 20 and math.isclose(c10.eval.pgd_step_ratio * EPS_8, 2 / 255)
    t = c10.train
    assert (t.epochs, t.batch_size, t.optimizer, t.lr, t.momentum, t.weight_decay) == (300, 128, "sgd", 0.1, 0.9, 2e-4)
    assert math.isclose(t.adv_eps, EPS_8) and t.adv_steps == 10 and math.isclose(t.step_size(), 2 / 255)
    for smoke, full in (("robustness-cifar10-smoke", c10), ("robustness-mnist-smoke", mnist),
                        ("robustness-fashion-smoke", fashion)):
        s = load_suite(smoke)
        assert s.train.epochs == 1 and s.data.train_subset and s.data.test_subset
        names, full_names = [m.name for m in s.methods], [m.name for m in full.methods]
        assert s.pairs == full.pairs and names == [n for n in full_names if n in names]
        cifar_subset = smoke == "robustness-cifar10-smoke" and set(names) == {"ard", "rslad", "adaad", "mtard"}
        assert names == full_names or cifar_subset

    ref = json.loads((ROOT / "benchmarks" / "robustness-cifar10.reference.json").read_text())
    rows = [(r["method"], r["student"], r["checkpoint"]) for r in ref["reported"]]
    assert sorted(r for r in rows if r[0] in ("ard", "rslad")) == sorted(
        (m, p.student, ck) for m in ("ard", "rslad") for p in c10.pairs for ck in ("best", "last"))
    assert len(set(rows)) == len(rows) and {r[0] for r in rows} <= {m.name for m in c10.methods}
    # every method of the suite has the paper's numbers or a stated reason why not; never both
    for m in c10.methods:
        assert (m.name in {r[0] for r in rows}) != (m.name in ref.get("not_reported", {})), m.name
    assert all(isinstance(v, str) and len(v) > 40 for v in ref.get("not_reported", {}).values())
    for r in ref["reported"]:  # a row beyond the RSLAD paper's table names its own source and its status
        if r["method"] not in ("ard", "rslad"):
            assert r["source"] and isinstance(r["verified"], bool), r
    assert ref["numbers_source"]["where"] and ref["numbers_source"]["compare_with"]
    assert set(ref["metrics"]) == {"Clean", "FGSM", "PGD-SAT", "PGD-TRADES", "CW-inf", "AA"}
    for r in ref["reported"]:  # percentages, and no attack stronger than AutoAttack, no attack above clean
        acc = [r[k] for k in ("Clean", "FGSM", "PGD-SAT", "CW-inf", "AA")]
        assert all(isinstance(a, float) and 0 < a < 100 for a in acc)
        assert acc == sorted(acc, reverse=True) and r["PGD-SAT"] <= r["PGD-TRADES"] <= r["FGSM"], r


# The grid, the labels and the format of the estimate do not depend on the times measured: the fast loop checks
# them with stand-in timings; measuring WRN-34-10 (46M parameters) on the CPU takes about a minute, so the
# measured variant runs with the slow tests (the measurement itself is run in the fast loop on LeNets, by the
# fashion smoke suite's dry run in test_mnist_family_smoke_suites).
@pytest.mark.parametrize("timings", ["stand-in", pytest.param("measured", marks=pytest.mark.slow)])
def test_dry_run_of_the_cifar10_suite(tmp_path, monkeypatch, timings):
    from kdbench.execution import estimate

    measured = []

    def stand_in(arch, ds, batch, device, eval_batch=None) -> dict:
        """What `estimate.measure_arch` returns (seconds per example), without timing anything."""
        measured.append(arch)
        return {"fb": 1e-3, "f": 3e-4, "afb": 8e-4, "af": 2e-4, "params": 1_000_000}

    if timings == "stand-in":
        monkeypatch.setattr(estimate, "measure_arch", stand_in)
    out = tmp_path / "out"
    r = run_main("run", "--suite", "robustness-cifar10", "--dry-run", "--device", "cpu", "--out", out)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    jobs = [ln for ln in lines if ln.endswith("to run")]
    # teachers: adversarial (ard, rslad, iad, adaad), trades (mtard's robust one), standard (mtard, dkd, fitnets)
    n_methods = len(load_suite("robustness-cifar10").methods)
    assert len(jobs) == 3 + 2 * n_methods and any("teacher wrn-34-10 (adversarial)" in ln for ln in jobs)
    assert any("teacher wrn-34-10 (trades)" in ln for ln in jobs)
    assert any("rslad wrn-34-10->mobilenetv2" in ln and " 300 " in ln for ln in jobs)
    assert "50000 train / 10000 test" in r.stdout and "391 steps/epoch" in r.stdout
    assert "ESTIMATE for this device (cpu, CPU)" in r.stdout and "CPU hours" in r.stdout
    assert "measuring wrn-34-10" in r.stderr
    assert not out.exists()  # nothing run, nothing written
    if timings == "stand-in":  # every architecture measured once, and the estimate built from those times
        assert measured == ["mobilenetv2", "resnet18", "wrn-34-10"]
        assert "1,000,000 params     1.000 ms /    0.300 ms" in r.stdout
