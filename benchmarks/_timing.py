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


def default_train_config(batch_size: int | None = None, shape: str = "digits"):
    """The default suite's [train] table (what `kdbench run --suite robustness` trains with), or for the CIFAR
    shape robustness-cifar10's, with its batch size replaced by `batch_size` when given."""
    import dataclasses

    from kdbench.suite.load import load_suite

    train = load_suite("robustness-cifar10" if shape == "cifar" else "robustness").jobs()[0].train
    return train if batch_size is None else dataclasses.replace(train, batch_size=batch_size)


SHAPES = ("digits", "cifar")


def add_shape_arg(ap) -> None:
    ap.add_argument("--shape", choices=SHAPES, default="digits",
                    help="digits (default: the default suite's 8x8 digits and CNNs) or cifar (synthetic 3x32x32 "
                         "images, CIFAR ResNets, batch 128)")


def bench_data(shape: str, n_train: int = 256, n_test: int = 128):
    """The data of a benchmark: the bundled digits, or synthetic CIFAR-shaped images (3x32x32 in [0, 1], ten
    classes, as gpu_check.py makes them; the timings do not depend on the pixel values)."""
    from kdbench.data.load import load_data
    from kdbench.data.registry import DataConfig, make_tensor_data

    if shape == "digits":
        return load_data(DataConfig())
    from _gpu_checks import synthetic

    (x_tr, y_tr), (x_te, y_te) = synthetic(n_train, "cpu", 0), synthetic(n_test, "cpu", 1)
    return make_tensor_data("cifar-shaped", x_tr, y_tr, x_te, y_te, 10)
