"""How far another machine moves a metric, measured; the tolerance that follows and the drop it can still see.

A re-run of a job on another machine (other CPU kernels, another thread count) sums floats in another order;
training amplifies the last bits, and the re-run's student is a slightly different model. Model: the
difference d_s = y_s - x_s of a metric between two such runs of seed s is N(0, tau^2), independent across
seeds, with tau^2 its own for each (leaderboard row, metric).

**Measured.** The baseline carries a re-run of each of its jobs under other float order (`check
--update-baseline --variation`): k differences e_s per (row, metric), so s^2 = (sum_s e_s^2 + 1/N^2) / k with
k degrees of freedom (the mean is 0 by the model; 1/N^2, one example of N, keeps a metric that did not move
from getting a zero tolerance).

**Moderated.** k is 1-5: a variance on so few degrees of freedom, used at a Bonferroni level over hundreds of
metrics, would need t quantiles of 10-70. The variances of one metric across the rows of a suite are pooled by
empirical Bayes (Smyth 2004, "Linear models and empirical Bayes methods for assessing differential expression
in microarray experiments", the moderated t of limma): tau^2 of the rows follows a scaled inverse chi^2 prior
with d0 degrees of freedom around s0^2, estimated from the spread of log s^2 across the rows (method of
moments with the digamma and trigamma functions); each row's posterior variance is

    s~^2 = (d0 s0^2 + k s^2) / (d0 + k),   on nu = d0 + k degrees of freedom,

and with no change, mean_s(d) / (s~ / sqrt(k_c)) follows Student's t with nu degrees of freedom (k_c: the seeds
compared). When the rows vary alike, d0 is large and each row borrows their strength; when they differ, d0 is
small and each row keeps its own, wider, t quantile. d0 is capped at the degrees of freedom of all the rows.

**Tolerance and power.** Over M metrics checked at once, a drop fails when mean(d) < -t_nu(1 - alpha/M) *
s~ / sqrt(k_c) (one-sided: only a drop fails; Bonferroni keeps the chance that machine variation alone fails
the check below alpha). The smallest drop found with 80% power is that tolerance + z(0.8) * s~ / sqrt(k_c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special, stats

POWER = 0.8
CONFIDENCE = 0.9  # how sure the prior must be that the rows are alike (fit_prior)


@dataclass(frozen=True)
class Variation:
    """A metric's cross-machine variation per seed: sd (accuracy units) on df degrees of freedom (inf: known)."""

    sd: float
    df: float


@dataclass(frozen=True)
class Prior:
    """The variance of one metric across a suite's rows: scaled inverse chi^2 with df around s2."""

    s2: float
    df: float


def measured_s2(diffs: list[float], n: int | None) -> float:
    """s^2 of the measured differences (mean 0 by the model), one example's worth (1/N^2) added."""
    floor = 1.0 / n ** 2 if n else 0.0
    return (sum(d * d for d in diffs) + floor) / len(diffs)


def _trigamma_inverse(x: float) -> float:
    """y with trigamma(y) = x (Newton's method as in limma's trigammaInverse)."""
    if x > 1e7:
        return 1.0 / math.sqrt(x)
    if x < 1e-6:
        return 1.0 / x
    y = 0.5 + 1.0 / x
    for _ in range(50):
        tri = float(special.polygamma(1, y))
        step = tri * (1 - tri / x) / float(special.polygamma(2, y))
        y += step
        if -step / y < 1e-8:
            break
    return y


def fit_prior(s2s: list[float], dfs: list[float], confidence: float = CONFIDENCE) -> Prior | None:
    """The prior of Smyth (2004) from the variances `s2s` (each on `dfs` degrees of freedom) of one metric
    across rows; None with fewer than two rows of two seeds or more (a row of one seed is moderated by the prior,
    but its log s^2, on one degree of freedom, scatters so widely that it would hide how much the rows differ).
    The spread of log s^2 across the rows is taken at its upper `confidence` bound (chi^2 on rows - 1 degrees of
    freedom): with 20 rows its point estimate often says the rows are alike when they differ by a factor of two,
    and a prior that pools them then gives the more variable rows too tight a tolerance."""
    pairs = [(s2, df) for s2, df in zip(s2s, dfs) if s2 > 0 and df >= 2]
    if len(pairs) < 2:
        return None
    e = [math.log(s2) - special.digamma(df / 2) + math.log(df / 2) for s2, df in pairs]
    mean = sum(e) / len(e)
    spread = sum((x - mean) ** 2 for x in e) / (len(e) - 1) * (len(e) - 1) / stats.chi2.ppf(1 - confidence,
                                                                                          len(e) - 1)
    excess = spread - sum(special.polygamma(1, df / 2) for _, df in pairs) / len(pairs)
    cap = sum(df for _, df in pairs)
    d0 = cap if excess <= 0 else min(2 * _trigamma_inverse(excess), cap)
    s2 = math.exp(mean + special.digamma(d0 / 2) - math.log(d0 / 2))
    return Prior(s2, d0)


def moderate(s2: float | None, df: float, prior: Prior | None) -> Variation | None:
    """The posterior variation of one (row, metric): its own s^2 on df, shrunk towards the prior, never below
    its own s^2 (a row that measured more variation than its peers keeps it)."""
    if prior is None:
        return None if s2 is None else Variation(math.sqrt(s2), df)
    if s2 is None:
        return Variation(math.sqrt(prior.s2), prior.df)
    return Variation(math.sqrt(max((prior.df * prior.s2 + df * s2) / (prior.df + df), s2)), prior.df + df)


def quantile(level: float, df: float) -> float:
    """The upper `level` quantile of Student's t on df degrees of freedom (the normal's for df = inf)."""
    return float(stats.norm.isf(level) if math.isinf(df) else stats.t.isf(level, df))


def tolerance(v: Variation, seeds: int, level: float) -> float:
    """The largest drop of the mean over `seeds` seeds that machine variation explains at one-sided `level`."""
    return quantile(level, v.df) * v.sd / math.sqrt(seeds)


def detectable(v: Variation, seeds: int, level: float, power: float = POWER) -> float:
    """The smallest drop of the mean over `seeds` seeds found with probability `power` at one-sided `level`."""
    return tolerance(v, seeds, level) + float(stats.norm.ppf(power)) * v.sd / math.sqrt(seeds)
