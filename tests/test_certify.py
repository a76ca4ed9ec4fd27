"""Randomized smoothing's CERTIFY (evaluation/certify.py) against a model whose smoothed prediction is known in
closed form: a linear two-class classifier f(x) = [w.x + b > 0]. Under x + N(0, sigma^2 I) the margin w.x + b is
normal with mean m = w.x + b and standard deviation sigma ||w||, so p_A = Phi(|m| / (sigma ||w||)) exactly and the
smoothed classifier's radius sigma Phi^-1(p_A) = |m| / ||w|| is the distance to the hyperplane: no L2
perturbation smaller than it changes the prediction, and CERTIFY's radius (from a lower bound on p_A) must stay
below it."""

import math

import pytest
import torch
from scipy import stats
from torch import nn

from kdbench.evaluation.certify import (
    ABSTAIN,
    certified_metrics,
    certified_radius,
    certify,
    lower_confidence_bound,
    max_radius,
    noise_counts,
)
from kdbench.suite.configs import CertifyConfig


class Linear2(nn.Module):
    """Logits (m, -m) with m = w.x + b: class 0 where m > 0."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w, self.b = w.flatten(), b

    def forward(self, x):
        m = x.flatten(1) @ self.w + self.b
        return torch.stack([m, -m], 1)


@pytest.fixture(scope="module")
def linear():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 8, 8, generator=g)
    x = torch.rand(40, 1, 8, 8, generator=g)
    model = Linear2(w, b=-(x.flatten(1) @ w.flatten()).median().item())  # half the examples on each side
    margin = x.flatten(1) @ model.w + model.b
    y = (margin <= 0).long()  # the label is the base (and the smoothed) prediction
    return model, x, y, margin.abs() / model.w.norm()  # the exact distance to the decision boundary


def test_lower_confidence_bound_is_the_clopper_pearson_one():
    """P(Bin(n, p_lower) >= k) = alpha: the one-sided (1 - alpha) Clopper-Pearson bound; 0 without a success,
    alpha^(1/n) with n of n."""
    for k, n, alpha in [(90, 100, 0.001), (512, 600, 0.05), (1, 10, 0.01), (99_950, 100_000, 0.001)]:
        p = lower_confidence_bound(k, n, alpha)
        assert stats.binom.sf(k - 1, n, p) == pytest.approx(alpha, rel=1e-6)
    assert lower_confidence_bound(0, 100, 0.001) == 0.0
    assert lower_confidence_bound(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100))
    assert max_radius(100, 0.001, 0.5) == pytest.approx(0.5 * stats.norm.ppf(0.001 ** (1 / 100)))


def test_counts_follow_the_closed_form_probability(linear):
    """The fraction of noisy copies classified as the smoothed class matches p_A = Phi(|m| / (sigma ||w||)) within
    binomial noise (4 standard deviations over all examples)."""
    model, x, y, dist = linear
    sigma, n = 0.5, 4000
    counts = noise_counts(model, x, sigma, n, 2, 1000, list(range(len(x))))
    p_a = torch.tensor(stats.norm.cdf((dist / sigma).numpy()))
    got = counts[torch.arange(len(x)), y].double() / n
    sd = (p_a * (1 - p_a) / n).sqrt().clamp_min(1e-4)
    assert ((got - p_a).abs() / sd).max() < 4.5
    assert counts.sum(1).eq(n).all()


def test_certified_radius_is_below_the_exact_distance_and_close_to_it(linear):
    """With probability 1 - alpha per example, CERTIFY's radius is at most the exact one; with n = 20,000 samples
    it is within the Clopper-Pearson bound's own slack of it, computed here from the closed-form p_A. alpha = 1e-6
    makes a radius above the exact one on any of the 40 examples a 4e-5 event (at the paper's 0.001 it is 4 %)."""
    model, x, y, dist = linear
    sigma, n, alpha = 0.5, 20_000, 1e-6
    n0 = 100
    pred, radius = certify(model, x, sigma, n0, n, alpha, 2, 2000, seed=3)
    for i in range(len(x)):
        p_a = stats.norm.cdf(dist[i].item() / sigma)
        expected = certified_radius(lower_confidence_bound(round(p_a * n), n, alpha), sigma)
        if pred[i] == ABSTAIN:
            # only next to the boundary: where the n0 selection draws can pick the other class (p_A within 4
            # standard deviations of a proportion of n0 from 1/2), or the estimate cannot exceed 1/2
            assert p_a < 0.5 + 4 * 0.5 / math.sqrt(n0) or expected <= 0.0
            continue
        assert pred[i] == y[i]
        assert radius[i] <= dist[i] + 1e-9
        if p_a < 1 - 1e-3:  # p_A far from 1: the bound's slack is known; at p_A ~ 1 the radius is capped
            assert radius[i] == pytest.approx(expected, abs=0.03)
    assert (pred != ABSTAIN).sum() > len(x) // 2


def test_certification_is_seeded_per_job(linear):
    model, x, y, _ = linear
    cfg = CertifyConfig(sigma=(0.25, 0.5), n0=20, n=200, alpha=0.01, radii=(0.0, 0.1, 0.3), batch_size=64)
    a = certified_metrics(model, x, y, 2, cfg, seed=1)
    b = certified_metrics(model, x, y, 2, cfg, seed=1)
    assert a[0] == b[0] and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    # the draws of one example do not depend on the batch they share with others
    c = certified_metrics(model, x, y, 2, CertifyConfig(**{**cfg.__dict__, "batch_size": 1000}), seed=1)
    assert a[0] == c[0]
    other = certify(model, x, 0.5, 20, 200, 0.01, 2, 64, seed=2)[1]
    assert not torch.equal(other, certify(model, x, 0.5, 20, 200, 0.01, 2, 64, seed=1)[1])
    # names: per sigma, and the best sigma per radius; certified accuracy never rises with the radius
    m = a[0]
    for r in ("0", "0.1", "0.3"):
        assert m[f"certified-l2@{r}"] == max(m[f"certified-l2/sigma0.25@{r}"], m[f"certified-l2/sigma0.5@{r}"])
    assert m["certified-l2@0"] >= m["certified-l2@0.1"] >= m["certified-l2@0.3"]
    assert set(a[1]) == {"certified-l2@0", "certified-l2@0.1", "certified-l2@0.3"}


def test_skip_certifies_every_kth_example(linear):
    model, x, y, _ = linear
    cfg = CertifyConfig(sigma=(0.5,), n0=10, n=100, alpha=0.01, radii=(0.0,), skip=4, batch_size=64)
    metrics, masks, evidence = certified_metrics(model, x, y, 2, cfg, seed=1)
    assert evidence["examples"] == math.ceil(len(x) / 4)
    assert masks == {}  # per-example masks only where every example is certified (paired tests need them all)
