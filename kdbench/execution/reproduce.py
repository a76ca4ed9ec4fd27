"""`reproduce`: compare a record with a re-run of its job. On the record's machine type, thread count, versions and
kernels the re-run must be bit-for-bit equal; on another machine each metric may move by its variation measured
in the suite's baseline (`check --update-baseline --variation`, machine_variation.py), and by per-example noise
(rerun_noise.py) where the baseline measured none; a larger difference fails, and each metric says what it could
have detected.

A record of a job that used plugins names each (its file and full SHA-256, or its package and version): they are
imported again from where the record says (or from `--plugin`), and a plugin whose code changed since the record is
one error saying so, since the job's code is then not the record's.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from ..core.errors import KdbenchError
from ..core.machine import KERNEL_LEVELS, describe, differences, pin_kernels, same_machine
from ..core.metric_names import score_unit
from ..stats.machine_variation import Variation, detectable, tolerance
from ..stats.rerun_noise import ALPHA, FLOAT_NOISE, rerun_sds

DETECT = 0.05  # the change reproduce reports each metric's power against (5 points)


def expected_variation(record: dict, again: dict, variation: dict | None) -> dict[str, tuple[float, float, str]]:
    """{metric: (allowed |difference|, smallest change found with 80% power, model)} for a re-run on another
    machine: two-sided Bonferroni over the compared metrics; the measured variation of the record's row where
    `variation` ({metric: [sd, df]}) has it, else per-example noise."""
    sds = rerun_sds(record, again)
    level = ALPHA / (2 * max(len(sds), 1))
    out = {}
    for name, sd in sds.items():
        v, model = (Variation(*variation[name]), "measured") if variation and name in variation else \
            (Variation(sd, math.inf), "per-example")
        out[name] = (tolerance(v, 1, level), detectable(v, 1, level), model)
    return out


# a re-run whose metrics moved beyond their variation in these numbers took another training trajectory
TRAJECTORY_METRICS, TRAJECTORY_SHARE = 10, 0.1


def compare_rerun(record: dict, again: dict, tolerance: float | None, variation: dict | None = None,
                  source: str = "") -> int:
    """Print how the re-run `again` differs from `record`; 0 when every metric is within its tolerance.
    `variation`: the measured variation of the record's row ({metric: [sd, df]}, from the baseline `source`)."""
    same = same_machine(record.get("env"), again.get("env"))
    names = sorted(set(record["metrics"]) | set(again["metrics"]))
    if tolerance is not None or same:
        allowed = {name: (tolerance if tolerance is not None else FLOAT_NOISE, None, "") for name in names}
    else:
        allowed = expected_variation(record, again, variation)
    worst, rows = 0.0, []
    for name in names:
        a, b = record["metrics"].get(name), again["metrics"].get(name)
        diff = float("inf") if a is None or b is None else abs(a - b)
        worst = max(worst, diff)
        rows.append((name, a, b, diff, *allowed.get(name, (0.0, None, "missing"))))
    bad = [r for r in rows if r[3] > r[4]]
    for name, a, b, diff, tol, _, model in bad:
        why = {"measured": " (its measured variation)", "per-example": " (per-example noise: no measured variation)"}
        print(f"  {name:<32} stored {a}  reproduced {b}  |diff| {diff:.3g}  allowed {tol:.3g}{why.get(model, '')}")
    same_flags = sorted(record["flags"]) == sorted(again["flags"])
    if not same_flags:
        print(f"  flags: stored {record['flags']}  reproduced {again['flags']}")
    print(f"stored on {describe(record.get('env'))}; reproduced on {describe(again.get('env'))}")
    if same or tolerance is not None:
        shown = "bit-for-bit" if tolerance is None else f"{tolerance:g}"
        print(f"{len(rows)} metrics compared, {len(bad)} differ by more than allowed ({shown}; largest "
              f"difference {worst:.3g})")
        return 0 if not bad and same_flags else 1
    models = [r[6] for r in rows]
    measured, per_example = models.count("measured"), models.count("per-example")
    how = (f"by its variation measured in {source} ({measured} metrics) or by per-example noise ({per_example} "
           "metrics without a measured variation)") if measured else (
        "by per-example noise alone (no baseline with a measured variation for its row: make one with check "
        "--update-baseline --variation auto, or name it with --baseline)")
    print(f"different machine ({'; '.join(differences(record.get('env'), again.get('env')))}): each metric may move "
          f"{how}; two-sided Bonferroni over {len(rows)} metrics (alpha {ALPHA:g})")
    print(f"{len(rows)} metrics compared: {len(rows) - len(bad)} within the machine's expected variation, {len(bad)} "
          f"beyond (largest difference {_largest(rows)})"
          + ("" if same_flags else "; the flags differ, which machine variation can do"))
    if len(bad) >= max(TRAJECTORY_METRICS, TRAJECTORY_SHARE * len(rows)):
        print(f"the reason: {len(bad)} of {len(rows)} metrics moved beyond their variation together: the re-run's "
              "training took another trajectory (another model, as another seed would be; seen on another CPU for "
              "students near a collapse), not measurement noise; `check` across machines leaves one such seed of "
              "five out (docs/statistics.md)")
    elif bad:
        print(f"the reason, most likely: a re-run on another machine is another training run, and one seed's can move "
              f"further than the baseline's re-runs measured ({len(bad)} of {len(rows)} metrics here; across the "
              "default suite's records this happens to a few correlated metrics of one record in several, "
              "docs/statistics.md); whether the code changed is a question for `check` over every seed")
    powers = [(r[0], r[5]) for r in rows if r[5] is not None and score_unit(r[0]) is None]  # in points
    headline = [f"{name} {100 * det:.1f}" for name, det in powers
                if name == "clean" or name == f"robust@{record.get('headline_eps', 0.1):g}"]
    print(f"what it could detect (smallest change found with 80% power, points): {', '.join(headline)}; "
          f"{sum(det <= DETECT for _, det in powers)} of {len(powers)} metrics in points detect a {100 * DETECT:g}-point "
          "change")
    return 0 if not bad else 1


