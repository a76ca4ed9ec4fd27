"""Paired comparison of two leaderboard rows (a method and its baseline) on one metric, and Holm's correction.

Jobs of one seed share the teacher seed, the student's initialisation and the batch order, and every job is
evaluated on the same test examples, so the design is paired twice: on seeds and on examples. Much of the
spread between seeds is shared by every method (a teacher seed that is easy to distil); it cancels in a paired
difference and inflates an unpaired one.

The difference is `d = mean over seeds of (metric(method, s) - metric(baseline, s))`. Its test depends on what
the records hold:

- **crossed** (per-example masks, >= 2 seeds): the per-example differences D[s, i] in {-1, 0, 1} form a
  seeds x examples crossed design. With seeds and examples both random (the question is about new training runs
  and the example distribution, not this test set), a two-way random-effects ANOVA gives
      Var(d) = (MS_seed + MS_example - MS_error) / (k N),
  each variance component truncated at 0, with Satterthwaite's degrees of freedom and a Student-t interval.
  When the per-seed differences vary no more than example noise predicts, the seed term drops out and the test
  has the power of k N paired examples (3 seeds x 360 examples on digits); when they vary more, the seed term
  dominates and the degrees of freedom fall towards k - 1, as in the seed-level t-test. A hierarchical bootstrap
  (seeds, then examples) was not used: with 3-5 seeds it has only k^k distinct seed resamples and its seed
  level under-covers (the bootstrap variance of a mean of k is (k-1)/k of the unbiased one and it uses no
  t quantile), while resampling examples inside resampled seeds counts the example noise twice.
- **seed-t** (no masks, >= 2 seeds): a paired t-test on the k per-seed differences (k - 1 degrees of freedom).
- **mcnemar** (masks, 1 seed): an exact McNemar test on the discordant examples. It says whether these two
  trained models differ on this example distribution; with one seed it cannot say whether another training
  seed would agree, and the interval (Wald, paired proportions) covers example noise only.
- **none** (no masks, 1 seed): no test applies; the difference is shown without interval or marker.

Significance is decided only after Holm's step-down correction over every comparison of a table (family-wise
error 5%). The smallest detectable difference of a comparison is (t_{1-a/2} + t_{0.8}) * SE at a = 0.05 / m
(80% power at the strictest Holm step, m comparisons in the table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
TESTS = {
    "crossed": "two-way (seeds x examples) random-effects paired test",
    "seed-t": "paired t-test over seeds",
    "mcnemar": "exact McNemar test on the examples (one seed: covers example noise, not seed-to-seed variation)",
    "none": "no test (one seed, no per-example data)",
}


@dataclass(frozen=True)
class Paired:
    diff: float  # mean paired difference (fraction of examples)
    low: float  # 95% interval, NaN when no test applies
    high: float
    p: float  # two-sided p-value, NaN when no test applies
    se: float
    df: float
    test: str  # a key of TESTS
    seeds: int

    def detectable(self, m: int) -> float:
        """Smallest true difference found with 80% power at the Holm threshold of the first of m comparisons."""
        if not (self.se > 0) or math.isnan(self.df):
            return float("nan")
        q = stats.norm if math.isinf(self.df) else stats.t(self.df)
        return float((q.ppf(1 - ALPHA / (2 * max(m, 1))) + q.ppf(POWER)) * self.se)


def _t_result(diff: float, se: float, df: float, test: str, k: int) -> Paired:
    if se <= 0 or not math.isfinite(se):
        p = 1.0 if diff == 0 else 0.0
        return Paired(diff, diff, diff, p, 0.0, df, test, k)
    q = stats.norm if math.isinf(df) else stats.t(df)
    half = float(q.ppf(0.975)) * se
    p = float(2 * q.sf(abs(diff) / se))
    return Paired(diff, diff - half, diff + half, p, se, df, test, k)


def crossed(D: np.ndarray) -> Paired:
    """D: k seeds x N examples of per-example differences (method correct - baseline correct)."""
    D = np.asarray(D, dtype=float)
    k, n = D.shape
    mu = D.mean()
    seed_means, ex_means = D.mean(1), D.mean(0)
    ms_s = n * ((seed_means - mu) ** 2).sum() / (k - 1)
    ms_i = k * ((ex_means - mu) ** 2).sum() / (n - 1)
    resid = D - seed_means[:, None] - ex_means[None, :] + mu
    ms_e = (resid ** 2).sum() / ((k - 1) * (n - 1))
    # variance components truncated at zero; the mean squares the estimate is made of, with their df
    df_s, df_i, df_e = k - 1, n - 1, (k - 1) * (n - 1)
    if ms_s > ms_e and ms_i > ms_e:
        parts = [(ms_s, df_s), (ms_i, df_i), (-ms_e, df_e)]
    elif ms_s > ms_e:
        parts = [(ms_s, df_s)]
    elif ms_i > ms_e:
        parts = [(ms_i, df_i)]
    else:
        parts = [(ms_e, df_e)]
    total = sum(v for v, _ in parts)
    se = math.sqrt(max(total, 0.0) / (k * n))
    denom = sum(v * v / d for v, d in parts)
    df = total * total / denom if denom > 0 else float("inf")
    return _t_result(float(mu), se, max(df, float(k - 1)), "crossed", k)


def seed_t(diffs) -> Paired:
    d = np.asarray(diffs, dtype=float)
    k = len(d)
    return _t_result(float(d.mean()), float(d.std(ddof=1) / math.sqrt(k)), float(k - 1), "seed-t", k)


def mcnemar(a: np.ndarray, b: np.ndarray) -> Paired:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    n = len(a)
    gain, loss = int((a & ~b).sum()), int((~a & b).sum())
    diff = (gain - loss) / n
    p = float(stats.binomtest(gain, gain + loss, 0.5).pvalue) if gain + loss else 1.0
    se = math.sqrt(max((gain + loss) / n - diff * diff, 0.0) / n)
    half = 1.959964 * se
    return Paired(diff, diff - half, diff + half, p, se, float("inf"), "mcnemar", 1)


def compare(values: dict, base_values: dict, masks: dict | None = None, base_masks: dict | None = None) -> Paired | None:
    """Paired difference of `values` - `base_values` ({seed: metric}) over their common seeds; `masks` and
    `base_masks` ({seed: bool array}) enable the example-level tests when every common seed has both."""
    seeds = sorted(set(values) & set(base_values))
    if not seeds:
        return None
    masks, base_masks = masks or {}, base_masks or {}
    paired_masks = all(s in masks and s in base_masks and len(masks[s]) == len(base_masks[s]) for s in seeds)
    if paired_masks and len({len(masks[s]) for s in seeds}) == 1:
        if len(seeds) == 1:
            return mcnemar(masks[seeds[0]], base_masks[seeds[0]])
        D = np.stack([masks[s].astype(np.int8) - base_masks[s].astype(np.int8) for s in seeds])
        return crossed(D)
    diffs = [values[s] - base_values[s] for s in seeds]
    if len(seeds) == 1:
        return Paired(diffs[0], float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), "none", 1)
    return seed_t(diffs)


def holm(pvalues: list[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down rejections (family-wise error `alpha`); NaN p-values are never rejected and not counted."""
    idx = sorted((i for i, p in enumerate(pvalues) if not math.isnan(p)), key=lambda i: pvalues[i])
    m = len(idx)
    out = [False] * len(pvalues)
    for rank, i in enumerate(idx):
        if pvalues[i] > alpha / (m - rank):
            break
        out[i] = True
    return out
