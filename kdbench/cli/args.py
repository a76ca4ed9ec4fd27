"""The command line's arguments: one parser with a sub-command each (`kdbench --help`). Bad flags are one line on
stderr and exit code 2."""

from __future__ import annotations

import argparse
from pathlib import Path


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


def add_executor_args(p) -> None:
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
    p.add_argument("--kernels", choices=["native", "avx2"],
                   help="CPU kernels of torch, oneDNN and MKL: native (the best this CPU has) or avx2 (what an AVX2 "
                        "CPU runs, also on an AVX-512 one: records comparable bit for bit with such a machine's; "
                        "default: the suite's [executor] kernels, else native)")
    p.add_argument("--gpus-per-job", type=_number(float, 0), metavar="G",
                   help="with --executor ray: GPUs per job, a fraction shares one (default: the suite's, else 0)")
    p.add_argument("--max-retries", type=_number(int, 0), metavar="N",
                   help="with --executor ray: re-runs of a job whose worker died (default: the suite's, else 2)")


def add_plugin_args(p) -> None:
    """`--plugin FILE_OR_MODULE` (repeatable): plugins to import before the command reads its suite."""
    p.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="FILE_OR_MODULE",
                   help="a plugin to import first (repeatable): a .py file or an importable module registering "
                        "methods, models, datasets, attacks, corruptions or teacher kinds (docs/plugins.md); it "
                        "runs its code")


def add_data_args(p) -> None:
    """Where a run's data comes from (run, and check --run)."""
    p.add_argument("--data-dir", type=Path, help="where torchvision datasets live (default: the suite's data_dir, "
                                                 "else $KDBENCH_DATA, else ~/.cache/kdbench/data)")
    p.add_argument("--download", action="store_true", help="download missing torchvision datasets")
    p.add_argument("--corruptions-from", type=Path, metavar="DIR",
                   help="a CIFAR-10-C / CIFAR-100-C folder (<corruption>.npy, labels.npy): evaluated beside the "
                        "synthetic corruptions as cifar-c/<name>/<severity>")


def data_kwargs(args) -> dict:
    """The run_suite options of the flags `add_data_args` adds."""
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
    add_data_args(run)
    run.add_argument("--no-save-students", action="store_true",
                     help="keep no student weights beside the records (default: the suite's [save] students, on)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the job grid and a compute-time estimate measured on this device; run nothing")
    run.add_argument("--no-report", action="store_true",
                     help="write the records only, no summary, leaderboard, plots or cards (build them later with "
                          "`leaderboard`)")
    add_executor_args(run)
    add_plugin_args(run)

    ls = sub.add_parser("list", help="list datasets, models, methods, teacher kinds, attacks, corruptions, suites")
    ls.add_argument("what", nargs="?", default="all",
                    choices=["all", "datasets", "models", "methods", "teacher-kinds", "attacks", "corruptions", "suites",
                             "flags"])
    add_plugin_args(ls)

    rp = sub.add_parser("reproduce", help="re-run the job of a record and compare every metric")
    rp.add_argument("record", type=Path, help="a record JSON file (results/<suite>/records/<job_id>.json)")
    rp.add_argument("--device", default="cpu", help="device to re-run on (default cpu)")
    rp.add_argument("--tolerance", type=float,
                    help="largest allowed absolute difference per metric (default: bit-for-bit on the record's "
                         "machine type and threads; on another machine, the variation measured in the baseline, "
                         "else per-example noise)")
    rp.add_argument("--kernels", choices=["native", "avx2"],
                    help="CPU kernels to re-run on (default: those the record names; avx2 re-runs a record made on "
                         "an AVX2 CPU with that CPU's kernels on an AVX-512 one)")
    rp.add_argument("--baseline", type=Path,
                    help="the baseline whose measured variation says how far another machine may move each metric "
                         "(default: baseline.json of the record's results folder, when there)")
    rp.add_argument("--cache-dir", type=Path,
                    help="reuse this teacher cache (default: a fresh temporary one, so teachers are retrained)")
    rp.add_argument("--data-dir", type=Path, help="where torchvision datasets live (as for run)")
    rp.add_argument("--corruptions-from", type=Path, metavar="DIR",
                    help="the CIFAR-C folder, for a record whose job evaluated one (as for run)")
    rp.add_argument("--quiet", action="store_true")
    add_plugin_args(rp)

    lb = sub.add_parser("leaderboard", help="rebuild summary, leaderboard and plots from stored records")
    lb.add_argument("--suite", help="suite name (default: every suite under --results)")
    lb.add_argument("--results", type=Path, default=Path("results"), help="folder holding <suite>/records")
    lb.add_argument("--from", dest="sources", type=Path, nargs="+", default=[], metavar="DIR",
                    help="merge the records of these result folders into results/<suite> first (identical job "
                         "ids are de-duplicated; a job id with different numbers is a conflict: nothing is "
                         "written, exit 1)")
    add_plugin_args(lb)

    ev = sub.add_parser("evaluate", help="evaluate a model with a suite's evaluation protocol; writes an "
                                         "'external' record (a leaderboard row)")
    src = ev.add_mutually_exclusive_group()
    src.add_argument("--record", type=Path, help="a kdbench record: its saved student (or teacher), evaluated with "
                                                 "that record's own protocol")
    src.add_argument("--robustbench", metavar="ID", help="a RobustBench model-zoo entry (kdbench[robustbench])")
    src.add_argument("--model", metavar="FILE.py:FACTORY|module:factory|FILE.pt2",
                     help="a model of your own code: FACTORY() from a Python file or module (any architecture), or a "
                          "torch.export program; --checkpoint gives separate weights")
    ev.add_argument("--checkpoint", type=Path, help="a state dict of a registered architecture (--arch), or the "
                                                    "weights of --model")
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
    add_plugin_args(ev)

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
    ck.add_argument("--alpha", type=float, help="across machines: chance that machine variation alone fails the "
                                                "check (default 0.05, Bonferroni over the metrics)")
    ck.add_argument("--drop", type=float, help="across machines: the drop every checked metric should detect with "
                                               "80%% power; those that cannot are listed (default 0.05 = 5 points)")
    ck.add_argument("--variation", metavar="DIR|auto", action="append",
                    help="with --update-baseline: measure how far another machine moves each metric from a re-run "
                         "of the baseline's jobs under other float order: the results folder of a run of the suite "
                         "on another machine, thread count or CPU kernel level, or 'auto' to re-run it here with "
                         "the CPU kernels one level below the records' into <out>/variation (resumes); repeatable, "
                         "each re-run adds to the measurement")
    ck.add_argument("--detectable", action="store_true",
                    help="print the smallest detectable drop of every metric checked across machines, not only "
                         "the headline metric's")
    ck.add_argument("--k", type=float, help="for baselines without per-example data: tolerance multiplier of the "
                                            "baseline's standard error (default 3)")
    ck.add_argument("--floor", type=float, help="for baselines without per-example data: smallest tolerance "
                                                "(default 0.02)")
    ck.add_argument("--device", default="auto")
    ck.add_argument("--cache-dir", type=Path)
    ck.add_argument("--quiet", action="store_true")
    ck.add_argument("--no-save-students", action="store_true", help="with --run: keep no student weights")
    add_data_args(ck)
    add_executor_args(ck)
    add_plugin_args(ck)
    return p
