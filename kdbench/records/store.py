"""Records: one JSON file per finished job, written atomically (temp file + fsync + rename), so a run killed
at any moment leaves either the whole record or none. Results folders hold `records/<job_id>.json`.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..core.atomic import (  # noqa: F401 - written here, and by importers of records
    atomic_write_bytes,
    atomic_write_text,
)

SCHEMA = 1
REQUIRED = ("schema", "job_id", "suite", "role", "dataset", "method", "seed", "metrics", "flags")


def records_dir(out: Path) -> Path:
    return Path(out) / "records"


def record_path(out: Path, job_id: str) -> Path:
    return records_dir(out) / f"{job_id}.json"


def write_record(out: Path, record: dict) -> Path:
    path = record_path(out, record["job_id"])
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


@dataclass(frozen=True)
class BadRecord:
    path: Path
    reason: str


def validate_record(rec) -> str | None:
    """None when `rec` is a record of this schema, else why not."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        return f"missing keys: {', '.join(missing)}"
    if rec["schema"] != SCHEMA:
        return f"schema {rec['schema']!r} is not {SCHEMA}"
    if not isinstance(rec["metrics"], dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in rec["metrics"].values()):
        return "metrics must map names to numbers"
    return None


def load_records(out: Path) -> tuple[list[dict], list[BadRecord]]:
    """All valid records under `out/records/` (sorted by job id) and the damaged ones with the reason."""
    good, bad = [], []
    folder = records_dir(out)
    if not folder.is_dir():
        return good, bad
    for path in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            bad.append(BadRecord(path, f"not valid JSON ({e})"))
            continue
        reason = validate_record(rec)
        if reason is None and path.stem != rec["job_id"]:
            reason = f"file name does not match its job id {rec['job_id']!r}"
        if reason:
            bad.append(BadRecord(path, reason))
        else:
            good.append(rec)
    return good, bad


def git_state() -> dict:
    """The commit of the source tree kdbench runs from, and whether it has uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        if not commit:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "kdbench"], cwd=root,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": commit, "dirty": bool(status)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment(device) -> dict:
    import torch
    import torchattacks

    from ..core.machine import cpu_info, gpu_name
    from ..core.version import __version__

    return {"kdbench": __version__, "torch": torch.__version__, "torchattacks": torchattacks.__version__,
            "python": platform.python_version(), "device": str(device), "threads": torch.get_num_threads(),
            "cpu": cpu_info(), "gpu": gpu_name(device), "git": git_state()}


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
