"""Spread over seeds: mean, sample std, and 95% Student-t confidence intervals."""

from __future__ import annotations

import math

# two-sided 95% critical values of Student's t for 1..30 degrees of freedom; 1.96 beyond
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t95(df: int) -> float:
    return _T95[df - 1] if 1 <= df <= len(_T95) else 1.96


def mean_std(values) -> tuple[float, float]:
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(vals) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return m, sd


def ci95(mean: float, std: float, n: int) -> tuple[float, float]:
    """95% confidence interval of the mean; a single seed has an unbounded interval."""
    if n < 2:
        return float("-inf"), float("inf")
    half = t95(n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]
