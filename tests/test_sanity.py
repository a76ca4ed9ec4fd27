"""Worst-case aggregation and the sanity flags: each fires on a constructed case and stays silent on a clean one;
end to end, a softmax-saturated model is caught and an undefended one is not."""

import dataclasses

import pytest
import torch
from torch import nn

from kdbench.evaluation.evaluate import evaluate, worst_case
from kdbench.evaluation.sanity import FLAGS, compute_flags
from kdbench.suite.configs import EvalConfig


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
        "convergence": {"eps": "0.1", "robust": 0.45, "robust_with_strong_attack": 0.44, "attack": "apgd-dlr"},
        "randomness": {"max_normalised_diff": 0.0, "examples": 200, "predictions_differ": 0},
        "probability_outputs": {"rows_are_probabilities": False, "min": -3.0, "max": 9.0, "max_row_sum_error": 4.0},
        "unbounded": {"eps": "0.5", "acc": 0.0, "chance": 0.1},
        "blackbox": {"eps": "0.1", "examples": 0, "fraction": 0.0},
        "training": {"clean": 0.95, "chance": 0.103, "threshold": 0.153, "top_prediction_share": 0.11,
                     "loss_first_epoch": 1.1, "loss_last_epoch": 0.1, "epochs": 12},
        "l2": {  # the L2 threat model's own evidence: its flags carry the suffix -l2
            "eps": ["0.5"],
            "acc": {"apgd-ce-l2@0.5": 0.50, "apgd-dlr-l2@0.5": 0.48},
            "convergence": {"eps": "0.5", "robust": 0.45, "robust_with_strong_attack": 0.44, "attack": "apgd-ce-l2"},
            "unbounded": {"eps": "4", "acc": 0.0, "chance": 0.1},
            "blackbox": {"eps": "0.5", "examples": 0, "fraction": 0.0},
        },
    }


