"""Command line: `python -m kdbench run|list|leaderboard ...` (also the `kdbench` console script).

Bad input is one line on stderr and exit code 2; nothing is written before the input is validated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import KdbenchError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (argparse's own convention too)
        self.exit(2, f"error: {message}\n")


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _number(kind, low: float):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} >= {low:g}, "
                                             f"got {text!r}")
        return value

    return parse


def _workers(text: str):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got {text!r}")
    return value


def _add_executor_args(p) -> None:
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: jobs on worker processes of this machine (default); ray: every job a task on a Ray "
                        "cluster (pip install 'kdbench[ray]')")
    p.add_argument("--workers", type=_workers, metavar="N|auto",
                   help="with --executor local: jobs run at once, each in its own process; 1 runs them one "
                        "after another in this process (default auto: on the CPU, the usable cores divided by "
                        "--cpus-per-job, fewer if the memory would not hold that many workers; on CUDA, 1)")
    p.add_argument("--address", help="with --executor ray: the cluster to use, HOST:PORT of its head or 'auto' "
                                      "(default: start a Ray instance on this machine)")
    p.add_argument("--cpus-per-job", type=_number(int, 1), metavar="N",
                   help="CPUs per job: the job runs torch on that many threads, and its numbers depend on it "
                        "(default: the suite's [executor] cpus_per_job, else 1)")
    p.add_argument("--gpus-per-job", type=_number(float, 0), metavar="G",
                   help="with --executor ray: GPUs per job, a fraction shares one (default: the suite's, else 0)")
    p.add_argument("--max-retries", type=_number(int, 0), metavar="N",
                   help="with --executor ray: re-runs of a job whose worker died (default: the suite's, else 2)")


def usable_cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def local_workers(requested, device, cpus_per_job: int) -> int:
    """How many jobs the local executor runs at once: `requested`, or for 'auto' (None) one per `cpus_per_job`
    usable cores on the CPU and one on CUDA (a GPU is shared only when asked)."""
    if requested not in (None, "auto"):
        return requested
    return 1 if device.type == "cuda" else max(1, usable_cores() // cpus_per_job)


def _executor(args, suite):
    """The chosen executor as run(out, **run_suite options) -> RunResult; its inputs are checked, nothing runs."""
    if args.executor == "local":
        given = [flag for flag, v in (("--address", args.address), ("--gpus-per-job", args.gpus_per_job),
                                      ("--max-retries", args.max_retries)) if v is not None]
        if given:
            raise KdbenchError(f"{', '.join(given)} only apply to --executor ray")
        from .driver import run_suite
        from .gpu import pick_device

        device = pick_device(args.device)
        threads = args.cpus_per_job or suite.executor.cpus_per_job  # checked when the suite was loaded
        workers = local_workers(args.workers, device, threads)

        def run(out, **kw):
            n, why = workers, ""
            if args.workers in (None, "auto") and device.type == "cpu":  # as many as the memory holds, too
                from .resources import memory_capped_workers

                n, why = memory_capped_workers(workers, suite)
            return run_suite(suite, out, device, workers=n, threads=threads, workers_note=why, **kw)

        return run
    if args.workers is not None:
        raise KdbenchError("--workers only applies to --executor local (Ray runs as many jobs as the cluster has "
                           "room for: see --cpus-per-job)")
    from .ray_executor import prepare

    return prepare(suite, args.device, args.address, args.cpus_per_job, args.gpus_per_job, args.max_retries)


def _add_data_args(p) -> None:
    """Where a run's data comes from (run, and check --run)."""
    p.add_argument("--data-dir", type=Path, help="where torchvision datasets live (default: the suite's data_dir, "
                                                 "else $KDBENCH_DATA, else ~/.cache/kdbench/data)")
    p.add_argument("--download", action="store_true", help="download missing torchvision datasets")
    p.add_argument("--corruptions-from", type=Path, metavar="DIR",
                   help="a CIFAR-10-C / CIFAR-100-C folder (<corruption>.npy, labels.npy): evaluated beside the "
                        "synthetic corruptions as cifar-c/<name>/<severity>")


