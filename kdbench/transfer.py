"""Transfer examples: PGD examples crafted on a student's teacher, on which the student is evaluated
(`transfer@<eps>`).

They depend only on the teacher, the test data, the job's seed and the evaluation settings, never on the
student, so every student of a (teacher, seed, evaluation) shares one set:
- in one process (`run --workers 1`), `evaluate` crafts them for the first such student and keeps them in the
  run's memory (`Workspace.transfer`) for the others;
- with worker processes (pool_executor.py), the `kdbench run` process has them crafted once, by one worker, as
  soon as their teacher is cached, and writes them into the cache folder, `<cache>/transfer/<key>.pt`
  (atomically; `key` hashes everything they depend on, `transfer_config`). A student's job starts once they are
  there, and its worker reads them instead of crafting its own copy.
Crafting is seeded per eps (`craft_transfer`), so the examples are bit for bit the same wherever and in whichever
order they are crafted, on the same device with the same threads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import torch

from .attacks import build_attack, run_attack
from .fold import fold_batch_norm

TRANSFER_FORMAT = 1


def needs_transfer(job) -> bool:
    """Whether `job` is evaluated on transfer examples: a student with a teacher, with `eval.transfer` on."""
    return not job.is_teacher and job.eval.transfer and bool(job.teacher_specs())


def transfer_config(job, threads: int) -> dict:
    """Everything the transfer examples of `job` depend on: its first teacher (the teacher cache's key, and a
    pretrained teacher's file and settings), its seed, its evaluation settings and the evaluation protocol."""
    from .runner import teacher_config
    from .jobs import PROTOCOL
    from .teachers import teacher_key

    spec = job.teacher_specs()[0]
    pretrained = dataclasses.asdict(job.stand_in(spec)) if job.pair.pretrained is not None else None
    return {"format": TRANSFER_FORMAT, "protocol": PROTOCOL, "teacher": teacher_key(teacher_config(spec, job, threads)),
            "pretrained": pretrained, "seed": job.seed, "eval": dataclasses.asdict(job.eval)}


def transfer_key(job, threads: int) -> str:
    blob = json.dumps(transfer_config(job, threads), sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def transfer_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "transfer" / f"{key}.pt"


def craft_transfer(source, x: torch.Tensor, y: torch.Tensor, eps: float, ev, seed: int,
                   num_classes: int) -> torch.Tensor:
    """PGD examples at `eps` crafted on `source` (the teacher, batch norms folded), seeded by (seed, eps)."""
    from .evaluate import _seed, fmt_eps

    s = _seed(seed, "transfer", fmt_eps(eps))
    return run_attack(build_attack("pgd", source, eps, ev, s, num_classes), x, y, ev.batch_size, s)


def craft_all(teacher, data, ev, seed: int) -> dict[str, torch.Tensor]:
    """The transfer examples at every eps of `ev` ({eps as in metric names: examples}), as `evaluate` crafts them."""
    from .evaluate import fmt_eps

    source = fold_batch_norm(teacher.eval())
    return {fmt_eps(eps): craft_transfer(source, data.x_test, data.y_test, eps, ev, seed, data.num_classes)
            for eps in sorted(ev.eps)}


def examples_bytes(examples: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in examples.items()}, buf)
    return buf.getvalue()


def shared_examples(ws, job) -> dict:
    """The transfer examples of `job` as a dict that `evaluate` completes with what it crafts: this process's
    (`ws.transfer`), else read from the cache folder (crafted for this run by another worker), else empty."""
    from .runner import load_state_dict

    key = transfer_key(job, torch.get_num_threads())
    if key not in ws.transfer:
        path = transfer_path(ws.cache_dir, key)
        ws.transfer[key] = load_state_dict(path, ws.device) if path.is_file() else {}
    return ws.transfer[key]
