"""How far another machine moves a metric, measured; the tolerance that follows and the drop it can still see.

A re-run of a job on another machine (other CPU kernels, another thread count) sums floats in another order;
training amplifies the last bits, and the re-run's student is a slightly different model. Model: the
difference d_s = y_s - x_s of a metric between two such runs of seed s is N(0, tau^2), independent across
seeds, with tau^2 its own for each (leaderboard row, metric).

**Measured.** The baseline carries a re-run of each of its jobs under other float order (`check
--update-baseline --variation`): k differences e_s per (row, metric), so s^2 = (sum_s e_s^2 + 1/N^2) / k with
k degrees of freedom (the mean is 0 by the model; 1/N^2, one example of N, keeps a metric that did not move
from getting a zero tolerance); more re-runs add their degrees of freedom (rerun_variance).

**Moderated.** k is 1-5: a variance on so few degrees of freedom, used at a Bonferroni level over hundreds of
metrics, would need t quantiles of 10-22. The variances are pooled by empirical Bayes (Smyth 2004, "Linear
models and empirical Bayes methods for assessing differential expression in microarray experiments", the
moderated t of limma, with a prior whose centre depends on covariates, as in its `trend` variant): tau^2 of a
cell follows a scaled inverse chi^2 prior with d0 degrees of freedom around s0^2(row, metric), where
log s0^2 = mu + a_row + b_metric (some rows move more, adversarially trained ones; some metrics move more, an
attack at large eps) is fitted by least squares to the log s^2 of the cells, and d0 comes from their residual
spread (method of moments with the digamma and trigamma functions). Each cell's posterior variance is

    s~^2 = max((d0 s0^2 + k s^2) / (d0 + k), s^2),   on nu = d0 + k degrees of freedom,

and with no change, mean_s(d) / (s~ / sqrt(k_c)) follows Student's t with nu degrees of freedom (k_c: the seeds
compared). Two choices keep the prior from claiming the cells are more alike than the data show: the residual
spread enters at its upper CONFIDENCE bound (chi^2 on its degrees of freedom), and a cell never gets less than it
measured itself (the max). Cells of one seed (k = 1) are moderated but left out of the fit: their log s^2 on one
degree of freedom scatters so widely that it would hide how much the cells differ.

**Tolerance and power.** Over M metrics checked at once, a drop fails when mean(d) < -t_nu(1 - alpha/M) *
s~ / sqrt(k_c) (one-sided: only a drop fails; Bonferroni keeps the chance that machine variation alone fails
the check below alpha). The smallest drop found with 80% power is that tolerance + z(0.8) * s~ / sqrt(k_c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special, stats

POWER = 0.8
CONFIDENCE = 0.9  # how sure the prior must be that the cells are as alike as it says (fit_priors)


@dataclass(frozen=True)
class Variation:
    """A metric's cross-machine variation per seed: sd (accuracy units) on df degrees of freedom (inf: known)."""

    sd: float
    df: float


@dataclass(frozen=True)
class Prior:
    """The variance of one (row, metric) cell before its own measurement: scaled inverse chi^2 with df around s2."""

    s2: float
    df: float


def rerun_variance(runs: list[list[float]], n: int | None) -> tuple[float, int]:
    """(s^2, degrees of freedom) of the cross-machine difference of a metric from its values per seed on the
    baseline's machine and one or more others (`runs`: [[baseline, re-run, ...], ...]): each run is a draw around
    the seed's value with variance sigma^2 and a difference of two has variance 2 sigma^2, so s^2 = 2 * (sum of
    squared deviations from each seed's mean + 1/(2 N^2)) / sum of (runs - 1); with one re-run,
    (sum of e^2 + 1/N^2) / k."""
    squares = sum(sum((v - sum(vals) / len(vals)) ** 2 for v in vals) for vals in runs)
    df = sum(len(vals) - 1 for vals in runs)
    floor = 1.0 / n ** 2 if n else 0.0
    return ((2 * squares + floor) / df, df) if df else (0.0, 0)


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


