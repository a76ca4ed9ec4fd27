"""Certified L2 robustness by randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019, "Certified Adversarial
Robustness via Randomized Smoothing"; reference code locuslab/smoothing, code/core.py, `Smooth.certify`).

The smoothed classifier g(x) = argmax_c P(f(x + d) = c), d ~ N(0, sigma^2 I), of the base classifier f (the
student) is certified per example by CERTIFY:

1. draw n0 noisy copies x + d, count f's predictions, take the most frequent class c_A (selection);
2. draw n more, count how many n_A predict c_A (estimation);
3. p_A_lower = the one-sided (1 - alpha) Clopper-Pearson lower bound on P(f(x + d) = c_A) from n_A of n
   (the Beta(alpha; n_A, n - n_A + 1) quantile, as the reference's proportion_confint(alpha = 2 alpha, "beta"));
4. if p_A_lower < 1/2 abstain; else predict c_A, certified within the L2 radius R = sigma * Phi^-1(p_A_lower).

With probability at least 1 - alpha, g(x') = c_A for every ||x' - x||_2 < R. The certified accuracy at radius r is
the fraction of examples predicted correctly (not abstained) with R >= r, as the reference's analyze.py counts it.
Noise is added in [0, 1] pixel space, before the model's own normalisation (the reference's NormalizeLayer), and
not clipped, as the reference.

Metrics: `certified-l2/sigma<s>@<r>` for each sigma of `eval.certify.sigma` and radius r of its `radii`, and
`certified-l2@<r>`, the largest of them over sigma (the reference's tables mark the best sigma per radius; each
sigma is one smoothed classifier, so this is the best of a few classifiers, chosen on the test set).

Seeding: every example's noise comes from its own generator, seeded by the job's seed, sigma, the phase (selection
or estimation) and the example's position in the test split, and is drawn in chunks of the same size whatever the
other examples are; so a re-run of the job draws the same noise and certifies the same radii.
"""

from __future__ import annotations

import math

import torch
from scipy import stats

from ..core.metric_names import at_eps, fmt_number
from .seeds import derived_seed

ABSTAIN = -1


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion from n_a successes of n."""
    if n_a <= 0:
        return 0.0
    return float(stats.beta.ppf(alpha, n_a, n - n_a + 1))


def certified_radius(p_lower: float, sigma: float) -> float:
    """sigma * Phi^-1(p_lower): the L2 radius within which the smoothed prediction cannot change."""
    return sigma * float(stats.norm.ppf(p_lower))


@torch.no_grad()
def noise_counts(model, x: torch.Tensor, sigma: float, num: int, num_classes: int, batch_size: int,
                 seeds: list[int]) -> torch.Tensor:
    """counts[i, c]: how many of `num` noisy copies x[i] + N(0, sigma^2 I) the model classifies as c. The noise of
    x[i] comes from a generator seeded with seeds[i], drawn in chunks of `batch_size` copies whatever the other
    examples are (so its values depend on its seed alone); forward passes take `batch_size` copies, of one or
    several examples."""
    counts = torch.zeros(len(x), num_classes, dtype=torch.long)
    pending: list[torch.Tensor] = []
    owners: list[torch.Tensor] = []
    filled = 0

    def flush():
        pred = model(torch.cat(pending)).argmax(1).cpu()
        counts.index_put_((torch.cat(owners), pred), torch.ones_like(pred), accumulate=True)
        pending.clear()
        owners.clear()

    for i in range(len(x)):
        g = torch.Generator(device=x.device).manual_seed(seeds[i])
        left = num
        while left:
            chunk = x[i] + sigma * torch.randn((min(left, batch_size), *x.shape[1:]), generator=g, device=x.device,
                                               dtype=x.dtype)
            left -= len(chunk)
            while len(chunk):
                take = min(len(chunk), batch_size - filled)
                pending.append(chunk[:take])
                owners.append(torch.full((take,), i, dtype=torch.long))
                chunk, filled = chunk[take:], filled + take
                if filled == batch_size:
                    flush()
                    filled = 0
    if pending:
        flush()
    return counts


def certify(model, x: torch.Tensor, sigma: float, n0: int, n: int, alpha: float, num_classes: int,
            batch_size: int, seed: int, positions: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CERTIFY for every example of `x`: (predicted class, ABSTAIN where p_A_lower < 1/2; certified radius, 0 there).
    `seed`: the job's seed; the draws' generators are derived from it, sigma, the phase and the example's position
    in the test split (`positions`, default 0, 1, ...)."""
    s = fmt_number(sigma)
    positions = list(range(len(x))) if positions is None else positions
    pick = noise_counts(model, x, sigma, n0, num_classes, batch_size,
                        [derived_seed(seed, "certify", s, "selection", i) for i in positions])
    c_a = pick.argmax(1)
    est = noise_counts(model, x, sigma, n, num_classes, batch_size,
                       [derived_seed(seed, "certify", s, "estimation", i) for i in positions])
    n_a = est.gather(1, c_a[:, None]).squeeze(1)
    pred = torch.full((len(x),), ABSTAIN, dtype=torch.long)
    radius = torch.zeros(len(x), dtype=torch.float64)
    for i, k in enumerate(n_a.tolist()):
        p_lower = lower_confidence_bound(k, n, alpha)
        if p_lower >= 0.5:
            pred[i], radius[i] = c_a[i], certified_radius(p_lower, sigma)
    return pred, radius


