"""What a run writes into its results folder: a record per finished job (with its student's weights), a
failure file per failed job, and the run's summary (`RunResult`)."""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ..core.atomic import atomic_write_text
from ..records.store import utc_now, write_record
from ..records.students import save_weights


@dataclass
class RunResult:
    total: int
    skipped: int
    ran: int
    failed: list = field(default_factory=list)  # (job, reason) of each failed job
    profile: dict = field(default_factory=dict)
    seconds: float = 0.0


def failures_dir(out: Path) -> Path:
    return Path(out) / "failures"


def write_failure(out: Path, job, error: BaseException, details: str | None = None) -> Path:
    """A failed job leaves `failures/<job_id>.json` (reason + config) and `.log` (traceback, or `details`: one
    from another process); no record."""
    folder = failures_dir(out)
    log = folder / f"{job.job_id}.log"
    atomic_write_text(log, details if details is not None else "".join(traceback.format_exception(error)))
    info = {"job_id": job.job_id, "suite": job.suite, "label": job.label(),
            "reason": f"{type(error).__name__}: {error}", "config": job.config(), "traceback": log.name,
            "created": utc_now()}
    path = folder / f"{job.job_id}.json"
    atomic_write_text(path, json.dumps(info, indent=1, sort_keys=True) + "\n")
    return path


def fail_job(out: Path, job, error: BaseException, progress, details: str | None = None) -> tuple:
    """Record a failed job under failures/ (`write_failure`) and say so; returns (job, reason), an entry of
    `RunResult.failed`."""
    path = write_failure(out, job, error, details)
    reason = f"{type(error).__name__}: {error}"
    progress.say(f"    FAILED {job.label()}: {reason} (details in {path})")
    return job, reason


def record_result(out: Path, record: dict) -> None:
    """Write a finished job's record, after its student's weights (students.py), so a record never names a
    missing file; a failure left by an earlier run of the same job goes."""
    save_weights(out, record)
    write_record(out, record)
    for stale in (failures_dir(out) / f"{record['job_id']}.json", failures_dir(out) / f"{record['job_id']}.log"):
        stale.unlink(missing_ok=True)
