"""Calibration metrics (evaluation/calibration.py) against hand-computed values, and in the evaluation's record."""

import math

import pytest
import torch

from kdbench.evaluation.calibration import calibration, reliability


def logits_for(probabilities):
    """Logits whose softmax is `probabilities` (rows summing to 1)."""
    return torch.tensor(probabilities, dtype=torch.float64).log()


def test_ece_nll_brier_by_hand():
    """Four predictions, two classes. Confidences 0.9, 0.9, 0.6, 0.55 fall in the bins (13/15, 14/15] (the two
    0.9s) and (8/15, 9/15] (0.55 and 0.6). Bin (13/15, 14/15]: accuracy 1/2, mean confidence 0.9 -> |0.5 - 0.9| = 0.4
    on 2 of 4; bin (8/15, 9/15]: accuracy 1, mean confidence 0.575 -> 0.425 on 2 of 4. ECE = (2 * 0.4 + 2 * 0.425) / 4.
    NLL = -(log 0.9 + log 0.1 + log 0.6 + log 0.55) / 4; Brier = mean of sum_c (p_c - y_c)^2."""
    p = [[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.55, 0.45]]
    y = torch.tensor([0, 1, 1, 0])
    got = calibration(logits_for(p), y)
    assert got["ece"] == pytest.approx((2 * 0.4 + 2 * 0.425) / 4)
    assert got["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.1) + math.log(0.6) + math.log(0.55)) / 4)
    brier = [(0.9 - 1) ** 2 + 0.1 ** 2, 0.9 ** 2 + (0.1 - 1) ** 2, 0.4 ** 2 + (0.6 - 1) ** 2,
             (0.55 - 1) ** 2 + 0.45 ** 2]
    assert got["brier"] == pytest.approx(sum(brier) / 4)
    r = reliability(logits_for(p), y)
    assert r["bins"] == 15 and sum(r["count"]) == 4 and r["count"][13] == 2 and r["count"][8] == 2


def test_bins_are_closed_on_the_right():
    """A confidence of exactly b/15 belongs to bin b - 1, as in Guo et al.'s code ((lower, upper])."""
    p = [[1 / 3, 1 / 3, 1 / 3], [2 / 3, 1 / 6, 1 / 6]]  # 1/3 = 5/15 and 2/3 = 10/15
    r = reliability(logits_for(p), torch.tensor([0, 0]))
    assert r["count"][4] == 1 and r["count"][9] == 1


def test_perfectly_confident_and_right_is_perfectly_calibrated():
    z = torch.tensor([[50.0, 0.0, 0.0], [0.0, 0.0, 50.0]])
    got = calibration(z, torch.tensor([0, 2]))
    assert got["ece"] == pytest.approx(0.0, abs=1e-12) and got["nll"] == pytest.approx(0.0, abs=1e-12)
    assert got["brier"] == pytest.approx(0.0, abs=1e-12)


def test_evaluation_records_calibration_on_clean_data_and_corruptions(trained_digits_model):
    from kdbench.evaluation.evaluate import evaluate
    from kdbench.suite.configs import EvalConfig

    model, data = trained_digits_model
    x, y = data.x_test[:100], data.y_test[:100]
    ev = EvalConfig(attacks=("fgsm",), eps=(0.1,), sweep_eps=(), corruptions=("gaussian_noise", "contrast"),
                    severities=(1, 5), noise_families=(), transfer=False, sanity=False)
    metrics, _, details = evaluate(model, x, y, 10, ev, seed=1, headline_eps=0.1)
    with torch.no_grad():
        expected = calibration(model(x), y)
    for k in ("ece", "nll", "brier"):
        assert metrics[k] == pytest.approx(expected[k], abs=1e-6)
        per = [metrics[f"{k}/gaussian_noise"], metrics[f"{k}/contrast"]]
        assert metrics[f"corruption-{k}"] == pytest.approx(sum(per) / 2)  # averaged as mca: over every set
    assert sum(details["calibration"]["count"]) == len(x)
