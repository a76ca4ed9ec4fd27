"""Merging records from several result folders (e.g. copied from other machines) into one.

Records are keyed by job id. The same job id with the same numbers (metrics and flags) is one record; the same
job id with different numbers is a conflict, reported and never silently overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import KdbenchError
from .store import load_records, record_path, write_record


def _numbers(rec: dict) -> tuple:
    return json.dumps(rec["metrics"], sort_keys=True), tuple(sorted(rec["flags"]))


def records_folder_of(source: Path) -> Path:
    """A source is a results folder (holding records/) or a records folder itself."""
    source = Path(source)
    if (source / "records").is_dir():
        return source
    if source.is_dir() and source.name == "records":
        return source.parent
    raise KdbenchError(f"{str(source)!r} holds no records/ folder")


def merge_into(target: Path, sources: list[Path]) -> list[str]:
    """Copy the records of `sources` into `target/records`. Returns the conflicts; when there is any, nothing is
    written. Damaged source records are reported as conflicts too (they cannot be merged safely)."""
    seen: dict[str, tuple[dict, Path]] = {}
    conflicts: list[str] = []
    for folder in [Path(target)] + [records_folder_of(s) for s in sources]:
        good, bad = load_records(folder)
        conflicts += [f"damaged record {b.path}: {b.reason}" for b in bad if folder != Path(target)]
        for rec in good:
            where = record_path(folder, rec["job_id"])
            if rec["job_id"] in seen:
                first, first_path = seen[rec["job_id"]]
                if _numbers(first) != _numbers(rec):
                    conflicts.append(f"job {rec['job_id']} has different numbers in {first_path} and {where}")
            else:
                seen[rec["job_id"]] = (rec, where)
    if conflicts:
        return conflicts
    for job_id, (rec, where) in seen.items():
        if not record_path(target, job_id).exists():
            _copy_weights(where.parent.parent, Path(target), rec)
            write_record(target, rec)
    return []


def _copy_weights(source: Path, target: Path, rec: dict) -> None:
    """A merged record's saved student (students.py) comes along, written before the record."""
    from .store import atomic_write_bytes
    from .students import weights_path

    src = weights_path(source, rec)
    if src is not None and src.is_file() and source.resolve() != target.resolve():
        atomic_write_bytes(weights_path(target, rec), src.read_bytes())
