"""The worst case holds on a gradient-masked model: kdbench's robust@eps is within 2 points of (or below) a strong
attack written here from plain torch (tests/independent_attack.py: restarts, margin loss, rescaled logits).

The masked model is defensive distillation's recipe in small: a CNN trained on softmax(z / T) at T = 100 and
deployed on its raw logits z, so its softmax saturates and CE gradients vanish (Carlini & Wagner 2016)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from independent_attack import strong_robust

from kdbench.evaluation.evaluate import evaluate
from kdbench.suite.load import load_suite

T = 100.0
# the default suite's attacks and budgets at its headline eps
EV = dataclasses.replace(load_suite("robustness").eval, eps=(0.1,), sweep_eps=(), corruptions=(), noise_families=(),
                         sanity=False, transfer=False)


@pytest.fixture(scope="module")
def masked():
    from kdbench.data.load import load_data
    from kdbench.data.registry import DataConfig
    from kdbench.models.registry import ModelInput, build_model
    from kdbench.training.loop import fit

    torch.manual_seed(0)
    data = load_data(DataConfig())
    model = build_model("cnn-small", ModelInput(data.shape, 10, data.mean, data.std))
    cfg = type("Cfg", (), {"optimizer": "adam", "lr": 4e-3, "weight_decay": 0.0, "batch_size": 128,
                           "schedule": "cosine"})
    x, y = data.x_train, data.y_train
    fit(model, list(model.parameters()), lambda idx, p: {"ce": F.cross_entropy(model(x[idx]) / T, y[idx])}, len(x),
        15, cfg, 0, "cpu")
    return model.eval().requires_grad_(False), data.x_test[:200], data.y_test[:200]


@pytest.mark.slow  # the default suite's attacks at full strength, against 100-step, 3-restart attacks
def test_masked_model_worst_case_holds_against_a_strong_independent_attack(masked):
    model, x, y = masked
    metrics, _, details = evaluate(model, x, y, 10, EV, seed=1, headline_eps=0.1)
    strong = strong_robust(model, x, y, 0.1, steps=100, restarts=3, seed=0).float().mean().item()
    assert metrics["pgd@0.1"] > strong + 0.05  # the model does mask CE gradients
    assert metrics["robust@0.1"] <= strong + 0.02, (metrics, strong, details["worst_case"])
    # and the record says which attacks made the worst case
    made = details["worst_case"]["0.1"]
    assert set(made) >= {"fgsm", "pgd", "apgd-ce", "apgd-dlr", "pgd-rescaled", "apgd-t"}
    assert sum(made.values()) == round((metrics["clean"] - metrics["robust@0.1"]) * len(x))


@pytest.mark.slow  # 40 s: 10 restarts x 200 steps x 3 losses
def test_the_committed_defensive_student_holds_against_a_strong_independent_attack():
    """The default suite's own defensive student (seed 1, its committed weights): the record's robust@0.1 is within
    2 points of (or below) what a 200-step, 10-restart attack on three losses written from plain torch finds."""
    import json

    from conftest import ROOT

    from kdbench.data.load import load_data
    from kdbench.models.registry import ModelInput, build_model
    from kdbench.records.students import verified_weights
    from kdbench.suite.jobs import job_from_config

    folder = ROOT / "results" / "robustness"
    records = [json.loads(p.read_text()) for p in sorted((folder / "records").glob("*.json"))]
    (record,) = [r for r in records if r["role"] == "student" and r["method"] == "defensive" and r["seed"] == 1]
    data = load_data(job_from_config(record["config"], record["suite"]).data)
    model = build_model(record["student"]["arch"], ModelInput(data.shape, data.num_classes, data.mean, data.std))
    model.load_state_dict(torch.load(verified_weights(folder, record), weights_only=True))
    model.eval().requires_grad_(False)
    eps = record["headline_eps"]
    strong = strong_robust(model, data.x_test, data.y_test, eps, steps=200, restarts=10, seed=0).float().mean().item()
    clean = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert abs(clean - record["metrics"]["clean"]) < 1e-6  # the weights are the record's student
    assert record["metrics"][f"pgd@{eps:g}"] > strong + 0.05  # it does mask CE gradients
    assert record["metrics"][f"robust@{eps:g}"] <= strong + 0.02, (record["metrics"][f"robust@{eps:g}"], strong)


@pytest.mark.slow  # 30-60 s: 10 restarts x 200 steps x 3 losses in L2
def test_the_committed_at_student_l2_worst_case_holds_against_a_strong_independent_l2_attack():
    """The default suite's L2 evaluation (its L2 attacks, steps and headline radius) on its committed `at` student
    (seed 1): robust-l2 is at most 1 point above what an L2 attack written from plain torch finds with 200 steps,
    10 restarts and three losses (margin, CE, rescaled CE; tests/independent_attack.py). `at` is the teacher-free
    adversarial baseline the L2 comparisons are read against (the adversarial distillers and `at` vs `ce`); the gap
    on every seed-1 student is in docs/evaluation.md (larger, 1.4-2.8 points, on the students without adversarial
    training, whose L2 accuracy falls steeply around the headline radius)."""
    import json

    from conftest import ROOT
    from independent_attack import strong_robust_l2

    from kdbench.core.gpu import place
    from kdbench.data.load import load_data
    from kdbench.models.registry import ModelInput, build_model
    from kdbench.records.students import verified_weights
    from kdbench.suite.jobs import job_from_config

    suite_ev = load_suite("robustness").eval
    l2 = tuple(a for a in suite_ev.attacks if a.endswith("-l2"))
    ev = dataclasses.replace(suite_ev, attacks=l2, eps=(), sweep_eps=(), corruptions=(), noise_families=(),
                             sanity=False, transfer=False)
    radius = suite_ev.headline_eps_l2
    folder = ROOT / "results" / "robustness"
    records = [json.loads(p.read_text()) for p in sorted((folder / "records").glob("*.json"))]
    (record,) = [r for r in records if r["role"] == "student" and r["method"] == "at" and r["seed"] == 1]
    data = load_data(job_from_config(record["config"], record["suite"]).data)
    model = build_model(record["student"]["arch"], ModelInput(data.shape, data.num_classes, data.mean, data.std))
    model.load_state_dict(torch.load(verified_weights(folder, record), weights_only=True))
    model = place(model, torch.device("cpu"), None).eval().requires_grad_(False)  # the layout of a job's student
    metrics, _, details = evaluate(model, data.x_test, data.y_test, 10, ev, seed=1, headline_eps=0.1)
    strong = strong_robust_l2(model, data.x_test, data.y_test, radius, steps=200, restarts=10, seed=0)
    ours = metrics[f"robust-l2@{radius:g}"]
    assert ours <= strong.float().mean().item() + 0.01, (ours, strong.float().mean().item(),
                                                          details["worst_case_l2"])
    assert ours < metrics["clean"] - 0.1  # the attacks do break examples at this radius
