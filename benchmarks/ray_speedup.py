"""Ray executor speed-up: the default suite with `--executor local` (one job at a time, torch on every core) and
with `--executor ray` at one CPU per job (a Ray instance on this machine runs as many jobs at once as it has
cores), each from a cold teacher cache into a fresh results folder. On a 2-core machine two jobs run at once.

    python benchmarks/ray_speedup.py [--suite robustness] [--methods a,b] [--seeds 1,2]
The last line printed is the speed-up (local seconds / ray seconds). Needs `pip install 'kdbench[ray]'`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

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
    a = ap.parse_args()
    args = ["--suite", a.suite] + (["--methods", a.methods] if a.methods else []) + (
        ["--seeds", a.seeds] if a.seeds else [])
    print(f"{os.cpu_count()} cores; suite {a.suite}" + (f", methods {a.methods}" if a.methods else "")
          + (f", seeds {a.seeds}" if a.seeds else ""), flush=True)
    with tempfile.TemporaryDirectory(prefix="kdbench-ray-speedup-") as tmp:
        tmp = Path(tmp)
        local, local_line = timed_run([*args, "--executor", "local"], tmp, "local")
        print(f"local (one job at a time):  {local:7.1f}s  [{local_line}]", flush=True)
        ray, ray_line = timed_run([*args, "--executor", "ray", "--cpus-per-job", "1"], tmp, "ray")
        print(f"ray (1 CPU per job):        {ray:7.1f}s  [{ray_line}]", flush=True)
    print(f"speed-up of --executor ray over local: {local / ray:.2f}x")


if __name__ == "__main__":
    main()
