"""Noise-severity sweeps (noise_sweep.py): names, the AUC against a hand-computed trapezoid, a span from clean
accuracy to near chance on an undefended model; and a 2-class npz dataset that runs end to end (DLR skipped)."""

import json

import numpy as np
import pytest

from kdbench.evaluation.noise_sweep import NOISE_FAMILIES, noise_sweep
from kdbench.suite.configs import EvalConfig

LEVELS = (0.25, 0.5, 1.0)


@pytest.fixture(scope="module")
def toy(trained_digits_model):
    model, data = trained_digits_model
    return model, data.x_test[:200], data.y_test[:200]


def test_sweep_names_auc_and_span(toy):
    model, x, y = toy
    ev = EvalConfig(noise_levels=LEVELS)
    m = noise_sweep(model, x, y, ev, seed=1)
    clean = (model(x).argmax(1) == y).float().mean().item()
    for fam in NOISE_FAMILIES.names():
        accs = [clean] + [m[f"noise/{fam}/{f:g}"] for f in LEVELS]
        fs = (0.0,) + LEVELS
        area = sum((fs[i + 1] - fs[i]) * (accs[i + 1] + accs[i]) / 2 for i in range(len(LEVELS)))
        assert m[f"noise-auc/{fam}"] == pytest.approx(area)
    # f = 1 leaves no information for impulse (every value replaced) and contrast (a constant image)
    for fam in ("impulse", "contrast"):
        assert m[f"noise/{fam}/1"] <= 0.3
    assert clean - m["noise/gaussian/1"] >= 0.5  # the undefended model spans >= 50 points on the Gaussian family
    assert m == noise_sweep(model, x, y, ev, seed=1)  # deterministic for a seed
    assert noise_sweep(model, x, y, EvalConfig(noise_families=()), seed=1) == {}


def test_noise_levels_are_validated():
    from kdbench.core.errors import KdbenchError
    from kdbench.suite.load import parse_suite

    with pytest.raises(KdbenchError, match="outside"):
        parse_suite({"eval": {"noise_levels": [0.5, 1.5]}})
    with pytest.raises(KdbenchError, match="unknown noise family 'fog'"):
        parse_suite({"eval": {"noise_families": ["fog"]}})


def test_two_class_npz_runs_end_to_end(tmp_path):
    from conftest import run_main

    rng = np.random.default_rng(0)
    y_tr, y_te = np.arange(80) % 2, np.arange(30) % 2
    x_tr = (rng.random((80, 8, 8)) * 0.3 + y_tr[:, None, None] * 0.5).astype(np.float32)
    x_te = (rng.random((30, 8, 8)) * 0.3 + y_te[:, None, None] * 0.5).astype(np.float32)
    np.savez(tmp_path / "two.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    (tmp_path / "two.toml").write_text(f'''
name = "two"
dataset = "npz:{tmp_path / 'two.npz'}"
seeds = [1]
headline_eps = 0.1
[train]
epochs = 1
teacher_epochs = 1
batch_size = 32
adv_steps = 1
[methods]
ce = {{}}
[eval]
attacks = ["fgsm", "pgd", "apgd-dlr", "apgd-t"]
eps = [0.1]
pgd_steps = 2
apgd_steps = 2
sweep_eps = [0.1, 0.5]
corruptions = ["contrast"]
severities = [1]
''')
    out = tmp_path / "out"
    r = run_main("run", "--suite", tmp_path / "two.toml", "--out", out, "--quiet", "--cache-dir", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    student = [r for r in recs if r["method"] == "ce"][0]
    assert "apgd-dlr@0.1" not in student["metrics"] and "sweep@0.5" in student["metrics"]
    notes = " | ".join(student["flag_evidence"]["notes"])
    assert "apgd-dlr: skipped" in notes and "apgd-t: skipped" in notes
