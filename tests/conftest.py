import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TINY_SUITE = """
name = "tiny"
dataset = "digits"
seeds = [1, 2]
headline_eps = 0.1

[[pairs]]
teacher = "cnn-large"
student = "cnn-small"

[train]
epochs = 2
teacher_epochs = 3
batch_size = 128
lr = 0.003
adv_eps = 0.1
adv_steps = 2

[methods]
ce = {}
kd = {}

[eval]
attacks = ["fgsm", "pgd", "apgd-dlr", "apgd-ce-l2"]
eps = [0.1]
eps_l2 = [0.25]
pgd_steps = 5
apgd_steps = 5
sweep_eps = [0.1, 0.5]
corruptions = ["gaussian_noise", "contrast"]
severities = [1, 5]

[eval.certify]
sigma = [0.25]
n0 = 8
n = 64
alpha = 0.01
"""


# A suite around a teacher from elsewhere (test_archs.py, test_pretrained_teachers.py): format `teacher` (a TOML
# value), `methods` (the [methods] lines) and `seeds` (a TOML list).
PRETRAINED_SUITE = """
name = "pre"
dataset = "digits"
seeds = {seeds}
headline_eps = 0.1
[[pairs]]
teacher = {teacher}
student = "cnn-small"
[train]
epochs = 1
teacher_epochs = 1
batch_size = 256
[methods]
{methods}
[eval]
attacks = ["fgsm"]
eps = [0.1]
transfer = false
sweep_eps = []
corruptions = []
sanity = false
"""


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow (plain pytest leaves them out; CI runs them)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture
def tiny_suite(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SUITE)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Tests never touch the user's teacher cache."""
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))


def run_cli(*args, cwd=None, timeout=300):
    """Run `python -m kdbench ...` in a subprocess; returns CompletedProcess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "kdbench", *map(str, args)], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def trained_digits_model():
    """A small undefended CNN trained briefly on digits (CE, 10 epochs), in eval mode, and the digits data."""
    import torch

    from kdbench.data.load import load_data
    from kdbench.data.registry import DataConfig
    from kdbench.models.registry import ModelInput, build_model
    from kdbench.training.loop import fit

    torch.manual_seed(0)
    data = load_data(DataConfig())
    model = build_model("cnn-small", ModelInput(data.shape, 10, data.mean, data.std))
    cfg = type("Cfg", (), {"optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "batch_size": 128,
                           "schedule": "constant"})
    x, y = data.x_train, data.y_train
    fit(model, list(model.parameters()),
        lambda idx, p: {"ce": torch.nn.functional.cross_entropy(model(x[idx]), y[idx])}, len(x), 10, cfg, 0, "cpu")
    return model.eval(), data


def run_main(*args):
    """Run the CLI in this process (fast: no interpreter start-up); returns an object like CompletedProcess."""
    import contextlib
    import io

    from kdbench.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse usage errors
            rc = e.code
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


@dataclasses.dataclass(frozen=True)
class TinyRun:
    """The tiny suite, run once per test session through the CLI (`--workers 1 --cpus-per-job 1`: one job at a
    time in one process, one thread per job, which is also what a default run gives each job) into `out` with its
    own teacher cache. Tests read it; a test that changes records works on a copy (`copy_to`)."""

    suite: Path
    results: Path  # holds tiny/ (the suite's name)
    cache: Path
    proc: subprocess.CompletedProcess
    seconds: float

    @property
    def out(self) -> Path:
        return self.results / "tiny"

    def records(self) -> dict:
        return {p.stem: json.loads(p.read_text()) for p in (self.out / "records").glob("*.json")}

    def copy_to(self, dest: Path, keep=lambda record: True) -> Path:
        """A copy of the results folder (only the records `keep` accepts; no reports, no baseline)."""
        (dest / "records").mkdir(parents=True)
        for path in (self.out / "records").glob("*.json"):
            record = json.loads(path.read_text())
            if keep(record):
                shutil.copy2(path, dest / "records")
                weights = (record.get("student") or {}).get("weights")
                if weights:  # the saved student the record points to
                    (dest / weights["file"]).parent.mkdir(exist_ok=True)
                    shutil.copy2(self.out / weights["file"], dest / weights["file"])
        return dest

    def copy_teachers(self, cache: Path) -> Path:
        """Put the session's trained teachers into the teacher cache `cache` (only teachers/: other cached
        artefacts, such as transfer examples, are left for the test to make)."""
        shutil.copytree(self.cache / "teachers", cache / "teachers", dirs_exist_ok=True)
        return cache


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    root = tmp_path_factory.mktemp("tiny-run")
    suite = root / "tiny.toml"
    suite.write_text(TINY_SUITE)
    results, cache = root / "results", root / "cache"
    t0 = time.perf_counter()
    # the cache is named on the command line: this fixture is set up before any test's KDBENCH_CACHE
    proc = run_cli("run", "--suite", suite, "--out", results / "tiny", "--cache-dir", cache, "--workers", "1",
                   "--cpus-per-job", "1", timeout=900)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    return TinyRun(suite, results, cache, proc, seconds)


@pytest.fixture
def tiny_teachers(tiny_run, tmp_path) -> Path:
    """This test's teacher cache (KDBENCH_CACHE) holding the tiny suite's trained teachers: a run of the tiny
    suite (or a part of it) in this test trains no teacher."""
    return tiny_run.copy_teachers(tmp_path / "cache")


def interruptible() -> None:
    """`preexec_fn` of a run a test interrupts: Ctrl-C reaches it even when the tests were started in the
    background (a shell starts background jobs with SIGINT ignored, and a child would inherit that)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def plugin_sandbox():
    """Plugins a test imports are forgotten after it: every registry, the loaded plugins and their modules as
    they were (a plugin imported in this process stays registered otherwise)."""
    from kdbench.core import plugins, registry

    saved, loaded, modules = registry.snapshot(), dict(plugins._LOADED), set(sys.modules)
    yield
    registry.restore(saved)
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)
    for name in set(sys.modules) - modules:
        if name.startswith(("kdbench_plugin_", "kdbench_test_")):
            sys.modules.pop(name, None)
