"""The regression gate across machines, emulated on one machine: the suite re-run cold under perturbations that
change floating-point order the way another machine does, each checked against the baseline; then at's headline
robust accuracy lowered by 5 points on every seed of each re-run, which the check must catch.

Perturbations (each a fresh results folder and teacher cache, `check --run` with these settings):
- torch-avx2: ATEN_CPU_CAPABILITY=avx2 (torch's own kernels at AVX2; oneDNN and MKL as the CPU picks);
- onednn-avx2: ONEDNN_MAX_CPU_ISA=AVX2 (the convolutions at AVX2; torch and MKL as the CPU picks);
- all-avx2: torch, oneDNN and MKL at AVX2 (`kernels = "avx2"`: what an AVX2 CPU runs);
- torch-scalar: ATEN_CPU_CAPABILITY=default (torch's kernels without vector instructions);
- sse4: torch unvectorised, oneDNN and MKL at SSE4 (what a CPU without AVX runs);
- threads-2: 2 threads per job (the default suite runs 1);
- workers-1: one job at a time (the baseline's machine: records must be bit-identical, the check exact).
Left out: the avx2 ones on a CPU without AVX-512 (they change nothing there), and those the baseline measured its
variation with (`check --update-baseline --variation auto`: all-avx2 and torch-scalar on an AVX-512 CPU, sse4 and
torch-scalar on an AVX2 one), which would check the baseline against the very numbers it measured.

For each re-run the `reproduce` comparison of every record with the baseline's record of its job is made too
(the re-run is what `reproduce` would run there): the metrics beyond their expected variation are counted.

    python benchmarks/cross_machine_gate.py [--suite robustness] [--results results] [--work DIR]
        [--make-baseline] [--only torch-avx2,threads-2] [--drop 0.05]

--results: the folder holding <suite>/baseline.json (made with `check --update-baseline --variation auto`).
--make-baseline: first run the suite cold into <work>/results and make its baseline there, with its variation
(when the committed baseline is not from this code). Runs resume: a folder whose records are complete is checked
again without re-running. The last lines are a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kdbench.cli.variation_run import SSE4, TORCH_SCALAR  # noqa: E402
from kdbench.core.machine import KERNEL_LEVELS  # noqa: E402

AVX2 = KERNEL_LEVELS["avx2"]  # torch, oneDNN and MKL at AVX2: what `kernels = "avx2"` sets
PERTURBATIONS = {  # name: (environment, extra flags of `check --run`)
    "torch-avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, []),
    "onednn-avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, []),
    "all-avx2": (AVX2, []),
    "torch-scalar": (TORCH_SCALAR, []),
    "sse4": (SSE4, []),
    "threads-2": ({}, ["--cpus-per-job", "2"]),
    "workers-1": ({}, ["--workers", "1"]),
}


def same_as_variation(name: str, measured: dict) -> bool:
    """Whether perturbation `name` re-runs the suite as the baseline's variation run did."""
    env, flags = PERTURBATIONS[name]
    threads = int(flags[1]) if flags[:1] == ["--cpus-per-job"] else None
    return env == (measured.get("kernels") or {}) and (threads or 1) == (measured.get("threads") or 1) and \
        "--workers" not in flags


def kdbench(args: list[str], env: dict | None = None) -> tuple[int, str, float, float]:
    """(exit code, stdout + stderr, wall seconds, CPU seconds user + sys of it and its children)."""
    full = {k: v for k, v in os.environ.items() if k not in AVX2}
    full.update(env or {})
    full["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kdbench", *args], cwd=ROOT, env=full, capture_output=True,
                          text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0, cpu


def counts(output: str) -> dict:
    """The check's totals and how many checks each machine case had."""
    out = {}
    m = re.search(r"(\d+) checks: (\d+) ok, (\d+) regressed, (\d+) improved", output)
    if m:
        out.update(total=int(m[1]), ok=int(m[2]), regressed=int(m[3]), improved=int(m[4]))
    for case in ("same machine", "other machine"):
        m = re.search(rf"^{case}: (\d+) checks", output, re.M)
        out[case] = int(m[1]) if m else 0
    return out


