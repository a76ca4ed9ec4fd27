"""`check --update-baseline --variation DIR|auto`: the records of re-runs of the baseline's jobs under other float
order, from which the baseline measures how far another machine moves each metric (reporting/variation.py).

`auto` re-runs the suite twice here, each in a fresh process (kernel settings must be in place before torch first
runs) into <out>/variation/<name>, resuming like any run, as two other machines would run it:

- records made with AVX-512 kernels: with the AVX2 kernels of torch, oneDNN and MKL (what an AVX2 CPU runs), and
  with torch's unvectorised kernels;
- records made with AVX2 kernels: with SSE4 kernels everywhere (torch unvectorised, oneDNN SSE4.1, MKL SSE4.2),
  and with torch's unvectorised kernels alone;
- other CPUs (no x86 kernel level to step down from): on one and on two threads more per job.

Two re-runs give each (row, metric) twice the degrees of freedom of one: on the default suite the headline metric
of the adversarial distillers detects a drop of 4.4-4.6 points instead of 5-6.7 (docs/statistics.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..core.errors import KdbenchError
from ..core.machine import KERNEL_LEVELS, KERNEL_VARS, kernel_level

TORCH_SCALAR = {"ATEN_CPU_CAPABILITY": "default"}
SSE4 = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "SSE4_2",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
# the re-runs of `auto` for records made at a kernel level: (folder name, kernel settings)
STEP_DOWN = {"avx512": (("kernels-avx2", KERNEL_LEVELS["avx2"]), ("torch-scalar", TORCH_SCALAR)),
             "avx2": (("kernels-sse4", SSE4), ("torch-scalar", TORCH_SCALAR))}


def variation_records(args, folder: Path, records: list[dict], where: str) -> list[list[dict]]:
    """The records of each re-run: those in the folder `where` (a --variation) names, or with 'auto' the re-runs
    made now."""
    from ..records.store import load_records

    outs = _rerun_here(args, folder / "variation", records) if where == "auto" else [Path(where)]
    reruns = []
    for out in outs:
        rerun, bad = load_records(out)
        if bad:
            raise KdbenchError(f"--variation {str(out)!r}: damaged record {bad[0].path}: {bad[0].reason}")
        if not rerun:
            raise KdbenchError(f"--variation {str(out)!r} holds no records (a results folder: <dir>/records/*.json), "
                               "or use --variation auto")
        reruns.append(rerun)
    return reruns


def perturbations(records: list[dict]) -> list[tuple[str, dict, int | None]]:
    """[(folder name, kernel settings, threads per job or None for the records' own)] of the re-runs that measure
    the records' variation (the module docstring)."""
    envs = [r.get("env") or {} for r in records]
    if any(str(e.get("device", "cpu")).split(":")[0] != "cpu" for e in envs):
        raise KdbenchError("--variation auto re-runs the jobs with other CPU kernels, which leaves CUDA numbers as "
                           "they are: give the results of a run on another GPU with --variation DIR")
    threads = {e.get("threads") for e in envs} - {None}
    if len(threads) > 1:
        raise KdbenchError(f"the baseline's records ran on different thread counts ({sorted(threads)}): re-run them "
                           "on one before measuring their variation")
    levels = {_level(e.get("cpu") or {}) for e in envs}
    level = levels.pop() if len(levels) == 1 else None
    if level in STEP_DOWN:
        return [(name, settings, None) for name, settings in STEP_DOWN[level]]
    base = threads.pop() if threads else 1
    return [(f"threads-{base + more}", {}, base + more) for more in (1, 2)]


def _level(cpu: dict) -> str | None:
    """The kernel level a record ran at, as a key of STEP_DOWN (None: another setting, or no x86 level)."""
    level = kernel_level(cpu)
    if level == "native" and not cpu.get("kernels"):  # the CPU's own best
        level = str(cpu.get("capability") or "").lower().split("_")[0]
    return level if level in STEP_DOWN else None


def _rerun_here(args, root: Path, records: list[dict]) -> list[Path]:
    outs = []
    for name, settings, threads in perturbations(records):
        out = root / name
        # --kernels native: the environment below sets them, not the suite's [executor] kernels
        flags = ["--suite", str(args.suite), "--out", str(out), "--no-save-students", "--no-report", "--device",
                 args.device, "--executor", args.executor, "--kernels", "native"]
        for flag, value in (("--workers", args.workers), ("--address", args.address),
                            ("--cpus-per-job", threads or args.cpus_per_job), ("--gpus-per-job", args.gpus_per_job),
                            ("--max-retries", args.max_retries), ("--cache-dir", args.cache_dir),
                            ("--data-dir", args.data_dir), ("--corruptions-from", args.corruptions_from)):
            if value is not None:
                flags += [flag, str(value)]
        flags += ["--download"] * bool(args.download) + ["--quiet"] * bool(args.quiet)
        env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARS}
        env.update(settings)
        how = " ".join(f"{k}={v}" for k, v in settings.items()) or f"{threads} threads per job"
        print(f"measuring the variation: the suite's jobs re-run with {how}, into {out}", file=sys.stderr,
              flush=True)
        # its progress (stderr) shows; its leaderboard table (stdout) would read as the baseline's
        proc = subprocess.run([sys.executable, "-m", "kdbench", "run", *flags], env=env, stdout=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise KdbenchError(f"the variation run exited with {proc.returncode} (see its output above); run the "
                               "same command again to resume it")
        outs.append(out)
    return outs
