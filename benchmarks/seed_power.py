"""How many seeds the default suite needs for its headline comparisons to be decided by the leaderboard's test.

Reads a suite's records (default: the committed results/robustness), and for every comparison the leaderboard
makes on robust@headline (each student against the baselines its method declares: `ce`, and `at` for the
adversarial distillers) estimates the variance components of the two-way (seeds x examples) random-effects model
that kdbench/stats/paired.py tests with:

    D[s, i] = mu + a_s + b_i + e_si,  Var(a) = s2_seed, Var(b) = s2_ex, Var(e) = s2_err
    Var(mean D) with k seeds = s2_seed / k + s2_ex / N + s2_err / (k N)

(method-of-moments estimates from the observed mean squares, truncated at zero). For k seeds it predicts the
standard error, Satterthwaite's degrees of freedom, the smallest difference found with 80% power at the table's
strictest Holm threshold (0.05 / m), and the power of the test for the observed difference at 0.05 / m.
The seed component is estimated from the seeds at hand (3 in the committed results: 2 degrees of freedom), so
every prediction is rough; it is a power analysis from the observed effect sizes and spreads, the same for every
comparison, not a choice of the conclusion.

    python benchmarks/seed_power.py [--results results/robustness] [--seeds 2,3,4,5,6,8,10]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdbench.reporting.deltas import baselines_of  # noqa: E402
from kdbench.records.examples import masks_of  # noqa: E402
from kdbench.stats.paired import ALPHA, POWER  # noqa: E402
from kdbench.records.store import load_records  # noqa: E402


def components(D: np.ndarray) -> tuple[float, float, float]:
    """(s2_seed, s2_ex, s2_err) of a k x N table of paired differences, moments estimates truncated at 0."""
    k, n = D.shape
    grand = D.mean()
    by_seed, by_ex = D.mean(axis=1), D.mean(axis=0)
    ms_seed = n * np.sum((by_seed - grand) ** 2) / (k - 1)
    ms_ex = k * np.sum((by_ex - grand) ** 2) / (n - 1)
    inter = D - by_seed[:, None] - by_ex[None, :] + grand
    ms_err = np.sum(inter ** 2) / ((k - 1) * (n - 1))
    return max((ms_seed - ms_err) / n, 0.0), max((ms_ex - ms_err) / k, 0.0), ms_err


def predict(comp: tuple[float, float, float], k: int, n: int) -> tuple[float, float]:
    """(standard error, Satterthwaite df) of the mean difference with k seeds, from the expected mean squares
    (the paired test's estimate, with its truncation rule applied to their expectations)."""
    s2_seed, s2_ex, s2_err = comp
    ms_seed, ms_ex = s2_err + n * s2_seed, s2_err + k * s2_ex
    df_seed, df_ex, df_err = k - 1, n - 1, (k - 1) * (n - 1)
    parts = [(ms_seed, df_seed), (ms_ex, df_ex), (-s2_err, df_err)]
    if not (ms_seed > s2_err and ms_ex > s2_err):
        parts = [max(parts[:2], key=lambda p: p[0])] if max(ms_seed, ms_ex) > s2_err else [(s2_err, df_err)]
    total = sum(v for v, _ in parts)
    df = total ** 2 / sum(v * v / d for v, d in parts)
    return math.sqrt(max(total, 0.0) / (k * n)), max(df, k - 1.0)


def power(diff: float, se: float, df: float, alpha: float) -> float:
    """Power of the two-sided t-test at level alpha when the true difference is `diff`: the noncentral t's tail,
    averaged over quantiles of the chi-square of the variance estimate (scipy's nct fails far in the tail)."""
    crit = stats.t(df).ppf(1 - alpha / 2)
    nc = abs(diff) / se
    scale = np.sqrt(stats.chi2(df).ppf((np.arange(4000) + 0.5) / 4000) / df)
    return float(np.mean(stats.norm.sf(crit * scale - nc) + stats.norm.cdf(-crit * scale - nc)))


def detectable(se: float, df: float, alpha: float) -> float:
    return float((stats.t(df).ppf(1 - alpha / 2) + stats.t(df).ppf(POWER)) * se)


def comparisons(records: list[dict]) -> list[tuple[str, str, np.ndarray]]:
    """(method, baseline, D) for every comparison the leaderboard makes on robust@headline."""
    rows: dict[str, dict[int, np.ndarray]] = {}
    for r in records:
        if r.get("role") != "student":
            continue
        m = masks_of(r).get(f"robust@{r['headline_eps']:g}")
        if m is not None:
            rows.setdefault(r["method"], {})[r["seed"]] = m
    out = []
    for method, masks in sorted(rows.items()):
        for base in baselines_of(method):
            if base == method or base not in rows:
                continue
            seeds = sorted(set(masks) & set(rows[base]))
            if len(seeds) >= 2:
                D = np.stack([masks[s].astype(float) - rows[base][s].astype(float) for s in seeds])
                out.append((method, base, D))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results/robustness"))
    ap.add_argument("--seeds", default="2,3,4,5,6,8,10")
    args = ap.parse_args()
    ks = [int(s) for s in args.seeds.split(",")]
    records = load_records(args.results)[0]
    comps = comparisons(records)
    m = len(comps)
    alpha = ALPHA / m
    print(f"{m} comparisons; strictest Holm threshold 0.05/{m} = {alpha:.2g}. Per comparison: observed difference "
          f"(points), seed-to-seed sd of the difference, then for each k: power for the observed difference at "
          f"0.05/{m} | smallest difference detected with 80% power (points)\n")
    print("| comparison | observed | seed sd | " + " | ".join(f"k={k} power | k={k} detects" for k in ks) + " |")
    print("|---|---|---|" + "---|---|" * len(ks))
    for method, base, D in comps:
        comp = components(D)
        n = D.shape[1]
        cells = []
        for k in ks:
            se, df = predict(comp, k, n)
            cells.append(f"{power(D.mean(), se, df, alpha):.2f} | {100 * detectable(se, df, alpha):.1f}")
        print(f"| {method} vs {base} | {100 * D.mean():+.1f} | {100 * math.sqrt(comp[0]):.1f} | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
