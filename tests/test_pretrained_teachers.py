"""Teachers from elsewhere: ordinary training checkpoints load (weights found by their key, whatever else the
file holds); a pretrained teacher stands in only for the teacher kind it is declared as."""

import argparse

import numpy as np
import pytest
import torch

from conftest import PRETRAINED_SUITE
from kdbench.core.errors import KdbenchError
from kdbench.models.registry import ModelInput, build_model
from kdbench.training.pretrained import PretrainedTeacher, file_sha256, load_pretrained

INP = ModelInput((1, 8, 8), 10, (0.5,), (0.25,))


def _teacher():
    torch.manual_seed(5)
    return build_model("cnn-large", INP).eval()


def _training_checkpoint(model, weight_key: str, prefix: str = "module.") -> dict:
    """What a training script saves: weights under `weight_key` (DataParallel-prefixed), optimizer and
    scheduler state, epoch, accuracies (a Python and a numpy float) and the run's arguments."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(4, *INP.shape)).sum().backward()
    opt.step()
    opt.zero_grad()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [75, 90])
    return {"epoch": 120, "arch": "cnn-large", weight_key: {prefix + k: v for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "best_acc": 93.4,
            "best_robust_acc": np.float64(51.2), "args": argparse.Namespace(lr=0.1, epochs=120)}


def _load(path):
    pre = PretrainedTeacher("checkpoint", str(path), "cnn-large", file_sha256(path))
    return load_pretrained(pre, INP, "cpu", path.parent)


@pytest.mark.parametrize("weight_key", ["state_dict", "model", "net", "model_state_dict"])
def test_a_typical_training_checkpoint_loads(tmp_path, weight_key):
    model = _teacher()
    ckpt = _training_checkpoint(model, weight_key)
    torch.save(ckpt, tmp_path / "ckpt.pt")
    loaded = _load(tmp_path / "ckpt.pt")
    x = torch.rand(8, *INP.shape)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_weights_nested_one_level_deeper_and_compiled_prefixes(tmp_path):
    model = _teacher()
    torch.save({"epoch": 3, "model": {"state_dict": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()},
                                      "ema_decay": 0.999}}, tmp_path / "ckpt.pt")
    x = torch.rand(8, *INP.shape)
    torch.testing.assert_close(_load(tmp_path / "ckpt.pt")(x), model(x), rtol=0, atol=0)


def test_checkpoints_without_one_clear_set_of_weights_are_one_line_errors(tmp_path):
    sd = _teacher().state_dict()
    torch.save({"epoch": 3, "weights_ema": sd, "optimizer": {}}, tmp_path / "none.pt")
    with pytest.raises(KdbenchError, match=r"keeps none under a known key .*its keys: epoch, weights_ema, optim"):
        _load(tmp_path / "none.pt")
    torch.save({"model": sd, "net": sd}, tmp_path / "two.pt")
    with pytest.raises(KdbenchError, match=r"holds weights under 'model' and 'net'"):
        _load(tmp_path / "two.pt")


def test_a_pickled_object_is_still_refused_and_named(tmp_path):
    torch.save({"state_dict": _teacher().state_dict(), "net": torch.nn.Linear(2, 2)}, tmp_path / "obj.pt")
    with pytest.raises(KdbenchError) as e:
        _load(tmp_path / "obj.pt")
    msg = str(e.value)
    assert msg.startswith("cannot load checkpoint") and "torch.nn.modules.linear.Linear" in msg
    assert "weights_only=True" in msg and "\n" not in msg


# ---- what a pretrained teacher stands in for ------------------------------------------------------------------

def _table(name: str, kind: str) -> str:
    return f'{{ checkpoint = "{name}.pt", arch = "cnn-large", kind = "{kind}" }}'


def _suite(tmp_path, teacher: str, methods: str):
    from kdbench.suite.load import load_suite

    for name in ("a", "b"):
        if not (tmp_path / f"{name}.pt").exists():
            torch.manual_seed(ord(name))
            torch.save(build_model("cnn-large", INP).state_dict(), tmp_path / f"{name}.pt")
    doc = PRETRAINED_SUITE.format(teacher=teacher, methods=methods, seeds="[1, 2]")
    (tmp_path / "pre.toml").write_text(doc)
    return load_suite(str(tmp_path / "pre.toml"))


@pytest.mark.parametrize("kind,methods", [
    ("standard", 'kd = {}'),
    ("adversarial", 'kd = { teacher = "adversarial" }'),
    ("adversarial", 'ard = {}\nrslad = {}'),
    ("standard", 'ce = {}\nhierarchical = {}'),
])
def test_one_pretrained_teacher_stands_in_for_one_teacher_of_its_declared_kind(tmp_path, kind, methods):
    suite = _suite(tmp_path, _table("a", kind), methods)
    for job in suite.jobs():
        for spec in job.teacher_specs():
            assert job.stand_in(spec) == suite.pairs[0].pretrained and job.stand_in(spec).kind == kind
    assert sum(j.is_teacher for j in suite.jobs()) == 1  # one reference row for the loaded teacher


@pytest.mark.parametrize("teacher,methods,message", [
    (_table("a", "standard"), "ard = {}",
     "methods.ard with pairs.0.: ard asks for 1 adversarial teacher, the pair declares 1 standard teacher"),
    (_table("a", "adversarial"), "kd = {}", r"kd asks for 1 standard teacher, .*methods\.kd\.teacher"),
    (_table("a", "standard"), "multi-teacher = {}", "multi-teacher asks for 2 standard teachers, the pair "
                                                    "declares 1 standard teacher"),
    (f'[{_table("a", "standard")}, {_table("b", "standard")}]', "multi-teacher = { members = 3 }",
     "asks for 3 standard teachers, the pair declares 2"),
    (f'[{_table("a", "standard")}, {_table("b", "standard")}]', "kd = {}", "kd asks for 1 standard teacher"),
    (f'[{_table("a", "standard")}, {_table("b", "standard")}]', 'multi-teacher = { archs = ["cnn-large"] }',
     "asks for a teacher of architecture 'cnn-large'"),
    (_table("a", "defensive"), "defensive = {}", "defensive cannot use a pretrained teacher: its teacher is "
                                                 "trained with softmax at the method's temperature T"),
    (_table("a", "standard"), 'defensive = { teacher = "standard" }', "defensive cannot use a pretrained"),
    (_table("a", "defensive"), 'kd = { teacher = "defensive" }', None),  # no kind parameters asked: it fits
])
def test_every_other_combination_is_an_error_at_suite_load(tmp_path, teacher, methods, message):
    if message is None:
        _suite(tmp_path, teacher, methods)
        return
    with pytest.raises(KdbenchError, match=message) as e:
        _suite(tmp_path, teacher, methods)
    assert "\n" not in str(e.value)


def test_methods_picked_on_the_command_line_are_checked_too(tmp_path):
    from conftest import run_main

    _suite(tmp_path, _table("a", "standard"), "kd = {}")
    out = tmp_path / "out"
    proc = run_main("run", "--suite", tmp_path / "pre.toml", "--methods", "kd,defensive", "--out", out, "--quiet")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "defensive cannot use a pretrained teacher" in proc.stderr
    assert not out.exists()


def test_multi_teacher_distils_from_each_teacher_of_a_list(tmp_path):
    from kdbench.records.store import load_records
    from kdbench.execution.driver import run_suite
    from kdbench.execution.run_progress import Progress
    from kdbench.training.teacher_cache import get_teacher
    from kdbench.execution.workspace import Workspace
    from kdbench.suite.load import with_overrides

    suite = _suite(tmp_path, f'[{_table("a", "standard")}, {_table("b", "standard")}]', "multi-teacher = {}\nce = {}")
    job = next(j for j in suite.jobs() if j.method == "multi-teacher")
    ws = Workspace(torch.device("cpu"), tmp_path / "cache")
    loaded = [get_teacher(spec, job, ws, Progress(1, quiet=True)) for spec in job.teacher_specs()]
    x = torch.rand(16, *INP.shape)
    for model, name in zip(loaded, ("a", "b")):
        own = build_model("cnn-large", INP)
        own.load_state_dict(torch.load(tmp_path / f"{name}.pt", weights_only=True))
        torch.testing.assert_close(model(x), own.eval()(x))
    assert not torch.allclose(loaded[0](x), loaded[1](x))  # two teachers, not one twice

    res = run_suite(with_overrides(suite, seeds=[1]), tmp_path / "out", torch.device("cpu"),
                    cache_dir=tmp_path / "cache", quiet=True)
    assert not res.failed, res.failed
    records = load_records(tmp_path / "out")[0]
    assert sorted(r["method"] for r in records) == ["ce", "multi-teacher", "teacher:pretrained",
                                                    "teacher:pretrained"]
    mt = next(r for r in records if r["method"] == "multi-teacher")
    assert [p["ref"] for p in mt["teacher"]["pretrained_all"]] == [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
