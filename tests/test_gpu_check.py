"""benchmarks/gpu_check.py in its tiny CPU mode, in two parts (the timings and AutoAttack's cost are left out to
keep the tests short): it covers every registered method (one registered here too) and attack, reports a method
whose loss is not finite as a failed check with exit code 1, runs the smoke suite, the corruptions and the
determinism check, writes its JSON, prints its table, and rejects bad arguments with one line and exit code 2."""

import json
import sys

import pytest
import torch
from conftest import ROOT

from kdbench.evaluation.attacks import ATTACKS
from kdbench.methods import METHODS, Distiller

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


class _NanLoss(Distiller):
    """A broken method: its loss is NaN."""

    teacher_kind = None
    uses_teacher_logits = False

    def losses(self, batch):
        return {"nan": self.student(batch.x).sum() * float("nan")}


@pytest.fixture
def nan_method():
    METHODS.add("nan-probe", _NanLoss, "a broken method")
    try:
        yield "nan-probe"
    finally:
        METHODS._entries.pop("nan-probe")


def test_tiny_mode_checks_every_method_and_reports_a_broken_one(tmp_path, capsys, nan_method):
    out = tmp_path / "check.json"
    threads = torch.get_num_threads()
    code = gpu_check.main(["--device", "cpu", "--out", str(out), "--settings", "bf16", "--quiet",
                           "--skip", "smoke", "timing", "autoattack", "corruptions", "determinism"])
    assert torch.get_num_threads() == threads  # it ran on one thread and gave the caller's setting back
    printed = capsys.readouterr().out
    assert code == 1  # the broken method fails the check
    results = json.loads(out.read_text())
    methods = {r["name"]: r for r in results["checks"] if r["section"] == "methods"}
    assert set(METHODS.names()) <= set(methods)
    assert {"teacher:standard", "teacher:adversarial", "teacher:defensive"} <= set(methods)
    assert not methods[nan_method]["ok"] and "not finite" in methods[nan_method]["detail"]
    assert all(r["ok"] for name, r in methods.items() if name != nan_method)
    attacks = {r["name"] for r in results["checks"] if r["section"] == "attacks"}
    assert attacks == set(ATTACKS.names())  # every registered attack, read from the registry
    assert "CUDA is not available" in printed and "FAIL" in printed
    assert results["estimate"]["from_flops"]["flops"] > 1e17  # robustness-cifar10 is a GPU-scale suite


def test_tiny_mode_end_to_end_passes(tmp_path, capsys):
    out = tmp_path / "check.json"
    code = gpu_check.main(["--device", "cpu", "--out", str(out), "--settings", "bf16", "--quiet",
                           "--skip", "methods", "attacks", "timing", "autoattack"])
    results = json.loads(out.read_text())
    assert code == 0, capsys.readouterr().out
    sections = {r["section"] for r in results["checks"]}
    assert sections == {"smoke suite", "corruptions", "determinism"}
    assert all(r["ok"] for r in results["checks"])


@pytest.mark.parametrize("args,message", [(["--skip", "nope"], "unknown section 'nope'"),
                                          (["--settings", "fp8"], "unknown setting 'fp8'"),
                                          (["--device", "tpu"], "unknown device 'tpu'")])
def test_bad_arguments_are_one_line_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--out", str(tmp_path / "x.json"), *args])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
