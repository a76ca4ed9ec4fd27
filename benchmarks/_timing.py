"""Shared helpers of the performance scripts: side-by-side timing, medians of repeats."""

from __future__ import annotations

import statistics
import time


def median_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_ratio(fn_a, fn_b, repeats: int = 7, warmup: int = 2) -> tuple[float, float, float]:
    """Median over repeats of time(a) / time(b), a and b timed back to back in each repeat so that machine
    noise hits both alike. Returns (median ratio, median seconds of a, median seconds of b)."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    ratios, ta, tb = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn_a()
        t1 = time.perf_counter()
        fn_b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
    return statistics.median(ratios), statistics.median(ta), statistics.median(tb)


def ratio_line(name: str, ratio: float, target: float, above_is_bad: bool = True) -> str:
    ok = ratio <= target if above_is_bad else ratio >= target
    sign = "<=" if above_is_bad else ">="
    return f"{name}: ratio {ratio:.3f} (target {sign} {target}) {'OK' if ok else 'ABOVE TARGET' if above_is_bad else 'BELOW TARGET'}"


def default_train_config(batch_size: int | None = None):
    """The default suite's [train] table (what `kdbench run --suite robustness` trains with), with its batch size
    replaced by `batch_size` when given."""
    import dataclasses

    from kdbench.suite import load_suite

    train = load_suite("robustness").jobs()[0].train
    return train if batch_size is None else dataclasses.replace(train, batch_size=batch_size)
