"""The Python API (`kdbench.evaluate`, `kdbench.run`, `kdbench.load_results`) and `kdbench evaluate --model`: a
model of the user's own code, any architecture, through a suite's evaluation protocol; the same numbers as the
command line; every bad model one line, exit code 2, nothing written; and the regression gate on a user's own
pipeline (train in their code, evaluate, baseline, check)."""

import copy
import hashlib
import importlib.util
import json
import textwrap

import pytest
import torch

import kdbench
from conftest import TINY_SUITE, run_main

pytestmark = pytest.mark.usefixtures("plugin_sandbox")

# The evaluation protocol of these tests: the tiny suite's data and teacher, one seed, a light evaluation.
PROTOCOL = TINY_SUITE.replace("seeds = [1, 2]", "seeds = [1]").replace('''[eval]
attacks = ["fgsm", "pgd", "apgd-dlr"]
eps = [0.1]
pgd_steps = 5
apgd_steps = 5
sweep_eps = [0.1, 0.5]
corruptions = ["gaussian_noise", "contrast"]
severities = [1, 5]''', '''[eval]
attacks = ["fgsm", "pgd"]
eps = [0.1]
pgd_steps = 5
apgd_steps = 5
sweep_eps = []
corruptions = ["contrast"]
severities = [1]
noise_families = ["gaussian"]
noise_levels = [0.5, 1.0]
sanity = false''')

# A user's own network, written without kdbench: the layers of kdbench's cnn-small under the same names (so one
# state dict loads into both), its own forward.
USERS_NET = '''
import torch
from torch import nn


class UsersNet(nn.Module):
    def __init__(self, channels=1, classes=10, side=8):
        super().__init__()
        self.normalize = Norm()
        block = lambda c_in, c_out: [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                                     nn.ReLU()]
        self.stages = nn.ModuleList([nn.Sequential(*block(channels, 8)),
                                     nn.Sequential(*block(8, 16), nn.MaxPool2d(2)),
                                     nn.Sequential(*block(16, 32), nn.MaxPool2d(2))])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * (side // 4) ** 2, 32), nn.ReLU(),
                                  nn.Linear(32, classes))

    def forward(self, x):
        h = self.normalize(x)
        for stage in self.stages:
            h = stage(h)
        return self.head(h)


class Norm(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, 1, 1, 1))
        self.register_buffer("std", torch.ones(1, 1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def build():
    return UsersNet()


def wrong_classes():
    return UsersNet(classes=3)


def colour():
    return UsersNet(channels=3)


def not_a_model():
    return "a string"
'''


@pytest.fixture
def protocol(tmp_path):
    path = tmp_path / "protocol.toml"
    path.write_text(PROTOCOL)
    return path


@pytest.fixture
def users_code(tmp_path):
    """The user's network file, and the module it is (imported by plain Python, not kdbench)."""
    path = tmp_path / "users_net.py"
    path.write_text(textwrap.dedent(USERS_NET))
    spec = importlib.util.spec_from_file_location("kdbench_test_users_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def _records(folder):
    return [json.loads(p.read_text()) for p in sorted((folder / "records").glob("*.json"))]


def _one_error(proc, needle):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], \
        (proc.stdout, proc.stderr)


def test_evaluate_on_a_users_module_gives_the_metrics_of_a_registered_checkpoint(tmp_path, protocol, users_code,
                                                                               trained_digits_model):
    _, module = users_code
    trained, _ = trained_digits_model  # kdbench's cnn-small, trained
    ckpt = tmp_path / "weights.pt"
    torch.save(trained.state_dict(), ckpt)
    mine = module.UsersNet()
    mine.load_state_dict(trained.state_dict())
    before = {k: v.clone() for k, v in mine.state_dict().items()}

    record = kdbench.evaluate(mine, suite=str(protocol), name="mine", out=tmp_path / "api", transfer=False)
    assert record["role"] == "external" and record["method"] == "mine" and record["student"]["arch"] == "UsersNet"
    assert _records(tmp_path / "api") == [record]
    assert (tmp_path / "api" / "leaderboard.md").is_file() and "mine [external]" in (tmp_path / "api" /
                                                                                   "leaderboard.md").read_text()
    # the user's model is left as it was: weights, gradients, mode
    assert all(torch.equal(v, before[k]) for k, v in mine.state_dict().items())
    assert all(p.requires_grad for p in mine.parameters()) and mine.training

    r = run_main("evaluate", "--checkpoint", ckpt, "--arch", "cnn-small", "--suite", protocol, "--name", "registered",
                 "--out", tmp_path / "cli", "--no-transfer", "--quiet")
    assert r.returncode == 0, r.stderr
    (registered,) = _records(tmp_path / "cli")
    assert record["metrics"] == registered["metrics"] and record["flags"] == registered["flags"]
    assert len(record["metrics"]) >= 8

    # again: the record is there, returned, not recomputed
    assert kdbench.evaluate(mine, suite=str(protocol), name="mine", out=tmp_path / "api", transfer=False) == record


