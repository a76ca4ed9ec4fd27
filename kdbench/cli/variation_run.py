"""`check --update-baseline --variation DIR|auto`: the records of a re-run of the baseline's jobs under other float
order, from which the baseline measures how far another machine moves each metric (reporting/variation.py).

`auto` re-runs the suite here, in a fresh process (the kernel settings must be in place before torch first
runs), into <out>/variation, resuming like any run, with the kernels of a machine one level below the records':
records made with AVX-512 kernels are re-run with the AVX2 kernels of torch, oneDNN and MKL (what an AVX2 CPU
runs), records made with AVX2 kernels with SSE4 ones (torch's unvectorised kernels); other CPUs (no x86 kernel
level to step down from) re-run on one thread more per job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..core.errors import KdbenchError
from ..core.machine import KERNEL_LEVELS, KERNEL_VARS, kernel_level

# the kernels one level below a record's, as environment settings (machine.KERNEL_VARS)
STEP_DOWN = {"avx512": KERNEL_LEVELS["avx2"],
             "avx2": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "SSE4_2",
                      "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}}


def variation_records(args, folder: Path, records: list[dict], where: str) -> list[dict]:
    """The re-run's records: those in the folder `where` (a --variation) names, or with 'auto' a re-run made now."""
    from ..records.store import load_records

    if where == "auto":
        out = folder / "variation"
        _rerun_here(args, out, records)
    else:
        out = Path(where)
    rerun, bad = load_records(out)
    if bad:
        raise KdbenchError(f"--variation {str(out)!r}: damaged record {bad[0].path}: {bad[0].reason}")
    if not rerun:
        raise KdbenchError(f"--variation {str(out)!r} holds no records (a results folder: <dir>/records/*.json), or "
                           "use --variation auto")
    return rerun


def perturbation(records: list[dict]) -> tuple[dict, int | None]:
    """(kernel settings, threads per job or None for the records' own) of the re-run that measures the records'
    variation: the kernels one level below theirs, else one thread more."""
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
        return STEP_DOWN[level], None
    return {}, (threads.pop() if threads else 1) + 1


def _level(cpu: dict) -> str | None:
    """The kernel level a record ran at, as a key of STEP_DOWN (None: another setting, or no x86 level)."""
    level = kernel_level(cpu)
    if level == "native" and not cpu.get("kernels"):  # the CPU's own best
        level = str(cpu.get("capability") or "").lower().split("_")[0]
    return level if level in STEP_DOWN else None


def _rerun_here(args, out: Path, records: list[dict]) -> None:
    settings, threads = perturbation(records)
    # --kernels native: the environment below sets them, not the suite's [executor] kernels
    flags = ["--suite", str(args.suite), "--out", str(out), "--no-save-students", "--device", args.device,
             "--executor", args.executor, "--kernels", "native"]
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
    print(f"measuring the variation: the suite's jobs re-run with {how}, into {out}", file=sys.stderr, flush=True)
    # its progress (stderr) shows; its leaderboard table (stdout) would read as the baseline's
    proc = subprocess.run([sys.executable, "-m", "kdbench", "run", *flags], env=env, stdout=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise KdbenchError(f"the variation run exited with {proc.returncode} (see its output above); run the same "
                           "command again to resume it")
