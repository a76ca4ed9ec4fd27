"""Architectures (shapes, stages, parameter and MAC counts) and teachers from elsewhere (a user's state dict,
a RobustBench model through a fake loader)."""

import json
import sys
import types

import pytest
import torch
from torch import nn

from conftest import PRETRAINED_SUITE
from kdbench.core.errors import KdbenchError
from kdbench.models.registry import MODELS, ModelInput, build_model, count_macs, count_params

# arch -> (input shape, parameter range for 10 classes)
ARCHS = {
    "lenet-small": ((1, 28, 28), (55_000, 70_000)),
    "lenet-large": ((1, 28, 28), (300_000, 330_000)),
    "resnet18": ((3, 32, 32), (11_000_000, 11_300_000)),
    "preact-resnet18": ((3, 32, 32), (11_000_000, 11_300_000)),
    "resnet20": ((3, 32, 32), (260_000, 280_000)),
    "wrn-16-4": ((3, 32, 32), (2_700_000, 2_800_000)),
    "mobilenetv2": ((3, 32, 32), (2_200_000, 2_400_000)),
}


def inp(shape, k=10):
    return ModelInput(shape, k, (0.5,) * shape[0], (0.25,) * shape[0])


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_forward_stages_shapes_and_sizes(arch):
    shape, (lo, hi) = ARCHS[arch]
    torch.manual_seed(0)
    model = build_model(arch, inp(shape, 7)).eval()
    x = torch.rand(2, *shape)
    with torch.no_grad():
        logits, feats = model.forward_stages(x)
        torch.testing.assert_close(model(x), logits)
    assert logits.shape == (2, 7)
    assert len(feats) >= 3 and all(f.dim() == 4 and f.shape[0] == 2 for f in feats)
    assert feats[-1].shape[-1] <= feats[0].shape[-1]  # deeper stages are not larger
    model10 = build_model(arch, inp(shape))
    assert lo <= count_params(model10) <= hi, count_params(model10)
    assert count_macs(model10, shape) > count_params(model10) / 2
    assert "normalize.mean" in model10.state_dict()  # normalization lives inside the model


def test_wrn_34_10_builds_with_the_usual_size():
    model = build_model("wrn-34-10", inp((3, 32, 32)))
    assert 46_000_000 <= count_params(model) <= 46_300_000  # 46.16M, as usually quoted
    keys = model.state_dict()
    for key in ("conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight",
                "block3.layer.4.conv2.weight", "bn1.running_mean", "fc.weight"):
        assert key in keys  # the TRADES / RSLAD parameter names


def test_real_architectures_are_registered_and_listed():
    for arch in ("resnet18", "preact-resnet18", "wrn-34-10", "wrn-16-4", "mobilenetv2", "resnet20", "lenet-small",
                 "lenet-large"):
        assert arch in MODELS


def test_count_macs_matches_a_hand_count():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4, stride=2),
                          nn.Flatten(), nn.Linear(8 * 7 * 7, 5))
    expected = 8 * 16 * 16 * 3 * 9 + 8 * 7 * 7 * 2 * 9 + 5 * 392
    assert count_macs(model, (3, 16, 16)) == expected
    assert model.training  # mode restored
    assert count_macs(build_model("resnet18", inp((3, 32, 32))), (3, 32, 32)) == 555_422_720


# ---- a user's checkpoint ------------------------------------------------------------------------------------

def digits_teacher(trained_digits_model):
    """A cnn-large state dict for digits (random weights with the digits normalization)."""
    _, data = trained_digits_model
    torch.manual_seed(3)
    return build_model("cnn-large", ModelInput(data.shape, 10, data.mean, data.std)).eval(), data


def write_suite(tmp_path, teacher: str, methods: str = "kd = {}") -> str:
    path = tmp_path / "pre.toml"
    path.write_text(PRETRAINED_SUITE.format(teacher=teacher, methods=methods, seeds="[1]"))
    return str(path)


