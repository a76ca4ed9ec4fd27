"""`kdbench run` (and its dry run) and `kdbench reproduce`: the commands that run jobs."""

from __future__ import annotations

import sys
from pathlib import Path

from ..core.errors import KdbenchError
from .args import data_kwargs


def pin_before_loading(args) -> None:
    """Pin the CPU kernels that --kernels or the suite file asks for before the suite is loaded (loading can run
    tensor code); executor_for checks the loaded suite's setting again."""
    from ..core.machine import KERNEL_LEVELS, pin_kernels
    from ..suite.load import declared_kernels

    level = getattr(args, "kernels", None) or declared_kernels(args.suite)
    if level in KERNEL_LEVELS:
        pin_kernels(level)


def executor_for(args, suite):
    """The chosen executor as run(out, **run_suite options) -> RunResult; its inputs are checked, nothing runs
    (the CPU kernels are pinned now, before any tensor work, when the suite or --kernels asks)."""
    from ..core.machine import pin_kernels

    pin_kernels(args.kernels or suite.executor.kernels)
    if args.executor == "local":
        given = [flag for flag, v in (("--address", args.address), ("--gpus-per-job", args.gpus_per_job),
                                      ("--max-retries", args.max_retries)) if v is not None]
        if given:
            raise KdbenchError(f"{', '.join(given)} only apply to --executor ray")
        from ..core.gpu import pick_device
        from ..execution.driver import run_suite
        from ..execution.resources import local_workers

        device = pick_device(args.device)
        threads = args.cpus_per_job or suite.executor.cpus_per_job  # checked when the suite was loaded
        workers = local_workers(args.workers, device, threads)

        def run(out, **kw):
            n, why = workers, ""
            if args.workers in (None, "auto") and device.type == "cpu":  # as many as the memory holds, too
                from ..execution.resources import memory_capped_workers

                n, why = memory_capped_workers(workers, suite)
            return run_suite(suite, out, device, workers=n, threads=threads, workers_note=why, **kw)

        return run
    if args.workers is not None:
        raise KdbenchError("--workers only applies to --executor local (Ray runs as many jobs as the cluster has "
                           "room for: see --cpus-per-job)")
    from ..execution.ray_executor import prepare

    return prepare(suite, args.device, args.address, args.cpus_per_job, args.gpus_per_job, args.max_retries)


def cmd_run(args) -> int:
    from ..core.gpu import pick_device
    from ..evaluation.cifar_c import with_cifar_c
    from ..reporting.current import superseded_line
    from ..reporting.report import console_table, write_reports
    from ..suite.load import load_suite, with_overrides

    # the CIFAR-C folder is checked here, and its corruptions enter the job ids (a dry run's too)
    pin_before_loading(args)
    suite = with_cifar_c(with_overrides(load_suite(args.suite), args.methods, args.seeds), args.corruptions_from)
    suite = no_save_students(suite, args)
    out = args.out or Path("results") / suite.name
    run_suite = executor_for(args, suite)  # checks the executor's flags (a dry run too)
    say_plugins()
    if args.dry_run:
        check_plugin_methods(suite, args.data_dir, args.download)
        return cmd_dry_run(suite, out, pick_device(args.device), args.quiet)
    check_run_inputs(suite, args)
    check_plugin_methods(suite, args.data_dir, args.download)
    result = run_suite(out, cache_dir=args.cache_dir, quiet=args.quiet, fail_fast=args.fail_fast, **data_kwargs(args))
    import time

    if not args.no_report:
        t0 = time.perf_counter()
        rep = write_reports(out, suite.name, suite.headline_eps)
        result.profile["reporting"] = time.perf_counter() - t0
        if rep.get("superseded"):
            print(superseded_line(rep["superseded"], out), file=sys.stderr)
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


def say_plugins() -> None:
    """Name every plugin this process imported, with its hash, before any job starts: their code runs."""
    from ..core.plugins import loaded

    for plugin in loaded():
        o = plugin.origin
        what = {"file": f"file {o.path}", "module": f"module {o.name}",
                "package": f"package {o.name} {o.version} (module {plugin.module})"}[o.kind]
        print(f"plugin {what}: sha256 {o.sha256}", file=sys.stderr, flush=True)


def check_plugin_methods(suite, data_dir, download: bool) -> None:
    from ..execution.plugin_check import check_plugin_methods as check

    check(suite, data_dir, download)


def no_save_students(suite, args):
    """`suite` without student weights when --no-save-students says so."""
    import dataclasses

    return dataclasses.replace(suite, save=dataclasses.replace(suite.save, students=False)) if args.no_save_students \
        else suite


def check_run_inputs(suite, args) -> None:
    """Input errors that would fail every job (missing dataset files, CIFAR-C corruptions without their folder):
    one line now."""
    from ..data.load import data_root

    if suite.eval.cifar_c and args.corruptions_from is None:
        raise KdbenchError(f"suite {suite.name!r} evaluates the CIFAR-C corruptions {', '.join(suite.eval.cifar_c)}: "
                           "give their folder with --corruptions-from DIR")
    from ..data.torchvision_sets import SETS, check_available, download

    if suite.data.name in SETS:
        root = data_root(suite.data, args.data_dir)
        if args.download or suite.data.download:
            download(suite.data.name, root)
        check_available(suite.data.name, root, False)


def cmd_dry_run(suite, out: Path, device, quiet: bool) -> int:
    from ..execution.estimate import estimate, format_estimate
    from ..records.store import load_records

    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    est = estimate(suite, device, progress=say)
    done = {r["job_id"] for r in load_records(out)[0]} if (out / "records").is_dir() else set()
    print(format_estimate(suite, est, device, done))
    return 0


def cmd_reproduce(args) -> int:
    from ..execution.reproduce import compare_rerun, rerun_record

    record, again = rerun_record(args.record, args.device, args.cache_dir, args.data_dir, args.corruptions_from,
                                 args.quiet, args.kernels)
    variation, source = row_variation(record, args.baseline or args.record.resolve().parent.parent / "baseline.json",
                                      args.baseline is not None)
    return compare_rerun(record, again, args.tolerance, variation, source)


def row_variation(record: dict, path: Path, given: bool) -> tuple[dict | None, str]:
    """The measured variation of `record`'s row in the baseline at `path` ({metric: [sd, df]}; None where there
    is none, or no baseline beside the record unless `given`)."""
    from ..reporting.check import load_baseline, record_row

    if not given and not path.is_file():
        return None, ""
    baseline = load_baseline(path)
    if baseline.get("suite") != record.get("suite"):
        raise KdbenchError(f"--baseline {str(path)!r} is for suite {baseline.get('suite')!r}, the record for "
                           f"{record.get('suite')!r}")
    return ((baseline.get("rows") or {}).get(record_row(record)) or {}).get("variation"), str(path)