def _data_kwargs(args) -> dict:
    """The run_suite options of the flags `_add_data_args` adds."""
    return {"data_dir": args.data_dir, "download": args.download, "corruptions_from": args.corruptions_from}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kdbench", description="Robustness benchmark for knowledge distillation.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a suite (resumes: finished jobs are skipped)")
    run.add_argument("--suite", default="robustness", help="a built-in suite name or a path to a .toml file")
    run.add_argument("--out", type=Path, help="results folder (default: results/<suite>)")
    run.add_argument("--methods", type=_name_list, help="comma-separated subset of methods")
    run.add_argument("--seeds", type=_int_list, help="comma-separated seeds (>= 1), replacing the suite's")
    run.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    run.add_argument("--cache-dir", type=Path, help="teacher cache (default: $KDBENCH_CACHE or ~/.cache/kdbench)")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--fail-fast", action="store_true", help="stop at the first failed job")
    run.add_argument("--profile", action="store_true", help="print where the run's time went")
    _add_data_args(run)
    run.add_argument("--no-save-students", action="store_true",
                     help="keep no student weights beside the records (default: the suite's [save] students, on)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the job grid and a compute-time estimate measured on this device; run nothing")
    _add_executor_args(run)

    ls = sub.add_parser("list", help="list datasets, models, methods, teacher kinds, attacks, corruptions, suites")
    ls.add_argument("what", nargs="?", default="all",
                    choices=["all", "datasets", "models", "methods", "teacher-kinds", "attacks", "corruptions", "suites",
                             "flags"])

    rp = sub.add_parser("reproduce", help="re-run the job of a record and compare every metric")
    rp.add_argument("record", type=Path, help="a record JSON file (results/<suite>/records/<job_id>.json)")
    rp.add_argument("--device", default="cpu", help="device to re-run on (default cpu)")
    rp.add_argument("--tolerance", type=float,
                    help="largest allowed absolute difference per metric (default: bit-for-bit on the record's "
                         "machine type and threads; on another machine, the noise a re-run there is expected to "
                         "make, from the per-example noise model)")
    rp.add_argument("--cache-dir", type=Path,
                    help="reuse this teacher cache (default: a fresh temporary one, so teachers are retrained)")
    rp.add_argument("--data-dir", type=Path, help="where torchvision datasets live (as for run)")
    rp.add_argument("--corruptions-from", type=Path, metavar="DIR",
                    help="the CIFAR-C folder, for a record whose job evaluated one (as for run)")
    rp.add_argument("--quiet", action="store_true")

    lb = sub.add_parser("leaderboard", help="rebuild summary, leaderboard and plots from stored records")
    lb.add_argument("--suite", help="suite name (default: every suite under --results)")
    lb.add_argument("--results", type=Path, default=Path("results"), help="folder holding <suite>/records")
    lb.add_argument("--from", dest="sources", type=Path, nargs="+", default=[], metavar="DIR",
                    help="merge the records of these result folders into results/<suite> first (identical job "
                         "ids are de-duplicated; a job id with different numbers is a conflict: nothing is "
                         "written, exit 1)")

    ev = sub.add_parser("evaluate", help="evaluate a model with a suite's evaluation protocol; writes an "
                                         "'external' record (a leaderboard row)")
    src = ev.add_mutually_exclusive_group(required=True)
    src.add_argument("--record", type=Path, help="a kdbench record: its saved student (or teacher), evaluated with "
                                                 "that record's own protocol")
    src.add_argument("--checkpoint", type=Path, help="a state dict of a registered architecture (--arch)")
    src.add_argument("--robustbench", metavar="ID", help="a RobustBench model-zoo entry (kdbench[robustbench])")
    ev.add_argument("--name", required=True, help="the row's name on the leaderboard (shown as 'NAME [external]')")
    ev.add_argument("--arch", help="with --checkpoint: its architecture (default: what a kdbench file says)")
    ev.add_argument("--normalize", default="checkpoint", help="with --checkpoint: checkpoint (default), none or "
                                                              "dataset, as for checkpoint teachers")
    ev.add_argument("--threat-model", default="Linf", help="with --robustbench: the zoo's threat model")
    ev.add_argument("--suite", help="the protocol for --checkpoint/--robustbench (default: robustness)")
    ev.add_argument("--seeds", type=_int_list, help="evaluation seeds (default: the suite's first)")
    ev.add_argument("--no-transfer", action="store_true", help="no transfer attack from the suite's teacher")
    ev.add_argument("--out", type=Path, help="results folder (default: results/<suite>)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--cache-dir", type=Path, help="teacher cache (default: $KDBENCH_CACHE or ~/.cache/kdbench)")
    ev.add_argument("--data-dir", type=Path, help="where torchvision datasets live (as for run)")
    ev.add_argument("--corruptions-from", type=Path, metavar="DIR", help="the CIFAR-C folder (as for run)")
    ev.add_argument("--quiet", action="store_true")

    ex = sub.add_parser("export", help="copy a record's student weights, standalone model code and card to a folder")
    ex.add_argument("record", type=Path, help="a record JSON file (results/<suite>/records/<job_id>.json)")
    ex.add_argument("--to", type=Path, required=True, help="the folder to write (created; must be empty)")

    ck = sub.add_parser("check", help="compare a suite's results with its stored baseline (exit 1 on regression)")
    ck.add_argument("--suite", default="robustness", help="a built-in suite name or a .toml file")
    ck.add_argument("--results", type=Path, default=Path("results"), help="folder holding <suite>/")
    ck.add_argument("--update-baseline", action="store_true", help="write baseline.json from the current results")
    ck.add_argument("--run", action="store_true", help="run the suite first (resuming from the records in --out)")
    ck.add_argument("--out", type=Path, help="the records to check (default: --results/<suite>); with --run, a "
                                             "fresh folder re-runs every job, e.g. in CI after a code change")
    ck.add_argument("--tolerance", action="append", default=[], metavar="METRIC=VALUE",
                    help="absolute tolerance for a metric or glob, e.g. 'robust@*=0.05' (repeatable)")
    ck.add_argument("--alpha", type=float, help="across machines: chance that machine noise alone fails the check "
                                                "(default 0.05, Bonferroni over the metrics)")
    ck.add_argument("--k", type=float, help="for baselines without per-example data: tolerance multiplier of the "
                                            "baseline's standard error (default 3)")
    ck.add_argument("--floor", type=float, help="for baselines without per-example data: smallest tolerance "
                                                "(default 0.02)")
    ck.add_argument("--device", default="auto")
    ck.add_argument("--cache-dir", type=Path)
    ck.add_argument("--quiet", action="store_true")
    ck.add_argument("--no-save-students", action="store_true", help="with --run: keep no student weights")
    _add_data_args(ck)
    _add_executor_args(ck)
    return p


