"""Level and power of the leaderboard's paired tests (kdbench/stats/paired.py) on simulated comparisons shaped like the
default suite's: 3 seeds x 359 test examples.

Each example i has a difficulty p_i ~ Beta(a, b); the baseline classifies it correctly with probability p_i, the
method with p_i + effect + u_s, u_s ~ N(0, tau) a per-seed deviation of the effect. Errors of the two models are
independent given p_i: the least favourable case for pairing on examples. Prints how often the two-way (seeds x
examples) test and the t-test over seeds reject at 5%.

    python benchmarks/paired_power.py [--draws 400]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kdbench.stats.paired import crossed, seed_t  # noqa: E402

CASES = [(0.0, 0.0), (0.0, 0.02), (0.0, 0.05), (0.03, 0.0), (0.05, 0.0), (0.05, 0.03)]  # (effect, tau)


def rejection_rates(effect: float, tau: float, draws: int, rng, k: int = 3, n: int = 359, beta=(1.0, 1.0)):
    two_way = t_seeds = 0
    for _ in range(draws):
        p = rng.beta(*beta, size=n)
        shift = effect + rng.normal(0.0, tau, size=k)
        a = rng.random((k, n)) < np.clip(p + shift[:, None], 0, 1)
        b = rng.random((k, n)) < p
        two_way += crossed(a.astype(np.int8) - b.astype(np.int8)).p < 0.05
        t_seeds += seed_t(a.mean(1) - b.mean(1)).p < 0.05
    return two_way / draws, t_seeds / draws


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print("| true difference | seed-to-seed sd of the effect | two-way test rejects | t-test over seeds rejects |")
    print("|---|---|---|---|")
    for effect, tau in CASES:
        tw, ts = rejection_rates(effect, tau, args.draws, rng)
        print(f"| {100 * effect:g} points | {100 * tau:g} points | {100 * tw:.1f}% | {100 * ts:.1f}% |")


if __name__ == "__main__":
    main()
