"""CPU time of a fixed sample of the default suite's jobs, by stage, at one or more git revisions, interleaved.

    python benchmarks/job_cpu.py                              # the working tree
    python benchmarks/job_cpu.py --revs 270d283 . --rounds 3  # a revision against the working tree
    python benchmarks/job_cpu.py --jobs ce:1,at:1,teacher:defensive:1 --revs A B
    python benchmarks/job_cpu.py --rounds 1 --profile       # and which layer (torch's C++, Python) the time went to

Each revision's kdbench (`git archive REV`, into a temporary folder; `.` is the working tree) runs the sample in a
fresh process on one torch thread, as a worker of `kdbench run` does. Its teachers are trained into a teacher cache
of that revision and its transfer examples crafted first (not timed: a run makes them as tasks of their own); then
each job runs through `execution.job.run_job`, timed with the thread's CPU clock (user + system,
`time.thread_time`), which other work on a shared machine slows less than it slows wall time. The revisions take
turns, round after round; each job's median over the rounds is reported, with the ratio to the first revision.
The stages are the record's own timings (`train_seconds` and each `eval_timings` part, wall time inside the job),
scaled to the job's CPU time.

The last lines project the sample onto the whole suite: each sampled method's median CPU time times its number of
jobs in the suite (`--suite`, as the working tree has it; `--project-seeds N`: every student row on N seeds),
summed; a student method not sampled is counted at `kd`'s time (the median of the sampled students without it), a
teacher row at the median of the sampled ones. That is job time only: teacher training, transfer sets, start-up and
the reports are not in it. Each job's metrics and flags are compared across revisions: `same numbers` means every
metric and flag of every sampled job is equal.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JOBS = ("ce:1,kd:1,defensive:1,at:1,trades:1,ard:1,rslad:1,iad:1,adaad:1,mtard:1,teacher:standard:1,"
                "teacher:adversarial:1,teacher:defensive:1")
PLAIN = "kd"  # the stand-in for methods not in the sample


def _select(jobs, spec: str):
    """The jobs named `method:seed` (or `teacher:<kind>:seed`), in that order."""
    out = []
    for item in spec.split(","):
        parts = item.split(":")
        seed = int(parts[-1])
        if parts[0] == "teacher":
            found = [j for j in jobs if j.is_teacher and j.teacher_kind == parts[1] and j.seed == seed]
        else:
            found = [j for j in jobs if j.method == parts[0] and j.seed == seed]
        if not found:
            raise SystemExit(f"no job {item!r} in the suite")
        out.append((item, found[0]))
    return out


def worker(args) -> None:
    """Run the sample here (the kdbench on sys.path) and print one JSON line: job -> cpu, stages, numbers."""
    import time

    import torch

    torch.set_num_threads(1)
    from kdbench.execution.job import run_job
    from kdbench.evaluation.transfer import craft_all
    from kdbench.execution.run_progress import Progress
    from kdbench.execution.transfer_cache import needs_transfer, transfer_key
    from kdbench.execution.workspace import Workspace
    from kdbench.suite.load import load_suite
    from kdbench.training.teacher_cache import get_teacher

    suite = load_suite(args.suite)
    sample = _select(suite.jobs(), args.jobs)
    ws = Workspace(torch.device("cpu"), Path(args.cache))
    quiet = Progress(1, quiet=True)
    for _, job in sample:  # teachers, the data and the transfer examples first: not job time (a run's own tasks)
        teachers = [get_teacher(spec, job, ws, quiet) for spec in job.teacher_specs()]
        if needs_transfer(job) and transfer_key(job, 1) not in ws.transfer:
            ws.transfer[transfer_key(job, 1)] = craft_all(teachers[0], ws.get_data(job.data), job.eval, job.seed)
    import torchvision.io  # noqa: F401 - imported by the first job's corruptions (~4 s, once per process): not job time

    out = {}
    profiler = cProfile.Profile(time.thread_time) if args.profile else None
    for name, job in sample:
        t0 = time.thread_time()
        if profiler is not None:
            profiler.enable()
        record = run_job(job, ws, quiet)
        if profiler is not None:
            profiler.disable()
        cpu = time.thread_time() - t0
        wall = record["train_seconds"] + record["eval_seconds"]
        scale = cpu / wall if wall > 0 else 0.0
        stages = {"training": record["train_seconds"] * scale,
                  **{k: v * scale for k, v in record["eval_timings"].items()}}
        out[name] = {"cpu": cpu, "stages": stages, "metrics": record["metrics"], "flags": record["flags"]}
    where = _by_layer(profiler) if profiler is not None else None
    print("RESULT " + json.dumps({"kdbench": __import__("kdbench").__file__, "jobs": out, "where": where}))


def _by_layer(profiler) -> dict[str, float]:
    """The profiled seconds by where they were spent: torch's compiled kernels and autograd engine (built-in
    functions and methods of torch), and the Python code of torch, torchattacks, kdbench and everything else."""
    import pstats

    out: dict[str, float] = {}
    for (path, _, func), (_, _, tottime, _, _) in pstats.Stats(profiler).stats.items():
        if path == "~":  # a built-in: torch's C++ (an op, the autograd engine) or Python's own
            layer = "torch C++ (ops, autograd engine)" if "torch" in func or "Tensor" in func else "Python built-ins"
        elif "torchattacks" in path:
            layer = "torchattacks (Python)"
        elif "/kdbench/" in path:
            layer = "kdbench (Python)"
        elif "/torch/" in path:
            layer = "torch (Python: modules, autograd API)"
        else:
            layer = "other Python"
        out[layer] = out.get(layer, 0.0) + tottime
    return out


def _checkout(rev: str, into: Path) -> Path:
    """The tree of `rev` (`.`: the working tree) as a folder holding kdbench/ and benchmarks/."""
    if rev == ".":
        return ROOT
    target = into / rev.replace("/", "_")
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "kdbench", "benchmarks"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def _run(tree: Path, args, cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--jobs", args.jobs, "--suite",
           args.suite, "--cache", str(cache), *(["--profile"] if args.profile else [])]
    proc = subprocess.run(cmd, env=env, cwd=str(tree), capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the sample failed at {tree}:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    if Path(result["kdbench"]).resolve().parents[1] != tree.resolve():
        raise SystemExit(f"imported {result['kdbench']}, not the kdbench of {tree}")
    if result["where"]:
        total = sum(result["where"].values())
        print(f"{tree.name}: where the profiled {total:.1f}s went: " + ", ".join(
            f"{k} {v / total:.1%}" for k, v in sorted(result["where"].items(), key=lambda kv: -kv[1])), file=sys.stderr)
    return result["jobs"]


def _suite_counts(suite: str, seeds: int | None = None) -> dict[str, int]:
    """Jobs per method (teacher rows as `teacher:<kind>`) in the suite; with `seeds`, every student row on that
    many seeds (the teacher rows as the suite has them)."""
    from kdbench.suite.load import load_suite

    counts: dict[str, int] = {}
    for j in load_suite(suite).jobs():
        key = f"teacher:{j.teacher_kind}" if j.is_teacher else j.method
        counts[key] = counts.get(key, 0) + 1
    return {k: seeds if seeds and not k.startswith("teacher:") else v for k, v in counts.items()}


def _stand_in(method: str, per: dict[str, float]) -> float:
    """The time counted for a method not in the sample: `kd`'s for a student (the median of the sampled students
    without it), the median of the sampled teacher rows for a teacher row."""
    teacher = method.startswith("teacher:")
    if not teacher and PLAIN in per:
        return per[PLAIN]
    like = [v for m, v in per.items() if m.startswith("teacher:") == teacher]
    return statistics.median(like) if like else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--revs", nargs="+", default=["."], help="git revisions ('.' = the working tree)")
    ap.add_argument("--jobs", default=DEFAULT_JOBS,
                    help="the sample: method:seed or teacher:kind:seed, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--suite", default="robustness", help="the suite whose jobs are sampled and projected")
    ap.add_argument("--project-seeds", type=int, default=None,
                    help="project onto the suite with this many seeds on every student row (default: the suite's)")
    ap.add_argument("--profile", action="store_true",
                    help="also run the sample under cProfile and say which layer the time went to (slower)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="kdbench-job-cpu-") as tmp:
        trees = {rev: _checkout(rev, Path(tmp) / "trees") for rev in args.revs}
        runs: dict[str, list[dict]] = {rev: [] for rev in args.revs}
        for r in range(args.rounds):
            for rev in args.revs:
                runs[rev].append(_run(trees[rev], args, Path(tmp) / "cache" / rev.replace("/", "_")))
                print(f"round {r + 1}/{args.rounds}, {rev}: done", file=sys.stderr, flush=True)
    report(args, runs)


def report(args, runs: dict[str, list[dict]]) -> None:
    revs = list(runs)
    names = list(runs[revs[0]][0])
    med = {rev: {n: statistics.median(run[n]["cpu"] for run in runs[rev]) for n in names} for rev in revs}
    print(f"{'job':<22}" + "".join(f"{rev[:12]:>14}" for rev in revs) + ("  ratio" if len(revs) > 1 else ""))
    for n in names:
        ratio = f"  {med[revs[-1]][n] / med[revs[0]][n]:.3f}" if len(revs) > 1 else ""
        print(f"{n:<22}" + "".join(f"{med[rev][n]:13.2f}s" for rev in revs) + ratio)
    for rev in revs:  # where each revision's time went, summed over the sample (median round)
        stages: dict[str, list[float]] = {}
        for run in runs[rev]:
            total: dict[str, float] = {}
            for n in names:
                for k, v in run[n]["stages"].items():
                    total[k] = total.get(k, 0.0) + v
            for k, v in total.items():
                stages.setdefault(k, []).append(v)
        parts = sorted(((statistics.median(v), k) for k, v in stages.items()), reverse=True)
        print(f"{rev[:12]} by stage: " + ", ".join(f"{k} {v:.1f}s" for v, k in parts))
    counts = _suite_counts(args.suite, args.project_seeds)
    methods = {n.rsplit(":", 1)[0] for n in names}
    missing = sorted(m for m in counts if m not in methods)
    for rev in revs:
        per = {m: statistics.median(med[rev][n] for n in names if n.rsplit(":", 1)[0] == m) for m in methods}
        total = sum(c * per.get(m, _stand_in(m, per)) for m, c in counts.items())
        print(f"{rev[:12]} projected job CPU of the suite ({sum(counts.values())} jobs): {total:.0f}s, "
              f"{total / 2:.0f}s on 2 workers")
    if missing:
        print("not sampled, counted at a stand-in's time: " + ", ".join(missing))
    if len(revs) > 1:
        base = runs[revs[0]][0]
        differ = [(rev, n) for rev in revs[1:] for n in names
                  if runs[rev][0][n]["metrics"] != base[n]["metrics"] or runs[rev][0][n]["flags"] != base[n]["flags"]]
        print("same numbers" if not differ else "numbers differ: " + ", ".join(f"{n} at {rev}" for rev, n in differ))


if __name__ == "__main__":
    main()
