"""The worst case holds on a gradient-masked model: kdbench's robust@eps is within 2 points of (or below) a strong
attack written here from plain torch (tests/independent_attack.py: restarts, margin loss, rescaled logits).

The masked model is defensive distillation's recipe in small: a CNN trained on softmax(z / T) at T = 100 and
deployed on its raw logits z, so its softmax saturates and CE gradients vanish (Carlini & Wagner 2016)."""

import pytest
import torch
import torch.nn.functional as F

from independent_attack import strong_robust
from kdbench.evaluation.evaluate import evaluate
from kdbench.suite.configs import EvalConfig

T = 100.0
# the default suite's attacks and budgets at its headline eps
EV = EvalConfig(attacks=("fgsm", "pgd", "apgd-ce", "apgd-dlr"), eps=(0.1,), pgd_steps=20, pgd_step_ratio=0.25,
                apgd_steps=50, sweep_eps=(), corruptions=(), noise_families=(), sanity=False, transfer=False)


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