def inject(folder: Path, into: Path, headline: str, drop: float) -> int:
    """Copy `folder`'s records to `into`, with at's `headline` metric `drop` lower on every seed."""
    shutil.rmtree(into, ignore_errors=True)
    shutil.copytree(folder / "records", into / "records")
    changed = 0
    for path in (into / "records").glob("*.json"):
        doc = json.loads(path.read_text())
        if doc["method"] == "at" and doc["role"] == "student":
            doc["metrics"][headline] -= drop
            path.write_text(json.dumps(doc))
            changed += 1
    return changed


def reproduce_counts(baseline_folder: Path, rerun_folder: Path, baseline: dict) -> tuple[int, int, int]:
    """(records compared, metrics compared, metrics beyond their expected variation), as `reproduce` judges a
    re-run of each baseline record on the re-run's machine."""
    import contextlib
    import io

    from kdbench.execution.reproduce import compare_rerun
    from kdbench.records.store import load_records
    from kdbench.reporting.check import record_row

    again = {r["job_id"]: r for r in load_records(rerun_folder)[0]}
    records = metrics = beyond = 0
    for rec in load_records(baseline_folder)[0]:
        if rec["job_id"] not in again:
            continue
        variation = (baseline["rows"].get(record_row(rec)) or {}).get("variation")
        with contextlib.redirect_stdout(io.StringIO()) as out:
            compare_rerun(rec, again[rec["job_id"]], None, variation, "the baseline")
        m = re.search(r"(\d+) metrics compared[:,] (?:(\d+) within .*?, )?(\d+) (?:beyond|differ)", out.getvalue())
        records += 1
        metrics += int(m[1])
        beyond += int(m[3])
    return records, metrics, beyond


LEVELS = (0.05, 0.005, 0.0005)


