"""`reproduce`: compare a record with a re-run of its job. On the record's machine type, thread count and versions
the re-run must be bit-for-bit equal; on another machine each metric may move by the noise such a re-run is
expected to make (noise.py), and only a larger difference fails.

A record of a job that used plugins names each (its file and full SHA-256, or its package and version): they are
imported again from where the record says (or from `--plugin`), and a plugin whose code changed since the record is
one error saying so, since the job's code is then not the record's.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..core.errors import KdbenchError
from ..core.machine import describe, differences
from ..stats.rerun_noise import rerun_tolerances


def compare_rerun(record: dict, again: dict, tolerance: float | None) -> int:
    """Print how the re-run `again` differs from `record`; 0 when every metric is within its tolerance."""
    tols, same = rerun_tolerances(record, again)
    if tolerance is not None:
        tols = {name: tolerance for name in tols}
    worst = 0.0
    rows = []
    for name in sorted(set(record["metrics"]) | set(again["metrics"])):
        a, b = record["metrics"].get(name), again["metrics"].get(name)
        diff = float("inf") if a is None or b is None else abs(a - b)
        worst = max(worst, diff)
        rows.append((name, a, b, diff, tols.get(name, 0.0)))
    bad = [r for r in rows if r[3] > r[4]]
    for name, a, b, diff, tol in bad:
        print(f"  {name:<32} stored {a}  reproduced {b}  |diff| {diff:.3g}  allowed {tol:.3g}")
    same_flags = sorted(record["flags"]) == sorted(again["flags"])
    if not same_flags:
        print(f"  flags: stored {record['flags']}  reproduced {again['flags']}")
    print(f"stored on {describe(record.get('env'))}; reproduced on {describe(again.get('env'))}")
    if same or tolerance is not None:
        allowed = "bit-for-bit" if tolerance is None else f"{tolerance:g}"
        print(f"{len(rows)} metrics compared, {len(bad)} differ by more than allowed ({allowed}; largest "
              f"difference {worst:.3g})")
        return 0 if not bad and same_flags else 1
    expected = max(tols.values(), default=0.0)
    print(f"different machine ({'; '.join(differences(record.get('env'), again.get('env')))}): differences up to "
          f"{100 * expected:.1f} points expected (per-example noise model, Bonferroni over {len(tols)} metrics)")
    print(f"{len(rows)} metrics compared, {len(bad)} differ by more than expected (largest difference "
          f"{100 * worst:.1f} points)" + ("" if same_flags else "; the flags differ, which machine noise can do"))
    return 0 if not bad else 1


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
                 corruptions_from: Path | None, quiet: bool) -> tuple[dict, dict]:
    """(the record at `path`, a re-run of its job on this machine with the record's thread count)."""
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
    device = pick_device(device_name)
    configure_backend(job_gpu(job, device))
    threads = record.get("env", {}).get("threads")  # the numbers depend on the threads the job ran on
    with torch_threads(threads if isinstance(threads, int) and threads >= 1 else None):
        with tempfile.TemporaryDirectory(prefix="kdbench-reproduce-") as tmp:
            ws = Workspace(device, cache_dir or Path(tmp), data_dir=data_dir,
                           corruptions_from=corruptions_from)
            again = run_job(job, ws, Progress(1, quiet))
    return record, again