def sigma_part(sigma: float) -> str:
    """The component of a per-sigma metric name: `certified-l2/sigma0.25@0.5`."""
    return f"sigma{fmt_number(sigma)}"


def certified_metrics(model, x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg, seed: int
                      ) -> tuple[dict[str, float], dict[str, torch.Tensor], dict]:
    """The certified accuracies of `cfg` (a CertifyConfig) on every `cfg.skip`-th example of (x, y): (metrics,
    per-example masks of `certified-l2@<r>` (when every example is certified), evidence per sigma)."""
    idx = torch.arange(0, len(x), cfg.skip, device=x.device)
    xs, ys = x[idx], y[idx].cpu()
    metrics: dict[str, float] = {}
    masks: dict[str, torch.Tensor] = {}
    evidence: dict = {"examples": len(idx), "n0": cfg.n0, "n": cfg.n, "alpha": cfg.alpha, "skip": cfg.skip,
                      "sigma": {}}
    per_sigma: dict[float, dict[float, torch.Tensor]] = {}
    for sigma in cfg.sigma:
        pred, radius = certify(model, xs, sigma, cfg.n0, cfg.n, cfg.alpha, num_classes, cfg.batch_size, seed,
                               idx.tolist())
        right = pred == ys
        per_sigma[sigma] = {}
        for r in cfg.radii:
            ok = right & (radius >= r)
            per_sigma[sigma][r] = ok
            metrics[at_eps("certified-l2", r, sigma_part(sigma))] = ok.float().mean().item()
        mean_r = radius[right].mean().item() if bool(right.any()) else 0.0
        evidence["sigma"][fmt_number(sigma)] = {"abstained": (pred == ABSTAIN).float().mean().item(),
                                                "smoothed_accuracy": right.float().mean().item(),
                                                "mean_radius_when_correct": round(mean_r, 6),
                                                "largest_radius": round(float(radius.max()), 6) if len(radius) else 0.0}
    for r in cfg.radii:
        best = max(cfg.sigma, key=lambda s: per_sigma[s][r].float().mean().item())  # ties: the first sigma
        metrics[at_eps("certified-l2", r)] = per_sigma[best][r].float().mean().item()
        if cfg.skip == 1:
            masks[at_eps("certified-l2", r)] = per_sigma[best][r].to(y.device)
    evidence["largest_certifiable_radius"] = {fmt_number(s): round(max_radius(cfg.n, cfg.alpha, s), 6)
                                              for s in cfg.sigma}
    return metrics, masks, evidence


def max_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius CERTIFY can give with n estimation samples (every one of them predicting c_A)."""
    return certified_radius(alpha ** (1.0 / n), sigma) if not math.isclose(alpha ** (1.0 / n), 1.0) else math.inf