def exceedance(baseline: dict, rerun_folder: Path) -> tuple[int, dict]:
    """How often an unchanged re-run's cross-machine differences fall beyond their one-sided level: (metrics
    compared, {level: count}). With the model calibrated, each count is about level x metrics; counts far above
    that say the measured variation is too small, far below that it is too wide."""
    import math

    from scipy import stats

    from kdbench.core.metric_names import lower_is_better
    from kdbench.records.store import load_records
    from kdbench.reporting.check import baseline_from_records, compare
    from kdbench.stats.machine_variation import trimmed_count
    from kdbench.suite.configs import CheckConfig

    current = baseline_from_records(load_records(rerun_folder)[0], baseline["suite"], baseline["headline_eps"])
    table = compare(baseline, current, CheckConfig())
    other = table[table.machine == "other machine"]
    below = {level: 0 for level in LEVELS}
    for _, r in other.iterrows():
        measured = (baseline["rows"][r["row"]].get("variation") or {}).get(r["metric"])
        if measured is None:
            continue
        sd, df = measured
        k = trimmed_count(len(str(r["seed"]).split(",")))  # the seeds the check averages
        t = (-r["delta"] if lower_is_better(r["metric"]) else r["delta"]) / (sd / math.sqrt(k))
        p = stats.t.cdf(t, df)
        for level in LEVELS:
            below[level] += p < level
    return len(other), below


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="robustness")
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--work", type=Path, default=Path("/tmp/kdbench-cross-machine"))
    ap.add_argument("--make-baseline", action="store_true")
    ap.add_argument("--only", help="comma-separated perturbations (default: all)")
    ap.add_argument("--drop", type=float, default=0.05, help="the drop injected into at's headline metric")
    a = ap.parse_args()
    import torch

    from kdbench.suite.load import load_suite

    suite = load_suite(a.suite)
    headline = f"robust@{suite.headline_eps:g}"
    capability = torch.backends.cpu.get_cpu_capability()
    names = a.only.split(",") if a.only else list(PERTURBATIONS)
    if not capability.startswith("AVX512") and not a.only:
        names = [n for n in names if "avx2" not in n]  # an AVX2 machine already runs these kernels
    results = a.results
    log = []
    if a.make_baseline:
        results = a.work / "results"
        rc, out, wall, cpu = kdbench(["check", "--suite", a.suite, "--results", str(results), "--run", "--out",
                                      str(results / suite.name), "--cache-dir", str(a.work / "cache-baseline"),
                                      "--no-save-students", "--quiet", "--update-baseline", "--variation", "auto"])
        print(out, flush=True)
        if rc != 0:
            return rc
        log.append(("baseline (+ variation on 2 threads)", "", "", wall, cpu))
    baseline = json.loads((results / suite.name / "baseline.json").read_text())
    measured = baseline.get("variation")
    if not measured:
        print("note: the baseline has no measured variation (check --update-baseline --variation auto)")
    elif not a.only:  # not against the numbers the baseline measured its variation with
        names = [n for n in names if not any(same_as_variation(n, r) for r in measured.get("reruns", []))]
    rows = []
    for name in names:
        env, flags = PERTURBATIONS[name]
        out_dir = a.work / "runs" / name
        rc, out, wall, cpu = kdbench(["check", "--suite", a.suite, "--results", str(results), "--run", "--out",
                                      str(out_dir), "--cache-dir", str(a.work / f"cache-{name}"),
                                      "--no-save-students", "--quiet", *flags], env)
        c = counts(out)
        changed = inject(out_dir, a.work / "injected" / name, headline, a.drop)
        rc_drop, out_drop, _, _ = kdbench(["check", "--suite", a.suite, "--results", str(results), "--out",
                                           str(a.work / "injected" / name)])
        caught = "REGRESSION" in out_drop and f"| at: {headline}" in out_drop
        rep = reproduce_counts(results / suite.name, out_dir, baseline)
        compared, below = exceedance(baseline, out_dir)
        if compared:
            print(f"--- {name}: one-sided p below " + ", ".join(
                f"{level:g}: {below[level]} of {compared} (expected {level * compared:.1f})" for level in LEVELS),
                flush=True)
        print(f"--- {name} ({' '.join(f'{k}={v}' for k, v in env.items())} {' '.join(flags)}): exit {rc}, "
              f"{wall:.0f}s wall, {cpu:.0f}s CPU\n{out.strip()[-4000:]}\n--- {name}, at {headline} -{100 * a.drop:g} "
              f"points on {changed} seeds: exit {rc_drop}\n{out_drop.strip()[-1500:]}", flush=True)
        rows.append((name, env, flags, c, rc, rc_drop, caught, rep, wall, cpu))
    print("\n| perturbation | settings | checks same / other machine | regressed (false alarms) | improved | exit | "
          f"at {headline} -{100 * a.drop:g} points: exit | reproduce: metrics beyond expected / compared | "
          "wall | CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, env, flags, c, rc, rc_drop, caught, rep, wall, cpu in rows:
        settings = " ".join([f"{k}={v}" for k, v in env.items()] + flags) or "-"
        print(f"| {name} | {settings} | {c.get('same machine', 0)} / {c.get('other machine', 0)} | "
              f"{c.get('regressed', '?')} | {c.get('improved', '?')} | {rc} | {rc_drop}"
              f"{'' if caught else ' (not caught!)'} | {rep[2]} / {rep[1]} ({rep[0]} records) | {wall / 60:.1f} min | "
              f"{cpu / 60:.1f} min |")
    other = [r for r in rows if r[3].get("other machine")]
    alarms = sum(r[4] != 0 for r in other)
    print(f"\nfalse alarms: {alarms} of {len(other)} cross-machine re-runs failed the check "
          f"({sum(r[3].get('regressed', 0) for r in other)} of {sum(r[3].get('other machine', 0) for r in other)} "
          f"checks); the injected drop was caught in {sum(r[5] == 1 and r[6] for r in rows)} of {len(rows)}")
    print(f"\nsmallest detectable drop of {headline} across machines (80% power), from {results / suite.name}:")
    for key, row in sorted(baseline["rows"].items(), key=lambda kv: (" | teacher (" in kv[0], kv[0])):
        det = (row.get("detectable") or {}).get(headline)
        if det is not None:
            print(f"  {key.split(' | ')[-1]:<32} {len(row['seeds'])} seeds  {100 * det:.1f} points")
    return 0 if alarms == 0 and all(r[5] == 1 and r[6] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
