"""Spread over seeds: mean and sample std. Comparisons between rows are paired tests (paired.py), never an
overlap of two unpaired intervals."""

from __future__ import annotations

import math


def mean_std(values) -> tuple[float, float]:
    """The mean and the sample standard deviation; the std of a single value is NaN (one seed measures no
    spread, and 0 would claim there is none)."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(vals) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1)) if n > 1 else float("nan")
    return m, sd
