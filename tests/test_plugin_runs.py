"""Suites of plugins, run: a plugin method and a plugin architecture written into a folder and named by a suite
give the same records under the inline runner and spawned worker processes (and a Ray cluster, test_ray.py); the
records name each plugin and its hash; editing the plugin's loss re-runs exactly its jobs; a plugin loss that turns
non-finite or moves its teacher fails that job only; `reproduce` says when the plugin changed."""

import json
import textwrap

import pytest
import torch

from conftest import run_main
from kdbench.core.plugins import load_plugin

pytestmark = pytest.mark.usefixtures("plugin_sandbox")

METHOD = '''
"""A user's distillation method: KD at T = 4 on the logits, its KD term scaled by SCALE."""
import torch
import torch.nn.functional as F
from kdbench import Batch, Distiller, kd_loss, register_method

SCALE = 1.0


@register_method("my-kd")
class MyKD(Distiller):
    """KD with a scaled KD term (a user's method)."""

    defaults = {"temperature": 4.0}

    def losses(self, batch: Batch):
        s = self.student(batch.x)
        return {"kd": SCALE * 0.9 * kd_loss(s, batch.teacher_logits[0], self.params["temperature"]),
                "ce": 0.1 * F.cross_entropy(s, batch.y)}
'''

ARCH = '''
"""A user's architecture: one conv stage, then a linear head; normalizes inside."""
from torch import nn
from kdbench import ModelInput, Normalize, register_model


class MyNet(nn.Module):
    def __init__(self, inp: ModelInput):
        super().__init__()
        self.normalize = Normalize(inp.mean, inp.std)
        self.stage = nn.Sequential(nn.Conv2d(inp.shape[0], 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * (inp.shape[1] // 2) * (inp.shape[2] // 2),
                                                          inp.num_classes))

    def forward_stages(self, x):
        h = self.stage(self.normalize(x))
        return self.head(h), [h]

    def forward(self, x):
        return self.forward_stages(x)[0]


@register_model("my-net", "a user's one-stage CNN")
def my_net(inp: ModelInput) -> nn.Module:
    return MyNet(inp)
'''

# the tiny suite's data, teacher and training (its teachers come from the session's cache), a light evaluation
SUITE = '''
plugins = ["my_method.py", "my_arch.py"]
name = "plugged"
dataset = "digits"
seeds = [1]
headline_eps = 0.1

[[pairs]]
teacher = "cnn-large"
student = "my-net"

[train]
epochs = 2
teacher_epochs = 3
batch_size = 128
lr = 0.003
adv_eps = 0.1
adv_steps = 2

[methods]
ce = {}
my-kd = {}
METHODS

[eval]
attacks = ["fgsm", "pgd"]
eps = [0.1]
pgd_steps = 5
apgd_steps = 5  # the worst case's see-through attacks, when masking is suspected
transfer = false
sweep_eps = []
corruptions = ["contrast"]
severities = [1]
noise_families = []
sanity = false
'''


def plugged(folder, methods: str = "") -> object:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_method.py").write_text(textwrap.dedent(METHOD))
    (folder / "my_arch.py").write_text(textwrap.dedent(ARCH))
    suite = folder / "plugged.toml"
    suite.write_text(SUITE.replace("METHODS", methods))
    return suite


def records(out) -> dict:
    return {json.loads(p.read_text())["job_id"]: json.loads(p.read_text()) for p in (out / "records").glob("*.json")}


def run_inline(suite, out, *extra):
    return run_main("run", "--suite", suite, "--out", out, "--workers", "1", "--cpus-per-job", "1", *extra)


def _forget(path) -> None:
    """This process forgets the plugin file `path`, as a new process would not have it."""
    from kdbench.core import plugins, registry

    registry.forget(plugins._LOADED.pop(str(path)).origin)


