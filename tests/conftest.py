import os
import sys
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
attacks = ["fgsm", "pgd", "apgd-dlr"]
eps = [0.1]
pgd_steps = 5
apgd_steps = 5
sweep_eps = [0.1, 0.5]
corruptions = ["gaussian_noise", "contrast"]
severities = [1, 5]
"""


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
    import subprocess

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "kdbench", *map(str, args)], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def trained_digits_model():
    """A small undefended CNN trained briefly on digits (CE, 10 epochs), in eval mode, and the digits data."""
    import torch

    from kdbench.data import load_data
    from kdbench.datasets import DataConfig
    from kdbench.models import ModelInput, build_model
    from kdbench.train import fit

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
    import subprocess

    from kdbench.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse usage errors
            rc = e.code
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())
