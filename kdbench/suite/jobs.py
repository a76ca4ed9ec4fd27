"""Jobs: one (pair, method, seed) of a suite, a pure function of its config; its id is identity.digest of that
config, so a re-run skips finished jobs and a record names the job that made it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core.config import from_table
from ..core.errors import KdbenchError
from ..core.gpu import GpuConfig, check_gpu
from ..core.identity import digest
from ..core.registry import plugin_ids
from ..data.registry import DataConfig
from ..data.registry import config_dict as data_config_dict
from ..methods import METHODS, TeacherSpec
from ..training.pretrained import PretrainedTeacher, stand_ins
from .configs import EvalConfig, TrainConfig
from .pairs import Pair, pair_config, pair_from_config
from .plugin_uses import job_uses

# What a job computes from its config, versioned: bumped when the same config would give different numbers, so
# records of an older protocol never pass for new ones (their ids differ) and are re-run, not resumed.
# 1: the first; 2: each attack runs only on the examples it has not broken at a smaller eps; 3: models in the
# channels-last layout on the CPU, evaluation on a copy with batch norms folded (same functions, other last bits);
# 4: training steps with optim.FlatOptimizer (Adam's and SGD's updates, in another order of float operations);
# pretrained (checkpoint, RobustBench) teachers in the layout of trained ones (channels-last on the CPU);
# 5: ARD as published (CE inner maximisation, student in train mode), the worst case adds the attacks that see
# through gradient masking, the convergence check re-runs the strongest attack, AutoAttack at reference strength;
# 6: `at` and `iad` attack their student in train mode (the references' batch-norm mode), calibration metrics on
# every record, AutoAttack's Square with the reference's p schedule, records keep the training history and the
# training-failed evidence.
PROTOCOL = 6


@dataclass(frozen=True)
class Job:
    suite: str
    data: DataConfig
    pair: Pair
    method: str  # a registered method, or "teacher" for a teacher's reference job
    params: tuple[tuple[str, Any], ...]
    teacher_kind: str | None
    seed: int
    train: TrainConfig
    eval: EvalConfig
    headline_eps: float
    gpu: GpuConfig | None = None  # the [gpu] settings of a job that runs on CUDA; None on the CPU
    save_student: bool = True  # keep the student's weights beside its record ([save] students); not in the id
    # the suite's [train], where the method trains its students with settings of its own (`train` above): its
    # teachers are the suite's, trained with these; None: teachers and student train with `train`
    teacher_train: TrainConfig | None = None

    def teacher_training(self) -> TrainConfig:
        """The training settings of this job's teachers."""
        return self.teacher_train if self.teacher_train is not None else self.train

    @property
    def is_teacher(self) -> bool:
        return self.method == "teacher"

    def teacher_specs(self) -> list[TeacherSpec]:
        if self.is_teacher:
            return [TeacherSpec(self.pair.teacher, self.teacher_kind, self.seed, self.params)]
        cls = METHODS.get(self.method)
        return cls.teacher_specs(dict(self.params), self.pair.teacher, self.teacher_kind, self.seed)

    def stand_in(self, spec: TeacherSpec) -> PretrainedTeacher:
        """The pretrained teacher loaded for the teacher `spec` of this job (its pair has pretrained teachers)."""
        if self.is_teacher:
            return self.pair.pretrained
        specs = self.teacher_specs()
        found = stand_ins(self.method, specs, self.pair.teacher, self.pair.pretrained_teachers(), self.label())
        return dict(zip(specs, found))[spec]

    def config(self) -> dict:
        """Everything that determines the job's numbers (not the suite name): the hash input. `plugins`: the
        identity of each plugin whose entries the job uses (only there when there is one)."""
        plugins = plugin_ids(job_uses(self))
        return {
            "protocol": PROTOCOL,
            "data": data_config_dict(self.data),
            "pair": pair_config(self.pair),
            "method": self.method,
            "params": dict(self.params),
            "teacher_kind": self.teacher_kind,
            "seed": self.seed,
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
            "headline_eps": self.headline_eps,
            "gpu": dataclasses.asdict(self.gpu) if self.gpu is not None else None,
            "teacher_train": dataclasses.asdict(self.teacher_train) if self.teacher_train is not None else None,
            **({"plugins": plugins} if plugins else {}),
        }

    @property
    def job_id(self) -> str:
        """identity.digest of `config()`: what determines the numbers, without data or checkpoint paths."""
        return digest(self.config())

    def label(self) -> str:
        if self.is_teacher:
            return f"teacher {self.pair.teacher} ({self.teacher_kind}) seed {self.seed}"
        return f"{self.method} {self.pair.teacher}->{self.pair.student} seed {self.seed}"


def job_from_config(config: dict, suite: str = "reproduce") -> Job:
    """Rebuild the Job a record was produced by, from the `config` stored in the record (its hash must match)."""
    protocol = config.get("protocol", 1) if isinstance(config, dict) else None
    if protocol != PROTOCOL:
        raise KdbenchError(f"the record was made by evaluation protocol {protocol!r}; this kdbench computes protocol "
                           f"{PROTOCOL}, so its numbers would differ by design: re-run the suite instead")
    method = config.get("method")
    if method in METHODS and isinstance(config.get("params"), dict):  # a parameter added since the record was made
        missing = sorted(set(METHODS.get(method).defaults) - set(config["params"]))
        if missing:
            raise KdbenchError(f"the record's {method} has no {', '.join(missing)}: it was made by a kdbench whose "
                               f"{method} had no such parameter, so this one would not rebuild it; re-run the suite")
    try:
        return Job(
            suite=suite,
            data=from_table(DataConfig, config["data"], "config.data"),
            pair=pair_from_config(config["pair"]),
            method=config["method"],
            params=tuple(sorted(config["params"].items())),
            teacher_kind=config["teacher_kind"],
            seed=config["seed"],
            train=from_table(TrainConfig, config["train"], "config.train"),
            eval=from_table(EvalConfig, config["eval"], "config.eval"),
            headline_eps=config["headline_eps"],
            gpu=check_gpu(from_table(GpuConfig, config["gpu"], "config.gpu")) if config.get("gpu") else None,
            teacher_train=(from_table(TrainConfig, config["teacher_train"], "config.teacher_train")
                           if config.get("teacher_train") else None),
        )
    except (KeyError, TypeError, AttributeError) as e:
        raise KdbenchError(f"the record's config is incomplete or malformed ({type(e).__name__}: {e})") from None