def _on_workers(suite, out, cache, how, monkeypatch):
    """`suite` run on two worker processes started by `how` (fork or spawn)."""
    from kdbench.execution import pool_executor
    from kdbench.execution.driver import run_suite
    from kdbench.suite.load import load_suite

    monkeypatch.setattr(pool_executor, "start_method", lambda device, threads: how)
    lines = []
    result = run_suite(load_suite(str(suite)), out, torch.device("cpu"), cache, workers=2, threads=1,
                       stream=type("S", (), {"write": lambda self, s: lines.append(s), "flush": lambda self: None})())
    assert (result.ran, result.failed) == (3, []) and f"2 worker processes ({how}ed)" in "".join(lines)
    return records(out)


def _same_records(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for job_id, rec in want.items():
        for key in ("metrics", "flags", "train_history", "student", "config", "plugins"):
            assert got[job_id].get(key) == rec.get(key), (rec["method"], key)


def test_a_plugin_suite_runs_alike_everywhere_names_its_plugins_and_follows_their_code(tmp_path, tiny_teachers,
                                                                                        monkeypatch):
    """Inline and on forked workers (spawned: the slow test below; Ray: test_ray.py) the same records, which name
    each plugin and its hash; `reproduce` re-runs a plugin job exactly, and says when the plugin changed; editing
    the plugin's loss re-runs exactly its jobs."""
    suite = plugged(tmp_path / "user")
    out = tmp_path / "inline"
    proc = run_inline(suite, out)
    assert proc.returncode == 0, proc.stderr
    method_file = tmp_path / "user" / "my_method.py"
    method, arch = (load_plugin(str(tmp_path / "user" / n)).origin for n in ("my_method.py", "my_arch.py"))
    # the run names each plugin it imports, with its full hash, before any job starts
    notice = [f"plugin file {method.path}: sha256 {method.sha256}", f"plugin file {arch.path}: sha256 {arch.sha256}"]
    assert proc.stderr.splitlines()[:2] == notice
    assert proc.stderr.index(notice[1]) < proc.stderr.index("suite plugged: 3 jobs")
    inline = records(out)
    by_method = {r["method"]: r for r in inline.values()}
    assert set(by_method) == {"teacher:standard", "ce", "my-kd"}
    # the records name the plugins and their hashes: the file, where it was, the full SHA-256
    named = lambda o: {"kind": "file", "name": o.name, "path": o.path, "sha256": o.sha256}  # noqa: E731
    assert by_method["my-kd"]["plugins"] == [named(arch), named(method)]
    assert by_method["ce"]["plugins"] == [named(arch)] and "plugins" not in by_method["teacher:standard"]
    assert by_method["my-kd"]["config"]["plugins"] == [{"file": "my_arch.py", "sha256": arch.sha256},
                                                       {"file": "my_method.py", "sha256": method.sha256}]
    assert by_method["my-kd"]["student"]["arch"] == "my-net"

    _same_records(_on_workers(suite, tmp_path / "pool", tiny_teachers, "fork", monkeypatch), inline)
    # export copies kdbench's own model code: a plugin's architecture is one line naming the plugin
    record = out / "records" / f"{by_method['my-kd']['job_id']}.json"
    proc = run_main("export", record, "--to", tmp_path / "export")
    assert proc.returncode == 2 and "comes from a plugin (my_arch.py, my_method.py)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "export").exists()

    # reproduce, in a process that has not imported the plugin: it is imported from where the record says
    _forget(method_file)
    proc = run_main("reproduce", record, "--cache-dir", tiny_teachers, "--quiet")
    assert proc.returncode == 0 and "0 differ" in proc.stdout, proc.stdout + proc.stderr

    # the plugin's loss is edited: reproduce says so; a re-run runs exactly its job again, under a new id
    _forget(method_file)
    method_file.write_text(method_file.read_text().replace("SCALE = 1.0", "SCALE = 2.0"))
    proc = run_main("reproduce", record, "--cache-dir", tiny_teachers)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"plugin file '{method_file}' changed since the record (sha256 {method.sha256[:12]} then" in proc.stderr
    proc = run_inline(suite, out)
    assert proc.returncode == 0 and "1 jobs run, 2 already done, 0 failed" in proc.stdout, proc.stderr
    now = records(out)
    (edited,) = set(now) - set(inline)
    assert now[edited]["method"] == "my-kd" and now[edited]["metrics"] != by_method["my-kd"]["metrics"]
    assert now[edited]["plugins"][1]["sha256"] == load_plugin(str(method_file)).origin.sha256 != method.sha256
    # an edit of the architecture's file would give new ids to the jobs of its student, and only to them
    from kdbench.suite.load import load_suite

    before = {j.label(): j.job_id for j in load_suite(str(suite)).jobs()}
    (tmp_path / "user" / "my_arch.py").write_text((tmp_path / "user" / "my_arch.py").read_text() + "# edited\n")
    after = {j.label(): j.job_id for j in load_suite(str(suite)).jobs()}
    assert {k for k in before if before[k] != after[k]} == {k for k in before if "my-net" in k} != set()


@pytest.mark.slow  # two spawned workers start (importing torch) in about 4 s of CPU each
def test_spawned_workers_import_the_plugins_and_give_the_same_records(tmp_path, tiny_teachers, monkeypatch):
    suite = plugged(tmp_path / "user")
    assert run_inline(suite, tmp_path / "inline", "--quiet").returncode == 0
    _same_records(_on_workers(suite, tmp_path / "pool", tiny_teachers, "spawn", monkeypatch),
                  records(tmp_path / "inline"))


BREAKS = '''
import math
import torch
import torch.nn.functional as F
from kdbench import Distiller, register_method


@register_method("blows-up")
class BlowsUp(Distiller):
    """Its loss is infinite from the first step."""

    def losses(self, batch):
        s = self.student(batch.x)
        return {"ce": F.cross_entropy(s, batch.y) * (math.inf if self.training else 1.0)}


@register_method("moves-teacher")
class MovesTeacher(Distiller):
    """Nudges its teacher's first convolution at every step."""

    def losses(self, batch):
        with torch.no_grad():
            next(self.teacher.parameters()).add_(1e-3)
        return {"ce": F.cross_entropy(self.student(batch.x), batch.y)}
'''


def test_a_loss_that_turns_non_finite_or_moves_the_teacher_fails_only_its_job(tmp_path, tiny_run, tiny_teachers):
    folder = tmp_path / "user"
    suite = plugged(folder, "blows-up = {}\nmoves-teacher = {}\nkd = {}")
    suite.write_text(suite.read_text().replace('plugins = ["my_method.py", "my_arch.py"]', 'plugins = ["breaks.py"]')
                     .replace('student = "my-net"', 'student = "cnn-small"').replace("ce = {}\nmy-kd = {}\n", ""))
    (folder / "breaks.py").write_text(textwrap.dedent(BREAKS))
    out = tmp_path / "out"
    proc = run_inline(suite, out)
    assert proc.returncode == 1, proc.stderr
    assert "2 jobs run, 0 already done, 2 failed" in proc.stdout
    reasons = {json.loads(p.read_text())["label"].split()[0]: json.loads(p.read_text())["reason"]
               for p in (out / "failures").glob("*.json")}
    assert set(reasons) == {"blows-up", "moves-teacher"}
    assert reasons["blows-up"].startswith("TrainingDiverged: loss is not finite at epoch 1, step 1")
    assert reasons["moves-teacher"].startswith("TeacherChanged: the method changed teacher 0's stages.0.0.weight")
    # the teacher was put back: kd, trained after it in the same process, equals the session's kd seed 1 exactly
    (kd,) = [r for r in records(out).values() if r["method"] == "kd"]
    (want,) = [r for r in tiny_run.records().values() if r["method"] == "kd" and r["seed"] == 1]
    assert kd["teacher"] == want["teacher"] and kd["train_history"] == want["train_history"]
