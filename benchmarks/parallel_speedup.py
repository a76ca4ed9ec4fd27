"""Parallel executors vs one job at a time: the default suite run three ways, each from a cold teacher cache into
a fresh results folder, back to back:

- one at a time: `--workers 1 --cpus-per-job <cores>` (one job in the kdbench process, torch on every core);
- the default: `--workers auto` (one worker process per core, 1 thread each);
- Ray: `--executor ray --cpus-per-job 1` (a Ray instance on this machine), when `kdbench[ray]` is installed.

    python benchmarks/parallel_speedup.py [--suite robustness] [--methods a,b] [--seeds 1,2] [--no-ray]
The last line printed is the speed-up of the default over one job at a time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kdbench.execution.resources import usable_cores  # noqa: E402

# the Ray instance stays on the loopback interface and writes no token file: a single-machine measurement
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def timed_run(args: list[str], tmp: Path, name: str) -> tuple[float, str]:
    env = {**os.environ, **RAY_ENV, "KDBENCH_CACHE": str(tmp / f"cache-{name}"),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kdbench", "run", "--out", str(tmp / name), "--quiet", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{name} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="robustness")
    ap.add_argument("--methods", help="comma-separated subset of the suite's methods")
    ap.add_argument("--seeds", help="comma-separated seeds")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray run")
    a = ap.parse_args()
    args = ["--suite", a.suite] + (["--methods", a.methods] if a.methods else []) + (
        ["--seeds", a.seeds] if a.seeds else [])
    cores = usable_cores()
    print(f"{cores} cores; suite {a.suite}" + (f", methods {a.methods}" if a.methods else "")
          + (f", seeds {a.seeds}" if a.seeds else ""), flush=True)
    with tempfile.TemporaryDirectory(prefix="kdbench-parallel-speedup-") as tmp:
        tmp = Path(tmp)
        one, line = timed_run([*args, "--workers", "1", "--cpus-per-job", str(cores)], tmp, "one")
        print(f"one job at a time ({cores} threads):  {one:7.1f}s  [{line}]", flush=True)
        auto, line = timed_run([*args, "--workers", "auto"], tmp, "auto")
        print(f"--workers auto ({cores} x 1 thread):   {auto:7.1f}s  [{line}]", flush=True)
        if not a.no_ray and importlib.util.find_spec("ray") is not None:
            ray, line = timed_run([*args, "--executor", "ray", "--cpus-per-job", "1"], tmp, "ray")
            print(f"--executor ray (1 CPU per job):       {ray:7.1f}s  [{line}]  {one / ray:.2f}x", flush=True)
    print(f"speed-up of the default (--workers auto) over one job at a time: {one / auto:.2f}x")


if __name__ == "__main__":
    main()
