"""Which registry entries a job uses, so that the plugins behind them enter its identity (registry.plugin_ids):
editing a plugin gives new ids to exactly the jobs that use one of its entries, and a job of kdbench's own
entries only keeps its id (identity.NEUTRAL)."""

from __future__ import annotations

from typing import Any

from ..core.registry import Registry
from ..data.augment import AUGMENTATIONS
from ..data.corruptions import CORRUPTIONS
from ..data.registry import DATASETS
from ..evaluation.attacks import ATTACKS
from ..evaluation.noise_sweep import NOISE_FAMILIES
from ..methods import METHODS
from ..models.registry import MODELS
from ..training.teachers import TEACHER_KINDS


def job_uses(job) -> list[tuple[Registry, Any]]:
    """(registry, name) of every entry `job` uses: its method, its teachers' kinds and architectures, its student's
    architecture, its dataset and augmentations, its attacks, corruptions and noise families."""
    uses: list[tuple[Registry, Any]] = [(DATASETS, job.data.name), (MODELS, job.pair.student),
                                        (MODELS, job.pair.teacher)]
    uses += [(AUGMENTATIONS, a) for a in job.data.augment]
    uses += [(ATTACKS, a) for a in job.eval.attacks] + [(CORRUPTIONS, c) for c in job.eval.corruptions]
    uses += [(NOISE_FAMILIES, f) for f in job.eval.noise_families]
    if not job.is_teacher:
        uses.append((METHODS, job.method))
    for spec in job.teacher_specs():
        uses += [(TEACHER_KINDS, spec.kind), (MODELS, spec.arch)]
    return uses
