"""The run's cache of transfer examples (transfer.py): every student of a (teacher, seed, evaluation) shares one
set.

- In one process (`run --workers 1`), `evaluate` crafts them for the first such student and keeps them in the
  process's memory (`Workspace.transfer`) for the others.
- With worker processes or Ray (driver.py), the driver has each set crafted once, by one task, as soon as its
  teacher is there, and writes it into the cache folder, `<cache>/transfer/<key>.pt` (atomically; `key` hashes
  everything the examples depend on, `transfer_config`). A student's job starts once they are there and reads
  them (a Ray job gets them through the object store) instead of crafting its own copy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..core.identity import digest
from ..models.checkpoints import load_state_dict
from ..suite.jobs import PROTOCOL
from ..training.teacher_cache import teacher_config
from ..training.teachers import teacher_key

TRANSFER_FORMAT = 1
TRANSFER_BUDGET = 256 * 2**20  # bytes of transfer examples a worker process keeps for its next jobs


def needs_transfer(job) -> bool:
    """Whether `job` is evaluated on transfer examples: a student with a teacher, with `eval.transfer` on."""
    return not job.is_teacher and job.eval.transfer and bool(job.teacher_specs())


def transfer_config(job, threads: int) -> dict:
    """Everything the transfer examples of `job` depend on: its first teacher (the teacher cache's key, and a
    pretrained teacher's file and settings), its seed, its evaluation settings and the evaluation protocol."""
    spec = job.teacher_specs()[0]
    pretrained = dataclasses.asdict(job.stand_in(spec)) if job.pair.pretrained is not None else None
    return {"format": TRANSFER_FORMAT, "protocol": PROTOCOL, "teacher": teacher_key(teacher_config(spec, job, threads)),
            "pretrained": pretrained, "seed": job.seed, "eval": dataclasses.asdict(job.eval)}


def transfer_key(job, threads: int) -> str:
    """The cache key of the transfer examples of `job` (identity.digest: content, never paths)."""
    return digest(transfer_config(job, threads))


def transfer_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "transfer" / f"{key}.pt"


def shared_examples(ws, job) -> dict:
    """The transfer examples of `job` as a dict that `evaluate` completes with what it crafts: this process's
    (`ws.transfer`), else read from the cache folder (crafted for this run by another worker), else empty."""
    key = transfer_key(job, torch.get_num_threads())
    if key not in ws.transfer:
        path = transfer_path(ws.cache_dir, key)
        ws.transfer[key] = load_state_dict(path, ws.device) if path.is_file() else {}
    return ws.transfer[key]


def trim_transfer(cache: dict, budget: int = TRANSFER_BUDGET) -> dict:
    """Drop the oldest entries of a transfer cache (transfer key -> {eps: examples}) until it holds at
    most `budget` bytes; they depend only on their key, so a later job may craft them again."""
    size = {k: sum(t.numel() * t.element_size() for t in v.values()) for k, v in cache.items()}
    while cache and sum(size.values()) > budget:
        size.pop(oldest := next(iter(cache)))
        cache.pop(oldest)
    return cache
