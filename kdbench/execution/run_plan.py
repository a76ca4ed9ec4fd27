"""The work of a run as tasks that wait for one another: each teacher the jobs need and the cache lacks is
trained once (the costliest first, job_cost.py), each set of transfer examples the students share is crafted
once as soon as its teacher is there (transfer_cache.py), and a job starts once its teachers and transfer
examples are. What the cache folder holds already is ready from the start; a pretrained teacher is loaded by
whoever needs it and waits for nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..training.teacher_cache import teacher_config, teacher_path
from ..training.teachers import teacher_key
from .job_cost import teacher_cost
from .transfer_cache import needs_transfer, transfer_key, transfer_path

TEACHER, TRANSFER, JOB = "teacher", "transfer", "job"


@dataclass
class Task:
    """One piece of work: train a teacher, craft a set of transfer examples, or run a job."""

    kind: str  # TEACHER | TRANSFER | JOB
    key: str  # "teacher:<cache key>", "transfer:<cache key>", or the job id
    job: object  # the job it is for (a teacher's or transfer set's first job)
    label: str
    spec: object = None  # a teacher's TeacherSpec
    cfg: dict | None = None  # a teacher's config (teacher_cache.teacher_config), written beside it in the cache
    after: tuple = ()  # keys of the tasks this one waits for

    @property
    def cache_key(self) -> str:
        return self.key.split(":", 1)[1]


@dataclass
class Plan:
    tasks: list  # teachers to train (costliest first), transfer sets to craft, then the jobs in their order
    ready: set = field(default_factory=set)  # keys already in the cache folder
    teachers: int = 0
    transfers: int = 0


def plan_jobs(todo: list) -> Plan:
    """The jobs alone, each in its turn: they train and craft what they need themselves (one process)."""
    return Plan([Task(JOB, job.job_id, job, job.label()) for job in todo])


def plan_run(todo: list, cache_dir: Path, threads: int) -> Plan:
    """Teachers, transfer sets and jobs of `todo` (jobs running on `threads` torch threads each, which the
    teachers' and transfer sets' cache keys depend on)."""
    teachers: dict[str, Task] = {}
    transfers: dict[str, Task] = {}
    ready: set[str] = set()
    jobs = []
    for job in todo:
        keys = []
        for spec in job.teacher_specs():
            if job.pair.pretrained is not None:  # loaded where it is needed, never trained or cached
                continue
            cfg = teacher_config(spec, job, threads)
            key = f"{TEACHER}:{teacher_key(cfg)}"
            keys.append(key)
            if key in teachers or key in ready:
                continue
            if teacher_path(cache_dir, teacher_key(cfg)).is_file():
                ready.add(key)
            else:
                teachers[key] = Task(TEACHER, key, job, f"teacher {spec.arch} ({spec.kind}) seed {spec.seed}", spec,
                                     cfg)
        if needs_transfer(job):  # crafted once for every student of this teacher and seed
            key = f"{TRANSFER}:{transfer_key(job, threads)}"
            if key not in transfers and key not in ready:
                if transfer_path(cache_dir, key.split(":", 1)[1]).is_file():
                    ready.add(key)
                else:
                    spec = job.teacher_specs()[0]
                    transfers[key] = Task(TRANSFER, key, job, f"transfer examples of {spec.arch} ({spec.kind}) seed "
                                                              f"{job.seed}", after=tuple(keys[:1]))
            keys.append(key)
        jobs.append(Task(JOB, job.job_id, job, job.label(), after=tuple(keys)))
    # the costliest teachers first: the jobs waiting for them are the costliest too (adversarial teachers
    # and ARD/RSLAD students), so they start early and cheaper jobs fill the end, where a worker would idle
    passes: dict = {}
    order = sorted(teachers.values(), key=lambda t: -teacher_cost(t.spec, t.job.teacher_training(), passes))
    return Plan([*order, *transfers.values(), *jobs], ready, len(teachers), len(transfers))


@dataclass
class Done:
    """A finished task: its value (a job's (record, profile); a teacher's or transfer set's (bytes, seconds)),
    or its error and, from another process, that error's traceback."""

    task: object
    value: object = None
    error: BaseException | None = None
    details: str | None = None