def _additive_fit(e: dict, sweeps: int = 100) -> tuple[float, dict, dict]:
    """mu, {row: a}, {metric: b} of e[(row, metric)] ~ mu + a_row + b_metric by least squares (backfitting)."""
    mu = sum(e.values()) / len(e)
    a = {r: 0.0 for r, _ in e}
    b = {m: 0.0 for _, m in e}
    for _ in range(sweeps):
        for target, other, pos in ((a, b, 0), (b, a, 1)):
            sums: dict = {}
            for cell, value in e.items():
                key, rest = cell[pos], cell[1 - pos]
                total, count = sums.get(key, (0.0, 0))
                sums[key] = (total + value - mu - other[rest], count + 1)
            target.update({key: total / count for key, (total, count) in sums.items()})
    return mu, a, b


def fit_priors(cells: dict, confidence: float = CONFIDENCE) -> dict:
    """{(row, metric): Prior} for every cell of `cells` ({(row, metric): (s^2, df)}, a cell without a
    measurement given df 0), from the measured cells of two seeds or more (the module docstring); {} when fewer
    than rows + metrics of them were measured (no spread left to fit)."""
    fitted = {cell: (s2, df) for cell, (s2, df) in cells.items() if s2 > 0 and df >= 2}
    e = {cell: math.log(s2) - special.digamma(df / 2) + math.log(df / 2) for cell, (s2, df) in fitted.items()}
    free = len(e) - len({r for r, _ in e}) - len({m for _, m in e}) + 1
    if free < 2:
        return {}
    mu, a, b = _additive_fit(e)
    residual = sum((value - mu - a[r] - b[m]) ** 2 for (r, m), value in e.items()) / free
    spread = residual * free / float(stats.chi2.ppf(1 - confidence, free))
    excess = spread - sum(float(special.polygamma(1, df / 2)) for _, df in fitted.values()) / len(fitted)
    cap = sum(df for _, df in fitted.values())
    d0 = cap if excess <= 0 else min(2 * _trigamma_inverse(excess), cap)
    shift = float(special.digamma(d0 / 2)) - math.log(d0 / 2)
    return {(r, m): Prior(math.exp(mu + a.get(r, 0.0) + b.get(m, 0.0) + shift), d0) for r, m in cells}


def moderate(s2: float | None, df: float, prior: Prior | None) -> Variation | None:
    """The posterior variation of one (row, metric): its own s^2 on df, shrunk towards the prior, never below
    its own s^2 (a cell that measured more variation than its peers keeps it)."""
    if prior is None:
        return None if s2 is None or not df else Variation(math.sqrt(s2), df)
    if s2 is None or not df:
        return Variation(math.sqrt(prior.s2), prior.df)
    return Variation(math.sqrt(max((prior.df * prior.s2 + df * s2) / (prior.df + df), s2)), prior.df + df)


def quantile(level: float, df: float) -> float:
    """The upper `level` quantile of Student's t on df degrees of freedom (the normal's for df = inf)."""
    return float(stats.norm.isf(level) if math.isinf(df) else stats.t.isf(level, df))


TRIM_FROM = 5  # seeds: from this many on, a cross-machine comparison leaves the largest and smallest difference out


def trimmed_seeds(differences: dict) -> list:
    """The seeds a cross-machine comparison averages over, from their differences {seed: current - baseline}:
    with TRIM_FROM or more, all but the one with the largest and the one with the smallest difference. On another
    machine a seed's training can take another trajectory altogether (one seed of five, on the knife's edge of a
    collapse, moving by several times what every other seed moved), which no measured variance predicts; the
    trimmed mean is not moved by one such seed, and a real regression, which moves every seed, moves it as much
    as the mean."""
    order = sorted(differences, key=lambda s: (differences[s], str(s)))
    return order[1:-1] if len(order) >= TRIM_FROM else order


def trimmed_count(seeds: int) -> int:
    """How many of `seeds` seeds a cross-machine comparison averages (`trimmed_seeds`)."""
    return seeds - 2 if seeds >= TRIM_FROM else seeds


def tolerance(v: Variation, seeds: int, level: float) -> float:
    """The largest drop of the mean over `seeds` seeds that machine variation explains at one-sided `level`. For
    a trimmed mean (`trimmed_seeds`) `seeds` is the number it averages: for normal variation the middle 3 of 5
    vary as a mean of 4.4 seeds would, so taking them as 3 errs wide."""
    return quantile(level, v.df) * v.sd / math.sqrt(seeds)


def detectable(v: Variation, seeds: int, level: float, power: float = POWER) -> float:
    """The smallest drop of the mean over `seeds` seeds found with probability `power` at one-sided `level`."""
    return tolerance(v, seeds, level) + float(stats.norm.ppf(power)) * v.sd / math.sqrt(seeds)