def test_evaluate_a_torch_export_program(tmp_path, protocol, users_code, trained_digits_model):
    _, module = users_code
    trained, data = trained_digits_model
    mine = module.UsersNet()
    mine.load_state_dict(trained.state_dict())
    program = torch.export.export(mine.eval(), (data.x_test[:4],),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}})
    saved = tmp_path / "mine.pt2"
    torch.export.save(program, saved)
    r = run_main("evaluate", "--model", saved, "--suite", protocol, "--name", "exported", "--out", tmp_path / "out",
                 "--no-transfer", "--quiet")
    assert r.returncode == 0, r.stderr
    (rec,) = _records(tmp_path / "out")
    clean = (trained(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert rec["external"]["model"]["source"] == "export" and rec["metrics"]["clean"] == pytest.approx(clean, abs=1e-9)
    assert rec["metrics"]["robust@0.1"] <= rec["metrics"]["fgsm@0.1"] <= rec["metrics"]["clean"]


def test_every_bad_model_is_one_line_and_writes_nothing(tmp_path, protocol, users_code):
    path, _ = users_code
    out = tmp_path / "out"
    ckpt = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(2, 2)}, ckpt)
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a program")
    cases = [
        ((f"{path}:missing",), "users_net.py defines no function 'missing'; it defines: Norm, UsersNet, build,"),
        ((f"{path}:not_a_model",), "not_a_model() returned a str, not a torch.nn.Module"),
        ((f"{path}:wrong_classes",), "the model gives logits of shape (3,) per input, but dataset 'digits'"),
        ((f"{path}:colour",), "the model does not take the inputs of dataset 'digits' (inputs (1, 8, 8)"),
        ((str(tmp_path / "gone.py") + ":build",), "plugin file"),
        (("users_net",), "must be FILE.py:FACTORY, module:factory or FILE.pt2"),
        ((str(junk),), "is not a program saved by torch.export.save"),
        ((f"{path}:build", "--checkpoint", ckpt), "does not fit architecture 'users_net.py:build': missing keys"),
        ((f"{path}:build", "--arch", "cnn-small"), "--arch does not apply to --model"),
    ]
    for args, needle in cases:
        model, *rest = args
        _one_error(run_main("evaluate", "--model", model, *rest, "--suite", protocol, "--name", "m", "--out", out,
                            "--no-transfer", "--quiet"), needle)
    _one_error(run_main("evaluate", "--suite", protocol, "--name", "m", "--out", out), "evaluate needs the model")
    assert not out.exists()
    with pytest.raises(kdbench.KdbenchError, match="takes a torch.nn.Module, got a str"):
        kdbench.evaluate("model.pt", suite=str(protocol), out=out)
    assert not out.exists()


def test_load_results_is_one_row_per_record_with_every_metric(tiny_run):
    frame = kdbench.load_results(tiny_run.out)
    records = tiny_run.records()
    assert len(frame) == len(records) == 6 and set(frame["job_id"]) == set(records)
    metrics = set().union(*(r["metrics"] for r in records.values()))
    assert metrics <= set(frame.columns) and {"method", "seed", "role", "pair", "teacher_kind", "flags"} <= set(
        frame.columns)
    for _, row in frame.iterrows():
        rec = records[row["job_id"]]
        assert (row["method"], row["seed"], row["role"], row["flags"]) == (rec["method"], rec["seed"], rec["role"],
                                                                          rec["flags"])
        assert all(row[m] == v for m, v in rec["metrics"].items())
    with pytest.raises(kdbench.KdbenchError, match="holds no records/ folder"):
        kdbench.load_results(tiny_run.results)


