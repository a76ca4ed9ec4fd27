"""Worst-case aggregation and the sanity flags: each fires on a constructed case and stays silent on a clean one;
end to end, a softmax-saturated model is caught and an undefended one is not."""

import pytest
import torch
from torch import nn

from kdbench.evaluate import evaluate, worst_case
from kdbench.sanity import FLAGS, compute_flags
from kdbench.suite import EvalConfig


def test_worst_case_hand_built():
    clean = torch.tensor([1, 1, 1, 1, 0], dtype=torch.bool)
    fgsm = torch.tensor([1, 0, 1, 1, 1], dtype=torch.bool)
    pgd = torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool)
    dlr = torch.tensor([1, 1, 1, 0, 1], dtype=torch.bool)
    got = worst_case([clean, fgsm, pgd, dlr])
    assert got.tolist() == [True, False, False, False, False]
    # the worst case is below each attack's accuracy (1/5 vs 4/5 each)
    assert got.float().mean() == 0.2


def clean_evidence():
    return {
        "eps": ["0.1"],
        "acc": {"fgsm@0.1": 0.60, "pgd@0.1": 0.50, "apgd-dlr@0.1": 0.48},
        "zero_grad_fraction": 0.0,
        "median_logit_margin": 8.0,
        "convergence": {"eps": "0.1", "robust": 0.45, "robust_with_strong_pgd": 0.44, "strong_pgd": 0.47},
        "unbounded": {"eps": "0.5", "acc": 0.0, "chance": 0.1},
        "blackbox": {"eps": "0.1", "examples": 0, "fraction": 0.0},
    }


FIRING = {
    "pgd-above-fgsm": lambda e: e["acc"].update({"pgd@0.1": 0.70, "apgd-dlr@0.1": 0.65}),
    "ce-above-margin": lambda e: e["acc"].update({"pgd@0.1": 0.59, "apgd-dlr@0.1": 0.30}),
    "zero-gradients": lambda e: e.update(zero_grad_fraction=0.6),
    "not-converged": lambda e: e["convergence"].update(robust_with_strong_pgd=0.30),
    "unbounded-not-broken": lambda e: e["unbounded"].update(acc=0.5),
    "blackbox-beats-whitebox": lambda e: e["blackbox"].update(examples=20, fraction=0.05),
}


def test_every_flag_has_a_constructed_case():
    assert set(FIRING) == set(FLAGS.names())


def test_flags_silent_on_clean_evidence():
    assert compute_flags(clean_evidence()) == ([], {})


@pytest.mark.parametrize("name", sorted(FIRING))
def test_flag_fires_alone_on_its_case(name):
    ev = clean_evidence()
    FIRING[name](ev)
    fired, details = compute_flags(ev)
    assert fired == [name]
    assert details[name]  # the evidence that made it fire is kept


class Saturated(nn.Module):
    """A model deployed with logits scaled by 1000: CE gradients underflow to exactly zero (like a
    defensively distilled network at T = 1), though its decision boundary is unchanged."""

    def __init__(self, inner, scale=1000.0):
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x):
        return self.inner(x) * self.scale


@pytest.fixture(scope="module")
def trained(trained_digits_model):
    model, data = trained_digits_model
    return model, data.x_test[:200], data.y_test[:200]


EV = EvalConfig(attacks=("fgsm", "pgd", "apgd-dlr"), eps=(0.1,), pgd_steps=10, apgd_steps=20,
                sweep_eps=(0.1, 0.5), corruptions=(), transfer=False)


def test_masked_gradients_are_caught(trained):
    model, x, y = trained
    metrics, flags, details = evaluate(Saturated(model).eval(), x, y, 10, EV, seed=1, headline_eps=0.1)
    assert "zero-gradients" in flags and "ce-above-margin" in flags
    assert metrics["pgd@0.1"] > metrics["apgd-dlr@0.1"] + 0.1
    assert metrics["robust@0.1"] <= metrics["apgd-dlr@0.1"]


def test_undefended_model_raises_no_masking_flag(trained):
    model, x, y = trained
    metrics, flags, _ = evaluate(model, x, y, 10, EV, seed=1, headline_eps=0.1)
    assert "zero-gradients" not in flags and "ce-above-margin" not in flags
    assert "unbounded-not-broken" not in flags
    assert metrics["sweep@0.5"] <= 0.1
