"""A suite's (teacher, student) pairs: architecture names, or pretrained teachers (pretrained.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import from_table, unknown_key_error
from ..models.registry import MODELS
from ..training.pretrained import PretrainedTeacher, parse_teacher_table


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str
    pretrained: PretrainedTeacher | None = None  # a teacher loaded, not trained (see pretrained.py)
    ensemble: tuple[PretrainedTeacher, ...] = ()  # the further pretrained teachers of a list (multi-teacher)

    def pretrained_teachers(self) -> tuple[PretrainedTeacher, ...]:
        return () if self.pretrained is None else (self.pretrained, *self.ensemble)


def pair_config(pair: Pair) -> dict:
    """The pair as it enters job configs (identity.digest makes their ids)."""
    return dataclasses.asdict(pair)


def parse_pair(table: Any, where: str, base_dir: Path, dataset: str) -> Pair:
    """`{teacher = "arch", student = "arch"}`, or a teacher table `{checkpoint = ..., arch = ..., kind = ...}` /
    `{robustbench = ..., kind = ...}` for a teacher from elsewhere, or a list of such tables (several teachers)."""
    if isinstance(table, dict):
        for key in table:
            if key not in ("teacher", "student"):
                raise unknown_key_error(where, key, {"teacher", "student"})
    teacher = table.get("teacher") if isinstance(table, dict) else None
    if isinstance(teacher, list) and teacher and all(isinstance(t, dict) for t in teacher):
        pres = [parse_teacher_table(t, f"{where}.teacher[{i}]", base_dir, dataset) for i, t in enumerate(teacher)]
    elif isinstance(teacher, dict):
        pres = [parse_teacher_table(teacher, f"{where}.teacher", base_dir, dataset)]
    else:
        pair = from_table(Pair, table, where)
        MODELS.check(pair.teacher)
        MODELS.check(pair.student)
        return pair
    name = "+".join(p.display_name() for p in pres)
    pair = from_table(Pair, {**table, "teacher": name}, where)
    MODELS.check(pair.student)
    return dataclasses.replace(pair, pretrained=pres[0], ensemble=tuple(pres[1:]))


def pair_from_config(d: dict) -> Pair:
    """The Pair of a job config stored in a record."""
    d = dict(d)
    pre = d.pop("pretrained", None)
    more = d.pop("ensemble", [])
    pair = from_table(Pair, d, "config.pair")
    if pre is None:
        return pair
    return dataclasses.replace(pair, pretrained=from_table(PretrainedTeacher, pre, "config.pair.pretrained"),
                               ensemble=tuple(from_table(PretrainedTeacher, p, "config.pair.ensemble") for p in more))
