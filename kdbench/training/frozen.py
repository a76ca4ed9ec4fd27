"""A distillation method never changes its teachers (the Distiller contract, methods/base.py): they are frozen and
stay in eval mode. A method that changes them anyway (a plugin whose loss steps a teacher, re-enables its
gradients or runs it in train mode, which moves its batch-norm statistics) fails its job with `TeacherChanged`,
whose record would otherwise describe a student of another teacher; the teachers are put back as they were, so
the later jobs of the same process (which share them) are not affected."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class TeacherChanged(RuntimeError):
    """A method changed a teacher's weights or buffers: the job fails (no record is written)."""


@contextlib.contextmanager
def teachers_kept(teachers: list[nn.Module]):
    """Check, after the block, that every teacher's state dict is what it was before it, bit for bit; otherwise
    restore it (also when the block raised) and raise TeacherChanged naming what moved."""
    saved = [{k: v.detach().clone() for k, v in t.state_dict().items()} for t in teachers]
    changed: list[str] = []
    try:
        yield
    finally:
        changed = _put_back(teachers, saved)
    if changed:
        raise TeacherChanged(f"the method changed {'; '.join(changed)} during training; a method must leave its "
                             "teachers as they are (frozen, in eval mode)")


def _put_back(teachers: list[nn.Module], saved: list[dict]) -> list[str]:
    """Restore each teacher's changed tensors; returns what changed ("teacher 0's stages.0.0.weight, ...")."""
    changed = []
    for i, (teacher, before) in enumerate(zip(teachers, saved)):
        now = teacher.state_dict()
        moved = [k for k, v in before.items() if k not in now or not torch.equal(now[k], v)]
        if not moved:
            continue
        with torch.no_grad():
            for k in moved:
                if k in now:
                    now[k].copy_(before[k])
        teacher.eval().requires_grad_(False)
        more = f" and {len(moved) - 3} more" if len(moved) > 3 else ""
        changed.append(f"teacher {i}'s {', '.join(moved[:3])}{more}")
    return changed