def test_run_from_python_imports_its_plugins_and_returns_the_records(tmp_path, tiny_teachers, monkeypatch):
    plugin = tmp_path / "scaled.py"
    plugin.write_text(textwrap.dedent('''
        import torch.nn.functional as F
        from kdbench import Distiller, kd_loss, register_method

        @register_method("scaled-kd")
        class ScaledKD(Distiller):
            """KD at T = 4 with a weight of 0.5 on each term (a user's method)."""

            def losses(self, batch):
                s = self.student(batch.x)
                return {"kd": 0.5 * kd_loss(s, batch.teacher_logits[0], 4.0), "ce": 0.5 * F.cross_entropy(s, batch.y)}
        '''))
    suite = tmp_path / "suite.toml"
    suite.write_text(PROTOCOL.replace("kd = {}", "scaled-kd = {}").replace("sweep_eps = [0.1]", "sweep_eps = []"))
    monkeypatch.chdir(tmp_path)  # a plugin given to run() is relative to the working folder
    torch.set_num_threads(torch.get_num_threads())
    got = kdbench.run(suite, out=tmp_path / "out", methods=["scaled-kd"], workers=1, plugins=["scaled.py"],
                      quiet=True)
    assert sorted(r["method"] for r in got) == ["scaled-kd", "teacher:standard"]
    assert {r["job_id"] for r in got} == {p.stem for p in (tmp_path / "out" / "records").glob("*.json")}
    (mine,) = [r for r in got if r["method"] == "scaled-kd"]
    assert mine["plugins"][0]["name"] == "scaled.py"
    with pytest.raises(kdbench.KdbenchError, match="unknown method 'nope'"):
        kdbench.run(suite, out=tmp_path / "out", methods=["nope"])


# ---- the regression gate on a user's own pipeline (docs/plugins.md) ----------------------------------------


def _train_in_users_code(module, data, epochs: int):
    """The user's own training loop: plain PyTorch, nothing of kdbench."""
    torch.manual_seed(0)
    net = module.UsersNet()
    with torch.no_grad():
        net.normalize.mean.fill_(float(data.x_train.mean()))
        net.normalize.std.fill_(float(data.x_train.std()))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(data.x_train), 128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(data.x_train[i:i + 128]), data.y_train[i:i + 128]).backward()
            opt.step()
    return net.eval()


def test_the_regression_recipe_catches_a_real_drop_and_passes_an_unchanged_model(tmp_path, protocol, users_code,
                                                                                trained_digits_model):
    path, module = users_code
    _, data = trained_digits_model
    net = _train_in_users_code(module, data, epochs=4)
    results = tmp_path / "ci" / "results"
    suite_folder = results / "tiny"  # the protocol suite's name

    def evaluate(weights_file, out):
        return run_main("evaluate", "--model", f"{path}:build", "--checkpoint", weights_file, "--suite", protocol,
                        "--name", "users-net", "--out", out, "--no-transfer", "--quiet")

    torch.save(net.state_dict(), tmp_path / "v1.pt")
    assert evaluate(tmp_path / "v1.pt", suite_folder).returncode == 0
    (first,) = _records(suite_folder)  # built by the user's factory: its code is part of the record's identity
    facts = first["external"]["model"]
    assert (facts["source"], facts["arch"]) == ("factory", "users_net.py:build")
    assert facts["code_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    r = run_main("check", "--suite", protocol, "--results", results, "--update-baseline")
    assert r.returncode == 0 and (suite_folder / "baseline.json").is_file(), r.stderr

    # the same model again (a later CI run, into a fresh folder): the gate passes
    torch.save(net.state_dict(), tmp_path / "v2.pt")
    assert evaluate(tmp_path / "v2.pt", tmp_path / "run2").returncode == 0
    r = run_main("check", "--suite", protocol, "--results", results, "--out", tmp_path / "run2")
    assert r.returncode == 0 and "0 regressed" in r.stdout, r.stdout + r.stderr

    # a model 5 points worse: its head leans to class 0 until 5 % more of the test set is misread
    clean = lambda m: (m(data.x_test).argmax(1) == data.y_test).float().mean().item()  # noqa: E731
    worse = copy.deepcopy(net)
    for bias in torch.arange(0.5, 20.0, 0.5):
        with torch.no_grad():
            worse.head[-1].bias.copy_(net.head[-1].bias)
            worse.head[-1].bias[0] += bias
        if clean(net) - clean(worse) >= 0.05:
            break
    assert clean(net) - clean(worse) >= 0.05
    torch.save(worse.state_dict(), tmp_path / "v3.pt")
    assert evaluate(tmp_path / "v3.pt", tmp_path / "run3").returncode == 0
    r = run_main("check", "--suite", protocol, "--results", results, "--out", tmp_path / "run3")
    assert r.returncode == 1 and "REGRESSION digits | external | users-net [external]: clean (seed 1)" in r.stderr, \
        r.stdout + r.stderr