def cmd_run(args) -> int:
    from .cifar_c import with_cifar_c
    from .report import console_table, write_reports
    from .gpu import pick_device
    from .suite import load_suite, with_overrides

    # the CIFAR-C folder is checked here, and its corruptions enter the job ids (a dry run's too)
    suite = with_cifar_c(with_overrides(load_suite(args.suite), args.methods, args.seeds), args.corruptions_from)
    suite = _no_save_students(suite, args)
    out = args.out or Path("results") / suite.name
    run_suite = _executor(args, suite)  # checks the executor's flags (a dry run too)
    if args.dry_run:
        return cmd_dry_run(suite, out, pick_device(args.device), args.quiet)
    _check_run_inputs(suite, args)
    result = run_suite(out, cache_dir=args.cache_dir, quiet=args.quiet, fail_fast=args.fail_fast, **_data_kwargs(args))
    import time

    t0 = time.perf_counter()
    rep = write_reports(out, suite.name, suite.headline_eps)
    result.profile["reporting"] = time.perf_counter() - t0
    if not args.quiet:
        print(console_table(rep["summary"], suite.headline_eps, rep["record_list"]))
    for job, reason in result.failed:
        print(f"FAILED {job.label()} [{job.job_id}]: {reason}", file=sys.stderr)
    if args.profile:
        total = sum(result.profile.values())
        print("where the time went:")
        for key, sec in sorted(result.profile.items(), key=lambda kv: -kv[1]):
            print(f"  {key:<24} {sec:8.1f}s  {100 * sec / max(total, 1e-9):5.1f}%")
    print(f"{result.ran} jobs run, {result.skipped} already done, {len(result.failed)} failed, "
          f"{result.seconds:.1f}s; results in {out}")
    return 1 if result.failed else 0


def _no_save_students(suite, args):
    """`suite` without student weights when --no-save-students says so."""
    import dataclasses

    return dataclasses.replace(suite, save=dataclasses.replace(suite.save, students=False)) if args.no_save_students \
        else suite


def _check_run_inputs(suite, args) -> None:
    """Input errors that would fail every job (missing dataset files, CIFAR-C corruptions without their folder):
    one line now."""
    from .data import data_root

    if suite.eval.cifar_c and args.corruptions_from is None:
        raise KdbenchError(f"suite {suite.name!r} evaluates the CIFAR-C corruptions {', '.join(suite.eval.cifar_c)}: "
                           "give their folder with --corruptions-from DIR")
    from .datasets_torchvision import SETS, check_available, download

    if suite.data.name in SETS:
        root = data_root(suite.data, args.data_dir)
        if args.download or suite.data.download:
            download(suite.data.name, root)
        check_available(suite.data.name, root, False)


