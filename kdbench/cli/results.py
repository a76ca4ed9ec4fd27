"""`kdbench list`, `leaderboard`, `check`, `evaluate` and `export`: the commands that read, compare and publish
results."""

from __future__ import annotations

import sys
from pathlib import Path

from ..core.errors import KdbenchError
from ..core.metric_names import at_eps
from .args import data_kwargs


def cmd_list(args) -> int:
    from ..data.corruptions import CORRUPTIONS
    from ..data.registry import DATASETS
    from ..evaluation.attacks import ATTACKS
    from ..evaluation.sanity import FLAGS
    from ..methods import METHODS
    from ..models.registry import MODELS
    from ..suite.load import builtin_suites
    from ..training.teachers import TEACHER_KINDS

    sections = {"datasets": DATASETS, "models": MODELS, "methods": METHODS, "teacher-kinds": TEACHER_KINDS,
                "attacks": ATTACKS, "corruptions": CORRUPTIONS, "flags": FLAGS}
    for name, reg in sections.items():
        if args.what in ("all", name):
            print(f"{name}:")
            for entry in reg.entries():  # a plugin's entries say where they come from
                origin = "" if entry.origin.kind == "built-in" else f"  [{entry.origin.short()}]"
                print(f"  {entry.name:<24} {entry.summary}{origin}")
    if args.what in ("all", "suites"):
        print("suites:")
        for name, path in builtin_suites().items():
            print(f"  {name:<24} {path}")
    return 0


def cmd_leaderboard(args) -> int:
    from ..records.merge import merge_into
    from ..reporting.current import superseded_line
    from ..reporting.report import write_reports

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
        if rep.get("superseded"):
            print(superseded_line(rep["superseded"], folder), file=sys.stderr)
        print(f"{folder}: {rep['records']} records -> summary.csv, leaderboard.md, leaderboard.html, "
              f"{len(rep['plots'])} plots" + ("" if rep.get("rebuilt", True) else " (up to date, nothing rewritten)"))
    return 0


def cmd_check(args) -> int:
    import dataclasses

    from ..records.store import load_records
    from ..reporting.check import (
        baseline_from_records,
        compare,
        elsewhere,
        format_table,
        load_baseline,
        parse_overrides,
        write_baseline,
    )
    from ..reporting.check_summary import machine_lines, power_lines
    from ..reporting.current import current, superseded_line
    from ..reporting.report import write_reports
    from ..suite.configs import validate_check
    from ..suite.load import load_suite

    if args.run:
        from .run import pin_before_loading

        pin_before_loading(args)
    suite = load_suite(args.suite)
    baseline_path = args.results / suite.name / "baseline.json"
    folder = args.out or args.results / suite.name
    cfg = suite.check
    cfg = validate_check(dataclasses.replace(cfg, tolerance={**cfg.tolerance, **parse_overrides(args.tolerance)},
                                             **{k: v for k, v in (("k", args.k), ("floor", args.floor),
                                                                  ("alpha", args.alpha), ("drop", args.drop))
                                                if v is not None}), "--")
    if args.variation is not None and not args.update_baseline:
        raise KdbenchError("--variation measures a new baseline's variation: use it with --update-baseline")
    if args.variation and len(set(args.variation)) < len(args.variation):
        raise KdbenchError(f"--variation names the same re-run twice ({', '.join(args.variation)}): each re-run "
                           "counts once")
    if args.run:
        from ..evaluation.cifar_c import with_cifar_c
        from .run import check_plugin_methods, check_run_inputs, executor_for, no_save_students, say_plugins

        suite = no_save_students(with_cifar_c(suite, args.corruptions_from), args)
        run_suite = executor_for(args, suite)
        say_plugins()
        check_run_inputs(suite, args)
        check_plugin_methods(suite, args.data_dir, args.download)
        result = run_suite(folder, cache_dir=args.cache_dir, quiet=args.quiet, **data_kwargs(args))
        write_reports(folder, suite.name, suite.headline_eps)
        if result.failed:
            print(f"{len(result.failed)} job(s) failed: see {folder / 'failures'}", file=sys.stderr)
            return 1
    records, bad = load_records(folder)
    if bad:
        for b in bad:
            print(f"damaged record {b.path}: {b.reason}", file=sys.stderr)
        return 1
    records, superseded = current(records)
    if superseded:
        print(superseded_line(superseded, folder), file=sys.stderr)
    if not records:
        raise KdbenchError(f"no records for suite {suite.name!r} under {str(folder)!r}; run it first (or use --run)")
    path = baseline_path
    if args.update_baseline:
        from .variation_run import variation_records

        reruns = [rerun for where in args.variation or [] for rerun in variation_records(args, folder, records, where)]
        current = baseline_from_records(records, suite.name, suite.headline_eps, reruns, cfg.alpha)
        write_baseline(path, current)
        print(f"wrote {path} ({len(current['rows'])} rows" + (f"; variation measured on {sum(map(len, reruns))} "
                                                              "re-run records)" if reruns else ")"))
        view = compare(current, elsewhere(current), cfg)
        print("\n".join(machine_lines(view, cfg.alpha, current)
                        + power_lines(view, suite.headline_eps, cfg.drop, args.detectable)))
        return 0
    current = baseline_from_records(records, suite.name, suite.headline_eps)
    baseline = load_baseline(path)
    table = compare(baseline, current, cfg)
    changed = table[table["status"] != "ok"]
    if len(changed):
        print(format_table(changed))
    for line in machine_lines(table, cfg.alpha, baseline) + power_lines(table, suite.headline_eps, cfg.drop,
                                                                        args.detectable):
        print(line)
    regressed = table[table["status"] == "regressed"]
    improved = table[table["status"] == "improved"]
    moved = table[table["status"] == "moved"]
    for _, r in regressed.iterrows():
        seed = f" (seed {r['seed']})" if r["seed"] else ""
        print(f"REGRESSION {r['row']}: {r['metric']}{seed}", file=sys.stderr)
    print(f"{len(table)} checks: {len(table) - len(regressed) - len(improved) - len(moved)} ok, {len(regressed)} "
          f"regressed, {len(improved)} improved" + (" (update the baseline on purpose: --update-baseline)"
                                                    if len(improved) else "")
          + (f", {len(moved)} moved (a sanity flag new on one seed on another machine, whose numbers machine "
             "variation moves: reported, not failed)" if len(moved) else ""))
    return 1 if len(regressed) else 0


def cmd_evaluate(args) -> int:
    from ..core.gpu import pick_device
    from ..execution import external
    from ..execution.workspace import default_cache_dir
    from ..reporting.report import write_reports

    device = pick_device(args.device)
    cache_dir = args.cache_dir or default_cache_dir()
    target = external.target_from_args(args, device, cache_dir)
    name = target.name
    out = args.out or Path("results") / target.jobs[0].suite
    written = external.evaluate_target(target, out, device, cache_dir, args.data_dir, False, args.corruptions_from,
                                       args.quiet)
    write_reports(out)
    e = at_eps("robust", target.jobs[0].headline_eps)
    for rec in written:
        m = rec["metrics"]
        print(f"{name} seed {rec['seed']}: clean {m['clean']:.4f}, {e} {m.get(e, float('nan')):.4f}"
              + (f", flags: {' '.join(rec['flags'])}" if rec["flags"] else "") + f" [{rec['job_id']}]")
    print(f"{len(written)} record(s) written, {len(target.jobs) - len(written)} already there; results in {out}")
    return 0


def cmd_export(args) -> int:
    from ..reporting.export import export_record

    files = export_record(args.record, args.to)
    print(f"wrote {', '.join(files)} to {args.to}")
    return 0