def test_checkpoint_teacher_is_loaded_not_trained(tmp_path, trained_digits_model):
    from kdbench.records.store import load_records
    from kdbench.execution.driver import run_suite
    from kdbench.suite.load import load_suite
    from kdbench.training.loop import predict_logits

    teacher, data = digits_teacher(trained_digits_model)
    (tmp_path / "ckpt").mkdir()
    torch.save({"state_dict": {f"module.{k}": v for k, v in teacher.state_dict().items()}},
               tmp_path / "ckpt" / "t.pt")  # wrapped and DataParallel-prefixed: both unwrapped
    table = '{ checkpoint = "ckpt/t.pt", arch = "cnn-large", kind = "standard" }'
    suite = load_suite(write_suite(tmp_path, table))
    pre = suite.pairs[0].pretrained
    assert pre.ref == str((tmp_path / "ckpt" / "t.pt").resolve()) and len(pre.sha256) == 64
    jobs = suite.jobs()
    assert [j.teacher_kind for j in jobs] == ["pretrained", "standard"]

    log = __import__("io").StringIO()
    res = run_suite(suite, tmp_path / "out", torch.device("cpu"), cache_dir=tmp_path / "cache", stream=log)
    assert not res.failed, res.failed
    assert "training teacher" not in log.getvalue()
    assert not (tmp_path / "cache" / "teachers").exists()  # never cached
    records = {r["role"]: r for r in load_records(tmp_path / "out")[0]}
    info = records["student"]["teacher"]
    assert info["kind"] == "pretrained" and info["pretrained"]["sha256"] == pre.sha256
    assert info["macs"] == count_macs(teacher, data.shape) and records["student"]["student"]["macs"] > 0
    clean = (predict_logits(teacher, data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert records["teacher"]["metrics"]["clean"] == pytest.approx(clean)
    assert records["teacher"]["method"] == "teacher:pretrained"

    # loaded in the layout of a trained teacher (channels-last on the CPU), frozen, in eval mode
    from kdbench.execution.run_progress import Progress
    from kdbench.training.teacher_cache import get_teacher
    from kdbench.execution.workspace import Workspace

    job = jobs[1]
    loaded = get_teacher(job.teacher_specs()[0], job, Workspace(torch.device("cpu"), tmp_path / "cache"),
                         Progress(1, quiet=True))
    conv = next(p for p in loaded.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())

    # a changed checkpoint gets new job ids (its content hash is in them); the same bytes keep them
    again = load_suite(write_suite(tmp_path, table))
    assert [j.job_id for j in again.jobs()] == [j.job_id for j in jobs]
    torch.save(build_model("cnn-large", ModelInput(data.shape, 10, data.mean, data.std)).state_dict(),
               tmp_path / "ckpt" / "t.pt")
    changed = load_suite(write_suite(tmp_path, table))
    assert not {j.job_id for j in changed.jobs()} & {j.job_id for j in jobs}

    # the record's config rebuilds the same job (reproduce)
    from kdbench.suite.jobs import job_from_config

    rec = records["student"]
    assert job_from_config(json.loads(json.dumps(rec["config"]))).job_id == rec["job_id"]


def test_mismatched_checkpoint_lists_the_keys(tmp_path, trained_digits_model):
    from kdbench.training.pretrained import load_pretrained
    from kdbench.suite.load import load_suite

    teacher, data = digits_teacher(trained_digits_model)
    torch.save(teacher.state_dict(), tmp_path / "t.pt")
    suite = load_suite(write_suite(tmp_path, '{ checkpoint = "t.pt", arch = "cnn-small", kind = "standard" }'))
    with pytest.raises(KdbenchError) as e:
        load_pretrained(suite.pairs[0].pretrained, ModelInput(data.shape, 10, data.mean, data.std), "cpu", tmp_path)
    msg = str(e.value)
    assert "does not fit architecture 'cnn-small'" in msg and "shape mismatches" in msg and "\n" not in msg

    sd = teacher.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["head.1.weight"]
    torch.save(sd, tmp_path / "t.pt")
    suite = load_suite(write_suite(tmp_path, '{ checkpoint = "t.pt", arch = "cnn-large", kind = "standard" }'))
    with pytest.raises(KdbenchError, match=r"missing keys: head\.1\.weight; unexpected keys: extra\.weight"):
        load_pretrained(suite.pairs[0].pretrained, ModelInput(data.shape, 10, data.mean, data.std), "cpu", tmp_path)


def test_foreign_checkpoint_without_normalization(tmp_path):
    """A TRADES-style WRN state dict: no normalize buffers, an unused sub_block1; loads with normalize = "none"."""
    from kdbench.training.pretrained import PretrainedTeacher, file_sha256, load_pretrained

    shape = (3, 32, 32)
    src = build_model("wrn-16-4", inp(shape))
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("normalize.")}
    sd.update({f"sub_block1.{k[len('block1.'):]}": v for k, v in sd.items() if k.startswith("block1.")})
    torch.save(sd, tmp_path / "trades.pt")
    pre = PretrainedTeacher("checkpoint", str(tmp_path / "trades.pt"), "wrn-16-4", file_sha256(tmp_path / "trades.pt"))
    with pytest.raises(KdbenchError, match='missing keys: normalize.mean, normalize.std.*normalize = "none"'):
        load_pretrained(pre, inp(shape), "cpu", tmp_path)
    model = load_pretrained(__import__("dataclasses").replace(pre, normalize="none"), inp(shape), "cpu", tmp_path)
    assert torch.equal(model.normalize.mean, torch.zeros(1, 3, 1, 1)) and torch.equal(model.normalize.std,
                                                                                      torch.ones(1, 3, 1, 1))
    x = torch.rand(2, *shape)
    src.normalize.mean.zero_()
    src.normalize.std.fill_(1.0)
    torch.testing.assert_close(model(x), src.eval()(x))
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_a_checkpoint_that_is_not_a_plain_state_dict_is_refused(tmp_path):
    from kdbench.training.pretrained import PretrainedTeacher, load_pretrained

    torch.save({"model": nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a pickled module: weights_only refuses it
    pre = PretrainedTeacher("checkpoint", str(tmp_path / "pickled.pt"), "resnet20", "0" * 64)
    with pytest.raises(KdbenchError, match="cannot load checkpoint"):
        load_pretrained(pre, inp((3, 32, 32)), "cpu", tmp_path)


@pytest.mark.parametrize("table,message", [
    ('{ checkpoint = "t.pt" }', "needs 'arch'"),
    ('{ checkpoint = "nope.pt", arch = "cnn-large", kind = "standard" }', "does not exist"),
    ('{ checkpoint = "t.pt", arch = "cnn-huge" }', "unknown model 'cnn-huge'"),
    ('{ checkpoint = "t.pt", arch = "cnn-large", normalize = "zscore" }', "normalize 'zscore' is unknown"),
    ('{ checkpoint = "t.pt", robustbench = "X", arch = "cnn-large", kind = "standard" }', "exactly one of"),
    ('{ robustbench = "X" }', "say which RobustBench dataset"),
    ('{ checkpoint = "t.pt", arch = "cnn-large", dataset = "cifar10" }', "only apply to robustbench"),
    ('{ weights = "t.pt" }', "unknown key 'weights'"),
    ('{ checkpoint = "t.pt", arch = "cnn-large" }', "needs 'kind', the teacher kind the model was trained as"),
    ('{ checkpoint = "t.pt", arch = "cnn-large", kind = "robust" }', "unknown teacher kind in .*'robust'"),
])
def test_teacher_table_errors(tmp_path, table, message):
    from kdbench.suite.load import load_suite

    torch.save({}, tmp_path / "t.pt")
    with pytest.raises(KdbenchError, match=message):
        load_suite(write_suite(tmp_path, table))


# ---- RobustBench --------------------------------------------------------------------------------------------

def fake_robustbench(monkeypatch, model):
    calls = []

    def load_model(model_name, dataset, threat_model, model_dir):
        calls.append((model_name, dataset, threat_model))
        return model

    utils = types.ModuleType("robustbench.utils")
    utils.load_model = load_model
    pkg = types.ModuleType("robustbench")
    pkg.utils = utils
    monkeypatch.setitem(sys.modules, "robustbench", pkg)
    monkeypatch.setitem(sys.modules, "robustbench.utils", utils)
    return calls


def test_robustbench_teacher_through_a_fake_loader(tmp_path, monkeypatch, trained_digits_model):
    from kdbench.records.store import load_records
    from kdbench.execution.driver import run_suite
    from kdbench.suite.load import load_suite

    teacher, _ = digits_teacher(trained_digits_model)
    calls = fake_robustbench(monkeypatch, teacher)
    suite = load_suite(write_suite(tmp_path, '{ robustbench = "Fake2024Robust", dataset = "cifar10", '
                                             'kind = "standard" }', "kd = {}\nhierarchical = {}"))
    assert suite.pairs[0].teacher == "robustbench:Fake2024Robust"
    res = run_suite(suite, tmp_path / "out", torch.device("cpu"), cache_dir=tmp_path / "cache", quiet=True)
    assert calls and calls[0] == ("Fake2024Robust", "cifar10", "Linf")
    assert len(calls) == 1  # loaded once per run
    (failed_job, reason), = res.failed  # layer-wise methods need declared stages
    assert failed_job.method == "hierarchical" and "declares no stages" in reason
    records = {r["method"]: r for r in load_records(tmp_path / "out")[0]}
    assert records["kd"]["teacher"]["pretrained"]["source"] == "robustbench"
    assert records["teacher:pretrained"]["metrics"]["clean"] >= 0.0


def test_robustbench_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    from kdbench.training.pretrained import PretrainedTeacher, load_pretrained

    monkeypatch.setitem(sys.modules, "robustbench", None)  # import fails
    with pytest.raises(KdbenchError, match=r"pip install 'kdbench\[robustbench\]'"):
        load_pretrained(PretrainedTeacher("robustbench", "Standard", dataset="cifar10", threat_model="Linf"),
                        inp((3, 32, 32)), "cpu", tmp_path)


def test_robustbench_that_cannot_import_its_dependency_says_which(tmp_path, monkeypatch):
    """RobustBench installed but failing on an import of its own (pkg_resources, removed from setuptools 82) is
    not 'missing': the error names the missing module and the fix."""
    import builtins

    from kdbench.training.pretrained import PretrainedTeacher, load_pretrained

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("robustbench"):
            raise ModuleNotFoundError("No module named 'pkg_resources'", name="pkg_resources")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(KdbenchError, match=r"installed but cannot be imported.*pkg_resources.*setuptools<82") as e:
        load_pretrained(PretrainedTeacher("robustbench", "Standard", dataset="cifar10", threat_model="Linf"),
                        inp((3, 32, 32)), "cpu", tmp_path)
    assert "pip install 'kdbench[robustbench]'" not in str(e.value)


def test_real_robustbench_model(tmp_path):
    """Only where the optional package is installed and the network is allowed (KDBENCH_NETWORK_TESTS=1)."""
    pytest.importorskip("robustbench")
    if not __import__("os").environ.get("KDBENCH_NETWORK_TESTS"):
        pytest.skip("set KDBENCH_NETWORK_TESTS=1 to download a RobustBench model")
    from kdbench.training.pretrained import PretrainedTeacher, load_pretrained

    model = load_pretrained(PretrainedTeacher("robustbench", "Standard", dataset="cifar10", threat_model="Linf"),
                            inp((3, 32, 32)), "cpu", tmp_path)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