def cmd_dry_run(suite, out: Path, device, quiet: bool) -> int:
    from .estimate import estimate, format_estimate
    from .records import load_records

    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    est = estimate(suite, device, progress=say)
    done = {r["job_id"] for r in load_records(out)[0]} if (out / "records").is_dir() else set()
    print(format_estimate(suite, est, device, done))
    return 0


def cmd_reproduce(args) -> int:
    import json
    import tempfile

    from .records import validate_record
    from .gpu import configure_backend, job_gpu, pick_device
    from .job import run_job
    from .run_progress import Progress
    from .workspace import Workspace, torch_threads
    from .jobs import job_from_config

    try:
        record = json.loads(args.record.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KdbenchError(f"cannot read record {str(args.record)!r}: {e}") from None
    problem = validate_record(record) or (None if "config" in record else "it stores no job config")
    if problem:
        raise KdbenchError(f"{str(args.record)!r} is not a kdbench record: {problem}")
    if record["role"] == "external":
        raise KdbenchError(f"{str(args.record)!r} is an external record: evaluate its model again with "
                           "kdbench evaluate")
    job = job_from_config(record["config"], record["suite"])
    if job.job_id != record["job_id"]:
        raise KdbenchError(f"the record's config hashes to {job.job_id}, not its job id {record['job_id']}: "
                           "it was edited or written by an incompatible version")
    device = pick_device(args.device)
    configure_backend(job_gpu(job, device))
    threads = record.get("env", {}).get("threads")  # the numbers depend on the threads the job ran on
    with torch_threads(threads if isinstance(threads, int) and threads >= 1 else None):
        with tempfile.TemporaryDirectory(prefix="kdbench-reproduce-") as tmp:
            ws = Workspace(device, args.cache_dir or Path(tmp), data_dir=args.data_dir,
                           corruptions_from=args.corruptions_from)
            again = run_job(job, ws, Progress(1, args.quiet))
    from .reproduce import compare_rerun

    return compare_rerun(record, again, args.tolerance)


def cmd_list(args) -> int:
    from .attacks import ATTACKS
    from .corruptions import CORRUPTIONS
    from .datasets import DATASETS
    from .methods import METHODS
    from .models import MODELS
    from .sanity import FLAGS
    from .suite import builtin_suites
    from .teachers import TEACHER_KINDS

    sections = {"datasets": DATASETS, "models": MODELS, "methods": METHODS, "teacher-kinds": TEACHER_KINDS,
                "attacks": ATTACKS, "corruptions": CORRUPTIONS, "flags": FLAGS}
    for name, reg in sections.items():
        if args.what in ("all", name):
            print(f"{name}:")
            for entry in reg.entries():
                print(f"  {entry.name:<24} {entry.summary}")
    if args.what in ("all", "suites"):
        print("suites:")
        for name, path in builtin_suites().items():
            print(f"  {name:<24} {path}")
    return 0


def cmd_leaderboard(args) -> int:
    from .merge import merge_into
    from .report import write_reports

    root = args.results
    if args.sources:
        if not args.suite:
            raise KdbenchError("--from needs --suite: the suite whose results folder receives the merged records")
        conflicts = merge_into(root / args.suite, args.sources)
        if conflicts:
            for c in conflicts:
                print(f"conflict: {c}", file=sys.stderr)
            print(f"{len(conflicts)} conflicting record(s): nothing was merged or written", file=sys.stderr)
            return 1
    folders = [root / args.suite] if args.suite else sorted(p.parent for p in root.glob("*/records"))
    if not folders or not all((f / "records").is_dir() for f in folders):
        raise KdbenchError(f"no records found under {str(root)!r}" + (f" for suite {args.suite!r}" if args.suite else ""))
    for folder in folders:
        rep = write_reports(folder)
        for b in rep["bad"]:
            print(f"warning: skipped damaged record {b.path}: {b.reason}", file=sys.stderr)
        print(f"{folder}: {rep['records']} records -> summary.csv, leaderboard.md, leaderboard.html, "
              f"{len(rep['plots'])} plots" + ("" if rep.get("rebuilt", True) else " (up to date, nothing rewritten)"))
    return 0


def cmd_check(args) -> int:
    import dataclasses

    from .check import baseline_from_records, compare, format_table, load_baseline, parse_overrides
    from .records import atomic_write_text, load_records
    from .report import write_reports
    from .suite import load_suite

    suite = load_suite(args.suite)
    baseline_path = args.results / suite.name / "baseline.json"
    folder = args.out or args.results / suite.name
    cfg = suite.check
    cfg = dataclasses.replace(cfg, tolerance={**cfg.tolerance, **parse_overrides(args.tolerance)},
                              **{k: v for k, v in (("k", args.k), ("floor", args.floor), ("alpha", args.alpha))
                                 if v is not None})
    if args.run:
        from .cifar_c import with_cifar_c

        suite = _no_save_students(with_cifar_c(suite, args.corruptions_from), args)
        run_suite = _executor(args, suite)
        _check_run_inputs(suite, args)
        result = run_suite(folder, cache_dir=args.cache_dir, quiet=args.quiet, **_data_kwargs(args))
        write_reports(folder, suite.name, suite.headline_eps)
        if result.failed:
            print(f"{len(result.failed)} job(s) failed: see {folder / 'failures'}", file=sys.stderr)
            return 1
    records, bad = load_records(folder)
    if bad:
        for b in bad:
            print(f"damaged record {b.path}: {b.reason}", file=sys.stderr)
        return 1
    if not records:
        raise KdbenchError(f"no records for suite {suite.name!r} under {str(folder)!r}; run it first (or use --run)")
    current = baseline_from_records(records, suite.name, suite.headline_eps)
    path = baseline_path
    if args.update_baseline:
        import json

        atomic_write_text(path, json.dumps(current, indent=1, sort_keys=True) + "\n")
        print(f"wrote {path} ({len(current['rows'])} rows)")
        return 0
    table = compare(load_baseline(path), current, cfg)
    changed = table[table["status"] != "ok"]
    if len(changed):
        print(format_table(changed))
    for machine, rows in table[table["machine"] != ""].groupby("machine"):
        how = ("exact (equal configs give equal numbers)" if machine == "same machine" else
               f"within the per-example noise model, Bonferroni over {len(rows)} metrics (alpha {cfg.alpha:g}); "
               f"differences up to {100 * rows['tolerance'].max():.1f} points expected")
        print(f"{machine}: {len(rows)} checks, {how}")
    regressed = table[table["status"] == "regressed"]
    improved = table[table["status"] == "improved"]
    for _, r in regressed.iterrows():
        seed = f" (seed {r['seed']})" if r["seed"] else ""
        print(f"REGRESSION {r['row']}: {r['metric']}{seed}", file=sys.stderr)
    print(f"{len(table)} checks: {len(table) - len(regressed) - len(improved)} ok, {len(regressed)} regressed, "
          f"{len(improved)} improved" + (" (update the baseline on purpose: --update-baseline)" if len(improved) else ""))
    return 1 if len(regressed) else 0


def cmd_evaluate(args) -> int:
    from . import external
    from .report import write_reports
    from .gpu import pick_device
    from .workspace import default_cache_dir

    device = pick_device(args.device)
    cache_dir = args.cache_dir or default_cache_dir()
    target = external.target_from_args(args, device, cache_dir)
    name = target.name
    out = args.out or Path("results") / target.jobs[0].suite
    written = external.evaluate_target(target, out, device, cache_dir, args.data_dir, False, args.corruptions_from,
                                       args.quiet)
    write_reports(out)
    e = f"robust@{target.jobs[0].headline_eps:g}"
    for rec in written:
        m = rec["metrics"]
        print(f"{name} seed {rec['seed']}: clean {m['clean']:.4f}, {e} {m.get(e, float('nan')):.4f}"
              + (f", flags: {' '.join(rec['flags'])}" if rec["flags"] else "") + f" [{rec['job_id']}]")
    print(f"{len(written)} record(s) written, {len(target.jobs) - len(written)} already there; results in {out}")
    return 0


def cmd_export(args) -> int:
    from .export import export_record

    files = export_record(args.record, args.to)
    print(f"wrote {', '.join(files)} to {args.to}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"run": cmd_run, "list": cmd_list, "leaderboard": cmd_leaderboard,
                "reproduce": cmd_reproduce, "check": cmd_check, "evaluate": cmd_evaluate,
                "export": cmd_export}[args.command](args)
    except KdbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # every finished record is on disk; a re-run resumes after them
        print("stopped by Ctrl-C; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
