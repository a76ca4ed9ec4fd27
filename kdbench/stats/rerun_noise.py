"""How far a re-run of the same job may move a metric, for `check` and `reproduce`.

Same machine type, thread count and versions (machine.py): a job is bit-for-bit reproducible, so any difference
beyond FLOAT_NOISE is a change. Another machine: the last bits of every float sum differ, training amplifies
them, and the re-run's model classifies a few examples differently. A metric is an accuracy over N examples, so
the difference of two runs is (gained - lost) / N, and when a re-run only flips examples at random (as many
gained as lost on average) its standard deviation is sqrt(flipped) / N. Where the records keep per-example
correctness (examples.py), `flipped` is counted; for metrics without masks it is the job's largest measured
flip rate; without any masks it is bounded by two independent runs, sqrt(p_a (1 - p_a) + p_b (1 - p_b)) / sqrt(N).
This is a floor: a re-run on another machine is another training trajectory, and its metrics move by more than
random flips of a fixed model wherever the model itself changes. `check` and `reproduce` use it only for metrics
whose variation the baseline did not measure (machine_variation.py).
"""

from __future__ import annotations

import math

import numpy as np

FLOAT_NOISE = 1e-9  # same machine: numbers are bit-identical, metrics equal up to JSON's float round-trip
ALPHA = 0.05


def flip_rate(masks_a: dict, masks_b: dict) -> float | None:
    """The largest fraction of examples classified differently by two runs over the masks they share."""
    rates = [float(np.mean(masks_a[k] != masks_b[k])) for k in masks_a
             if k in masks_b and len(masks_a[k]) == len(masks_b[k])]
    return max(rates) if rates else None


def rerun_sd(a: float, b: float, n: int, mask_a=None, mask_b=None, flips: float | None = None) -> float:
    """Standard deviation of (b - a) for one metric of two runs of one job on different machines."""
    if mask_a is not None and mask_b is not None and len(mask_a) == len(mask_b) == n:
        return math.sqrt(max(int(np.sum(mask_a != mask_b)), 1)) / n
    if flips is not None:
        return math.sqrt(max(flips, 1.0 / n) / n)
    a, b = min(max(a, 0.0), 1.0), min(max(b, 0.0), 1.0)
    return math.sqrt(max(a * (1 - a) + b * (1 - b), 1.0 / n) / n)


def rerun_sds(stored: dict, again: dict) -> dict[str, float]:
    """Per-example noise of each metric shared by the record `stored` and its re-run `again` on another machine:
    the sd of rerun_sd (inf without per-example data to size it)."""
    from ..records.examples import examples_n, masks_of

    names = sorted(set(stored["metrics"]) & set(again["metrics"]))
    n = examples_n(again) or examples_n(stored)
    if n is None:
        return {name: float("inf") for name in names}
    ms, ma = masks_of(stored), masks_of(again)
    flips = flip_rate(ms, ma)
    return {name: rerun_sd(stored["metrics"][name], again["metrics"][name], n, ms.get(name), ma.get(name), flips)
            for name in names}