FIRING = {
    "pgd-above-fgsm": lambda e: e["acc"].update({"pgd@0.1": 0.70, "apgd-dlr@0.1": 0.65}),
    "ce-above-margin": lambda e: e["acc"].update({"pgd@0.1": 0.59, "apgd-dlr@0.1": 0.30}),
    "zero-gradients": lambda e: e.update(zero_grad_fraction=0.6),
    "not-converged": lambda e: e["convergence"].update(robust_with_strong_attack=0.30),
    "randomized-outputs": lambda e: e["randomness"].update(max_normalised_diff=0.01),
    "probability-outputs": lambda e: e["probability_outputs"].update(rows_are_probabilities=True),
    "unbounded-not-broken": lambda e: e["unbounded"].update(acc=0.5),
    "blackbox-beats-whitebox": lambda e: e["blackbox"].update(examples=20, fraction=0.05),
    "training-failed": lambda e: e["training"].update(clean=0.12, top_prediction_share=0.95),
    "ce-above-margin-l2": lambda e: e["l2"]["acc"].update({"apgd-ce-l2@0.5": 0.59, "apgd-dlr-l2@0.5": 0.30}),
    "not-converged-l2": lambda e: e["l2"]["convergence"].update(robust_with_strong_attack=0.30),
    "unbounded-not-broken-l2": lambda e: e["l2"]["unbounded"].update(acc=0.5),
    "blackbox-beats-whitebox-l2": lambda e: e["l2"]["blackbox"].update(examples=20, fraction=0.05),
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
    metrics, flags, details = evaluate(Saturated(model).eval(), x[:100], y[:100], 10, EV, seed=1, headline_eps=0.1)
    assert "zero-gradients" in flags and "ce-above-margin" in flags
    assert metrics["pgd@0.1"] > metrics["apgd-dlr@0.1"] + 0.1
    assert metrics["robust@0.1"] <= metrics["apgd-dlr@0.1"]


def test_undefended_model_raises_no_masking_flag(trained):
    model, x, y = trained
    metrics, flags, _ = evaluate(model, x, y, 10, EV, seed=1, headline_eps=0.1)
    assert "zero-gradients" not in flags and "ce-above-margin" not in flags
    assert "unbounded-not-broken" not in flags
    assert metrics["sweep@0.5"] <= 0.1


class Randomized(nn.Module):
    """Logits plus fresh noise at every call, in eval mode too (a randomised defence)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        z = self.inner(x)
        return z + 0.5 * torch.randn_like(z)


class Probabilities(nn.Module):
    """A model that outputs softmax probabilities instead of logits."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).softmax(1)


QUICK = EvalConfig(attacks=("fgsm",), eps=(0.1,), sweep_eps=(), corruptions=(), transfer=False, noise_families=())


@pytest.mark.parametrize("wrapper,flag", [(Randomized, "randomized-outputs"), (Probabilities, "probability-outputs")])
def test_output_checks_fire_on_such_models_and_not_on_logits(trained, wrapper, flag):
    model, x, y = trained
    _, flags, details = evaluate(wrapper(model).eval(), x[:64], y[:64], 10, QUICK, seed=1, headline_eps=0.1)
    assert flag in flags and details[flag]
    _, flags, _ = evaluate(model, x[:64], y[:64], 10, QUICK, seed=1, headline_eps=0.1)
    assert flag not in flags


def test_not_converged_reruns_the_strongest_attack(trained, monkeypatch):
    """The convergence check re-runs the attack with the lowest accuracy (here APGD-DLR on a saturated model,
    where PGD is useless), at twice its steps."""
    import kdbench.evaluation.evaluate as ev_mod

    model, x, y = trained
    calls = []
    real = ev_mod.attack_correct

    def spy(name, *args, **kw):
        calls.append((name, args[4].apgd_steps))
        return real(name, *args, **kw)

    monkeypatch.setattr(ev_mod, "attack_correct", spy)
    _, _, details = evaluate(Saturated(model).eval(), x[:100], y[:100], 10, EV, seed=1, headline_eps=0.1)
    strong = [c for c in calls if c[1] == 2 * EV.apgd_steps]
    assert strong and {n for n, _ in strong} == {"apgd-dlr"}


def test_two_classes_skip_the_dlr_attacks_with_a_note(trained, monkeypatch):
    """With 2 classes the DLR losses (>= 3 classes) and targeted DLR (>= 4) cannot run: skipped and noted.
    Which components run does not depend on their strength: AutoAttack runs here at 5 steps and 50 queries (its
    reference strength, 100 steps and 5000 queries, takes half a minute on these 40 images)."""
    from kdbench.evaluation import autoattack

    monkeypatch.setattr(autoattack, "REFERENCE_STEPS", 5)
    monkeypatch.setattr(autoattack, "REFERENCE_QUERIES", 50)
    model, x, y = trained
    keep = (y == 0) | (y == 1)

    class TwoClass(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)[:, :2]

    cfg = dataclasses.replace(EV, attacks=("pgd", "apgd-dlr", "autoattack"), sweep_eps=(0.1, 0.5))
    metrics, _, details = evaluate(TwoClass(model).eval(), x[keep][:40], y[keep][:40], 2, cfg, seed=1,
                                   headline_eps=0.1)
    assert "apgd-dlr@0.1" not in metrics and "autoattack@0.1" in metrics and "sweep@0.5" in metrics
    assert "autoattack/apgd-t@0.1" not in metrics and "autoattack/fab-t@0.1" in metrics
    notes = " | ".join(details["notes"])
    assert "apgd-dlr: skipped" in notes and "apgd-t skipped" in notes


def test_the_convergence_check_is_kept_once_and_old_records_still_read():
    """A record keeps the convergence check under `flag_evidence.convergence`; the flag keeps only the drop and
    where the check is. Records of the earlier format (the check under the flag, alone or also beside it) read the
    same in the model cards."""
    from kdbench.evaluation.sanity import CONVERGENCE_DROP, convergence_check
    from kdbench.reporting.cards import _convergence_drop

    ev = clean_evidence()
    FIRING["not-converged"](ev)
    fired, details = compute_flags(ev)
    check = ev["convergence"]
    assert fired == ["not-converged"] and details["not-converged"]["check"] == "convergence"
    assert "robust_with_strong_attack" not in details["not-converged"]
    assert details["not-converged"]["drop"] == pytest.approx(0.15) and 0.15 > CONVERGENCE_DROP
    now = {**details, "convergence": check}  # what evaluate keeps
    for evidence in (now, {"not-converged": check}, {"not-converged": check, "convergence": check}):
        assert convergence_check(evidence) == check
    assert convergence_check({"notes": []}) is None
    records = [{"seed": 1, "flag_evidence": now}, {"seed": 2, "flag_evidence": {"not-converged": dict(check)}},
               {"seed": 3, "flag_evidence": {}}]
    drop = _convergence_drop(records)
    assert drop["per_seed"] == {"1": pytest.approx(0.15), "2": pytest.approx(0.15)}  # seed 3 holds no check


def test_training_failed_explains_the_attack_flags_a_model_that_learned_nothing_fires():
    """A model at chance fires flags that blame the attack (here zero gradients, a CE attack far above the margin
    attack, accuracy above chance at the largest eps): training-failed says what happened instead and keeps their
    evidence; the output checks are facts about the model and stay. With eval.sanity off it is still judged."""
    ev = clean_evidence()
    for name in ("training-failed", "zero-gradients", "ce-above-margin", "unbounded-not-broken", "randomized-outputs"):
        FIRING[name](ev)
    fired, details = compute_flags(ev)
    assert fired == ["training-failed", "randomized-outputs"]
    superseded = details["training-failed"]["superseded"]
    assert set(superseded) == {"zero-gradients", "ce-above-margin", "unbounded-not-broken"}
    assert superseded["zero-gradients"]["zero_grad_fraction"] == 0.6 and "zero-gradients" not in details
    assert compute_flags(ev, sanity=False)[0] == ["training-failed"]
    healthy = clean_evidence()
    FIRING["zero-gradients"](healthy)
    assert compute_flags(healthy) == (["zero-gradients"], {"zero-gradients": details["training-failed"]["superseded"]
                                                           ["zero-gradients"]})
    assert compute_flags(healthy, sanity=False) == ([], {})


def test_training_evidence_measures_chance_by_the_majority_class():
    """Chance is what a model that ignores its input scores at best: the majority-class rate of the test labels,
    with a margin of 5 points, or 3 standard errors of that rate on a small test set."""
    from kdbench.evaluation.sanity import CHANCE_MARGIN, training_evidence

    y = torch.tensor([0] * 30 + [1] * 60 + [2] * 310)  # 400 examples, class 2 the majority (77.5 %)
    constant = torch.zeros(400, 3)
    constant[:, 2] = 1.0
    ev = training_evidence(constant, y, [{"ce": 1.1, "kl": 0.1}, {"ce": 1.0, "kl": 0.1}])
    assert ev["clean"] == pytest.approx(0.775) and ev["chance"] == 0.775 and ev["top_prediction_share"] == 1.0
    assert ev["threshold"] == pytest.approx(0.775 + 3 * (0.775 * 0.225 / 400) ** 0.5)  # 3 SE: 6.3 points > 5
    assert ev["loss_first_epoch"] == pytest.approx(1.2) and ev["loss_last_epoch"] == pytest.approx(1.1)
    assert FLAGS.get("training-failed").check({"training": ev}) is not None
    big = training_evidence(torch.randn(1000, 10), torch.arange(1000) % 10, None)
    assert big["chance"] == 0.1 and big["threshold"] == pytest.approx(0.1 + CHANCE_MARGIN)  # 3 SE: 2.8 points
    assert big["loss_first_epoch"] is None and big["epochs"] == 0


def test_no_committed_record_of_the_default_suite_fails_training():
    """The rule against every committed record: the lowest clean accuracy there (an under-trained defensive
    student, 59 %) is far above digits' chance (10.3 %, the majority class of the test split)."""
    import json

    from conftest import ROOT
    from kdbench.data.load import load_data
    from kdbench.data.registry import DataConfig
    from kdbench.evaluation.sanity import CHANCE_MARGIN, CHANCE_SES

    y = load_data(DataConfig()).y_test
    chance = torch.bincount(y).max().item() / len(y)
    threshold = chance + max(CHANCE_MARGIN, CHANCE_SES * (chance * (1 - chance) / len(y)) ** 0.5)
    records = [json.loads(p.read_text()) for p in (ROOT / "results/robustness/records").glob("*.json")]
    assert len(records) >= 63 and 0.10 < chance < 0.11
    for r in records:
        ev = {"training": {"clean": r["metrics"]["clean"], "threshold": threshold}}
        assert FLAGS.get("training-failed").check(ev) is None, (r["method"], r["seed"], r["metrics"]["clean"])
        assert ("training-failed" in r["flags"]) == (r["metrics"]["clean"] <= threshold)
