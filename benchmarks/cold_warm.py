"""Cold vs warm: a re-run of an unchanged suite costs at most 5% of the cold run (target), and adding one method
to a suite trains only that method's students (no teacher is retrained).

    python benchmarks/cold_warm.py [--quick]
The last line printed is the warm/cold ratio.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import ratio_line  # noqa: E402

import torch  # noqa: E402

from kdbench.reporting.report import write_reports  # noqa: E402
from kdbench.execution.driver import run_suite  # noqa: E402
from kdbench.suite.load import parse_suite  # noqa: E402

SUITE = """
name = "cold-warm"
dataset = "digits"
seeds = [1, 2]
[train]
epochs = 5
teacher_epochs = 5
[methods]
ce = {}
kd = {}
[eval]
attacks = ["fgsm", "pgd", "apgd-dlr"]
eps = [0.1]
sweep_eps = [0.1, 0.5]
corruptions = ["gaussian_noise", "contrast"]
"""


def timed_run(suite, out, cache):
    stream = io.StringIO()
    t0 = time.perf_counter()
    result = run_suite(suite, out, torch.device("cpu"), cache_dir=cache, stream=stream)
    rebuilt = write_reports(out, suite.name, suite.headline_eps)["rebuilt"]
    return time.perf_counter() - t0, result, stream.getvalue() + ("reports rebuilt" if rebuilt else "reports up to date")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.parse_args()
    doc = tomllib.loads(SUITE)
    with tempfile.TemporaryDirectory() as tmp:
        out, cache = Path(tmp) / "out", Path(tmp) / "cache"
        suite = parse_suite(doc)
        cold, r1, _ = timed_run(suite, out, cache)
        warm, r2, log = timed_run(suite, out, cache)
        print(f"cold run: {r1.ran} jobs in {cold:.1f}s; warm re-run: {r2.ran} jobs run, {r2.skipped} skipped, "
              f"{warm:.2f}s ({log.splitlines()[-1]})")
        assert r2.ran == 0

        bigger = parse_suite({**doc, "methods": {**doc["methods"], "pointwise": {}}})
        t_add, r3, log = timed_run(bigger, out, cache)
        new_students = [j for j in bigger.jobs() if j.method == "pointwise"]
        teachers_trained = log.count("training teacher")
        print(f"adding `pointwise`: {r3.ran} jobs run ({len(new_students)} new students), "
              f"{teachers_trained} teachers trained, {t_add:.1f}s")
        assert r3.ran == len(new_students) and teachers_trained == 0, "adding a method retrained more than it"
    print(ratio_line("warm / cold", warm / cold, 0.05))


if __name__ == "__main__":
    main()
