"""kdbench from Python, for notebooks and a user's own training scripts: the same code paths as the command line.

    import kdbench
    record = kdbench.evaluate(my_model, suite="robustness", name="my-student", out="results/robustness")
    records = kdbench.run("my_suite.toml", out="/tmp/runs", plugins=["my_kd.py"])
    frame = kdbench.load_results("results/robustness")

Each call imports the installed plugins first (the `kdbench.plugins` entry points, core/plugins.py). Bad input
raises `KdbenchError` (a ValueError) with the one line the command line prints.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import KdbenchError
from ..core.plugins import load_all


def evaluate(model, suite: str = "robustness", name: str = "my-student", out=None, seeds=None, device=None,
             transfer: bool = True, cache_dir=None, quiet: bool = True) -> dict:
    """Put `model`, any `torch.nn.Module` taking images in [0, 1] and returning logits (no registration), through
    `suite`'s evaluation protocol, as `kdbench evaluate --model` does (execution/external.py), and write its
    `external` record into `out` (default results/<suite>): a leaderboard row named `name`. The model itself is
    left as it is (a copy is evaluated). Returns the record; with several `seeds`, a dict seed -> record. A record
    that is there already (same model, weights, name and protocol) is returned, not recomputed."""
    from ..core.gpu import pick_device
    from ..evaluation.cifar_c import with_cifar_c
    from ..execution import external
    from ..execution.user_models import from_module
    from ..execution.workspace import default_cache_dir
    from ..records.store import record_path
    from ..reporting.report import write_reports
    from ..suite.load import load_suite, with_overrides

    load_all(())
    dev = pick_device(device or "auto")
    seeds = list(seeds) if seeds else None
    protocol = with_cifar_c(with_overrides(load_suite(str(suite)), None, seeds), None)
    target = external.user_model_target(protocol, name, from_module(model), seeds, transfer, dev.type == "cuda")
    out = Path(out) if out is not None else Path("results") / target.jobs[0].suite
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    found: list = []
    written = external.evaluate_target(target, out, dev, cache, quiet=quiet, found=found)
    write_reports(out)
    ids = {r["seed"]: r["job_id"] for r in found + written}
    records = [json.loads(record_path(out, ids[job.seed]).read_text(encoding="utf-8")) for job in target.jobs]
    return records[0] if len(records) == 1 else {r["seed"]: r for r in records}


def run(suite, out=None, methods=None, seeds=None, executor: str = "local", workers=None, plugins=(),
        device: str = "auto", cache_dir=None, quiet: bool = False) -> list[dict]:
    """`kdbench run` (cli/run.py) from Python: runs the jobs of `suite` (a built-in name or a .toml file) missing
    from `out` (default results/<suite>), with `plugins` (files relative to the working folder, or modules)
    imported first. Returns the records of the suite's jobs in `out`; a job that failed has none (its reason is
    in out/failures/, and printed)."""
    from ..cli.args import build_parser
    from ..cli.run import cmd_run
    from ..records.store import load_records
    from ..suite.load import load_suite, with_overrides

    argv = ["run", "--suite", str(suite), "--executor", executor, "--device", device]
    for flag, value in (("--out", out), ("--methods", ",".join(methods or [])),
                        ("--seeds", ",".join(str(s) for s in seeds or [])), ("--workers", workers),
                        ("--cache-dir", cache_dir)):
        if value:
            argv += [flag, str(value)]
    for plugin in plugins:
        argv += ["--plugin", str(plugin)]
    try:
        args = build_parser().parse_args(argv + (["--quiet"] if quiet else []))
    except SystemExit:  # argparse printed the one line already
        raise KdbenchError(f"kdbench.run: invalid arguments {argv[1:]}") from None
    load_all(args.plugins)
    cmd_run(args)
    chosen = with_overrides(load_suite(str(suite)), args.methods, args.seeds)
    folder = args.out or Path("results") / chosen.name
    ids = {j.job_id for cuda in (False, True) for j in chosen.jobs(cuda)}
    return [r for r in load_records(folder)[0] if r["job_id"] in ids]


META = ("job_id", "suite", "dataset", "pair", "role", "method", "teacher_kind", "seed", "method_params", "student",
        "params", "flags", "plugins")


def load_results(folder) -> "pd.DataFrame":  # noqa: F821 - pandas is imported when called
    """One row per record of the results folder `folder` (results/<suite>, holding records/): its job id, suite,
    dataset, pair, role, method, teacher kind, seed, method parameters, student architecture and size, flags, the
    plugins it used, then every metric as a column (a metric a record lacks is NaN). Damaged records are left out
    with a warning."""
    import warnings

    import pandas as pd

    from ..records.store import load_records

    if not (Path(folder) / "records").is_dir():
        raise KdbenchError(f"{str(folder)!r} holds no records/ folder: give a results folder (results/<suite>)")
    records, bad = load_records(Path(folder))
    for b in bad:
        warnings.warn(f"skipped damaged record {b.path}: {b.reason}", stacklevel=2)
    rows, metrics = [], {}
    for r in records:
        student = r.get("student") or {}
        rows.append({"job_id": r["job_id"], "suite": r["suite"], "dataset": r["dataset"], "pair": r.get("pair", ""),
                     "role": r["role"], "method": r["method"], "teacher_kind": r.get("teacher_kind"),
                     "seed": r["seed"], "method_params": r.get("method_params", {}), "student": student.get("arch"),
                     "params": student.get("params"), "flags": list(r["flags"]),
                     "plugins": [f"{p['name']}@{p['sha256'][:12]}" for p in r.get("plugins", [])], **r["metrics"]})
        metrics.update(dict.fromkeys(r["metrics"]))
    return pd.DataFrame(rows, columns=[*META, *metrics])
