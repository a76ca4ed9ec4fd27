"""Saved students: every finished job keeps its student's weights beside its record.

`<results>/students/<job_id>.pt` is the student's plain state dict (parameter and buffer names -> contiguous
CPU tensors, as `torch.save(model.state_dict())` writes it), so it loads with `torch.load(..., weights_only=True)`
into `build_model(arch, ...)`, or into the standalone model code `kdbench export` writes. The record names the
file, its SHA-256 and the architecture (`record["student"]["weights"]`). The file is written atomically before
the record, so a record never names a missing file; `[save] students = false` (or `run --no-save-students`)
turns this off.

A worker process hands the file's bytes to the driver inside the record under `BLOB_KEY`; the driver writes them
and drops the key (`save_weights`), since only it writes to the results folder.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch
from torch import nn

from ..core.errors import KdbenchError
from .store import atomic_write_bytes

BLOB_KEY = "_student_weights"  # bytes of the weights file, on their way from run_job to the results folder


def students_dir(out: Path) -> Path:
    return Path(out) / "students"


def student_file(job_id: str) -> str:
    """The weights file of a record, relative to its results folder."""
    return f"students/{job_id}.pt"


def plain_state_dict(model: nn.Module) -> dict:
    """`model`'s state dict as contiguous CPU tensors of their own (whatever the model's device, memory layout
    (channels-last, gpu.place) or flat parameter buffer (optim.FlatOptimizer))."""
    return {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}


def weights_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(plain_state_dict(model), buf)
    return buf.getvalue()


def attach_weights(record: dict, model: nn.Module, data) -> dict:
    """Put `model`'s weights file (bytes) into `record` and name it, with its SHA-256 and the input it takes
    (`data`'s shape and classes, what the architecture is built for), in record["student"]["weights"]."""
    blob = weights_bytes(model)
    record["student"]["weights"] = {"file": student_file(record["job_id"]), "sha256": hashlib.sha256(blob).hexdigest(),
                                    "bytes": len(blob), "input_shape": list(data.shape),
                                    "num_classes": data.num_classes}
    record[BLOB_KEY] = blob
    return record


def save_weights(out: Path, record: dict) -> None:
    """Write the weights `record` carries (if any) to its file under `out`, atomically; drops them from
    `record`, which is then ready to be written."""
    blob = record.pop(BLOB_KEY, None)
    if blob is not None:
        atomic_write_bytes(Path(out) / record["student"]["weights"]["file"], blob)


def weights_path(folder: Path, record: dict) -> Path | None:
    """The saved weights of `record` (a record of the results folder `folder`), or None if it names none."""
    info = (record.get("student") or {}).get("weights") or {}
    return Path(folder) / info["file"] if info.get("file") else None


def verified_weights(folder: Path, record: dict) -> Path:
    """The weights file of `record`, checked against the SHA-256 the record names; a missing or changed file is
    one error."""
    from ..training.pretrained import file_sha256

    path = weights_path(folder, record)
    if path is None:
        raise KdbenchError(f"record {record.get('job_id')!r} names no saved weights (role {record.get('role')!r}; "
                           "saved with [save] students = false, or made before weights were kept)")
    if not path.is_file():
        raise KdbenchError(f"the weights of record {record['job_id']!r} are missing: {str(path)!r}")
    sha = record["student"]["weights"].get("sha256")
    if sha and file_sha256(path) != sha:
        raise KdbenchError(f"{str(path)!r} does not match the SHA-256 its record names: the file was changed")
    return path