def _largest(rows: list[tuple]) -> str:
    """The largest |difference| of the compared metrics: of those in points, and of each score in its own unit."""
    diffs: dict[str | None, list[float]] = {}
    for name, _, _, diff, *_ in rows:
        diffs.setdefault(score_unit(name), []).append(diff)
    points = [f"{100 * max(diffs.pop(None)):.1f} points"] if None in diffs else []
    return ", ".join(points + [f"{max(d):.3g} {unit}" for unit, d in sorted(diffs.items())])


def load_record_plugins(record: dict) -> None:
    """Import the plugins `record` names (unless imported already with the same hash); one error for a plugin that
    is gone or whose code changed since the record."""
    import hashlib

    from ..core.plugins import load_file, load_module, loaded

    have = {p.origin.sha256 for p in loaded()}
    for p in record.get("plugins", []):
        if p.get("sha256") in have:
            continue
        if p.get("kind") == "file":
            path = Path(p.get("path", ""))
            if not path.is_file():
                raise KdbenchError(f"the record's plugin file {p.get('name')!r} is not at {str(path)!r} any more: give "
                                   "it with --plugin FILE")
            now = hashlib.sha256(path.read_bytes()).hexdigest()
            if now != p["sha256"]:
                raise KdbenchError(f"plugin file {str(path)!r} changed since the record (sha256 {p['sha256'][:12]} "
                                   f"then, {now[:12]} now): the job's code is not the record's; re-run its suite "
                                   "(the plugin's jobs get new ids), or give the record's version with --plugin")
            load_file(path)
            continue
        origin = load_module(p.get("module") or p["name"]).origin
        if (origin.version, origin.sha256) != (p.get("version", ""), p["sha256"]):
            raise KdbenchError(f"plugin {p['kind']} {p['name']!r} changed since the record (version "
                               f"{p.get('version') or '-'}, sha256 {p['sha256'][:12]} then; version "
                               f"{origin.version or '-'}, sha256 {origin.sha256[:12]} now): the job's code is not "
                               "the record's; re-run its suite")


def rerun_record(path: Path, device_name: str, cache_dir: Path | None, data_dir: Path | None,
                 corruptions_from: Path | None, quiet: bool, kernels: str | None = None) -> tuple[dict, dict]:
    """(the record at `path`, a re-run of its job on this machine with the record's thread count, on `kernels`,
    else on the kernel level the record pinned)."""
    from ..core.gpu import configure_backend, job_gpu, pick_device
    from ..records.store import validate_record
    from ..suite.jobs import job_from_config
    from .job import run_job
    from .run_progress import Progress
    from .workspace import Workspace, torch_threads

    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KdbenchError(f"cannot read record {str(path)!r}: {e}") from None
    problem = validate_record(record) or (None if "config" in record else "it stores no job config")
    if problem:
        raise KdbenchError(f"{str(path)!r} is not a kdbench record: {problem}")
    if record["role"] == "external":
        raise KdbenchError(f"{str(path)!r} is an external record: evaluate its model again with "
                           "kdbench evaluate")
    load_record_plugins(record)
    job = job_from_config(record["config"], record["suite"])
    if job.job_id != record["job_id"]:
        raise KdbenchError(f"the record's config hashes to {job.job_id}, not its job id {record['job_id']}: "
                           "it was edited or written by an incompatible version")
    pinned = ((record.get("env") or {}).get("cpu") or {}).get("kernels")
    pin_kernels(kernels or next((level for level, settings in KERNEL_LEVELS.items() if settings == pinned), "native"))
    device = pick_device(device_name)
    configure_backend(job_gpu(job, device))
    threads = record.get("env", {}).get("threads")  # the numbers depend on the threads the job ran on
    with torch_threads(threads if isinstance(threads, int) and threads >= 1 else None):
        with tempfile.TemporaryDirectory(prefix="kdbench-reproduce-") as tmp:
            ws = Workspace(device, cache_dir or Path(tmp), data_dir=data_dir,
                           corruptions_from=corruptions_from)
            again = run_job(job, ws, Progress(1, quiet))
    return record, again
