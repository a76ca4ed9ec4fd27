"""Suite files (TOML) -> validated `Suite` -> the job grid.

A suite is dataset x (teacher, student) pairs x methods x seeds. Every job is a pure function of its config;
its id is a hash of that config, so a re-run skips finished jobs. Besides the student jobs, a suite has one
reference job per teacher it uses (the teacher's own metrics, shown as reference rows); `reference_seeds = N`
limits those to the teachers of the first N seeds (every seed's teachers are still trained).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .attacks import ATTACKS
from .check import CheckConfig
from .config import check_params, from_table, unknown_key_error
from .corruptions import CORRUPTIONS
from .data import DATASETS, DataConfig, resolve_data_config
from .data import config_dict as data_config_dict
from .errors import KdbenchError
from .gpu import GpuConfig, check_gpu
from .methods import METHODS, TeacherSpec
from .models import MODELS
from .noise_sweep import NOISE_FAMILIES
from .optim import OPTIMIZERS, SCHEDULES
from .pretrained import PretrainedTeacher, parse_teacher_table, stand_ins
from .teachers import TEACHER_KINDS

REPO_BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # student epochs
    teacher_epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | constant
    adv_eps: float = 0.1  # eps of adversarial training and adversarial distillation
    adv_steps: int = 10
    adv_step_size: float | None = None  # default 2.5 * adv_eps / adv_steps (Madry et al. 2018)

    def step_size(self) -> float:
        if self.adv_step_size is not None:
            return self.adv_step_size
        return 2.5 * self.adv_eps / max(self.adv_steps, 1)


@dataclass(frozen=True)
class EvalConfig:
    attacks: tuple[str, ...] = ("fgsm", "pgd", "apgd-ce", "apgd-dlr")
    eps: tuple[float, ...] = (0.05, 0.1, 0.2)
    pgd_steps: int = 20
    pgd_step_ratio: float = 0.25  # PGD step size = ratio * eps
    apgd_steps: int = 50
    square_queries: int = 1000
    transfer: bool = True  # PGD examples crafted on the teacher, evaluated on the student
    sweep_eps: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
    corruptions: tuple[str, ...] = ("gaussian_noise",)
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    # noise-severity sweeps (noise_sweep.py): families and severities f in (0, 1]; `noise-auc/<family>`
    noise_families: tuple[str, ...] = ("gaussian", "impulse", "blur", "contrast")
    noise_levels: tuple[float, ...] = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
    sanity: bool = True
    batch_size: int = 1024
    # CIFAR-10-C / CIFAR-100-C corruptions read from `--corruptions-from DIR` (cifar_c.py): that flag fills in
    # every corruption file of its folder, so records with and without them have different job ids. A suite
    # file may name them to require the folder.
    cifar_c: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExecutorConfig:
    """`[executor]`: what one job gets, on this machine or a Ray cluster (`run --executor ray`). Not part of job
    ids. `cpus_per_job` is the torch threads of a job with either executor; they change its numbers in the last
    bits, so records name them (`env.threads`) and CPU teachers are cached per thread count. `gpus_per_job` (Ray
    only) may be a fraction (0.5: two jobs share a GPU)."""

    cpus_per_job: int = 1  # CPUs per job: the job runs torch on that many threads
    gpus_per_job: float = 0.0
    max_retries: int = 2  # re-runs of a job whose worker process or node died, before it counts as failed


@dataclass(frozen=True)
class SaveConfig:
    """`[save]`: what a run keeps besides its records. `students`: each student's weights as
    students/<job_id>.pt beside its record (docs/models.md); off for grids too large to keep. Not part of job
    ids: it changes no number."""

    students: bool = True


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str
    pretrained: PretrainedTeacher | None = None  # a teacher loaded, not trained (see pretrained.py)
    ensemble: tuple[PretrainedTeacher, ...] = ()  # the further pretrained teachers of a list (multi-teacher)

    def pretrained_teachers(self) -> tuple[PretrainedTeacher, ...]:
        return () if self.pretrained is None else (self.pretrained, *self.ensemble)


def pair_config(pair: Pair) -> dict:
    """The pair as it enters job ids (without `pretrained` and `ensemble` when there are none, so older ids are
    unchanged)."""
    d = dataclasses.asdict(pair)
    if d["pretrained"] is None:
        del d["pretrained"]
    if not d["ensemble"]:
        del d["ensemble"]
    return d


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


def check_pretrained(suite: Suite) -> None:
    """Every method can use the pretrained teachers of every pair as declared (`pretrained.stand_ins`), else one
    error naming the method and the pair."""
    for i, pair in enumerate(suite.pairs):
        for m in suite.methods:
            if pair.pretrained is not None:
                specs = METHODS.get(m.name).teacher_specs(dict(m.params), pair.teacher, m.teacher_kind, 1)
                stand_ins(m.name, specs, pair.teacher, pair.pretrained_teachers(), f"methods.{m.name} with pairs[{i}]")


@dataclass(frozen=True)
class MethodRun:
    name: str
    params: tuple[tuple[str, Any], ...]
    teacher_kind: str | None


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    data: DataConfig
    pairs: tuple[Pair, ...]
    methods: tuple[MethodRun, ...]
    seeds: tuple[int, ...]
    train: TrainConfig
    eval: EvalConfig
    headline_eps: float
    source: str = ""
    check: CheckConfig = field(default_factory=CheckConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    reference_seeds: int | None = None  # teachers get a reference job at the first N seeds only (None: every seed)

    def jobs(self, cuda: bool = False) -> list[Job]:
        """Teacher reference jobs first, then students: (pair, method, seed) in file order. `cuda`: the jobs
        run on a GPU, so they carry the suite's `[gpu]` settings (which then enter their ids)."""
        gpu = self.gpu if cuda else None
        ref_seeds = self.seeds[:self.reference_seeds] if self.reference_seeds else self.seeds
        students, teachers = [], {}
        for pair in self.pairs:
            for m in self.methods:
                for seed in self.seeds:
                    job = Job(self.name, self.data, pair, m.name, m.params, m.teacher_kind, seed, self.train, self.eval,
                              self.headline_eps, gpu, self.save.students)
                    students.append(job)
                    if pair.pretrained is not None:  # loaded, not trained: one reference job each, for all
                        refs = [(TeacherSpec(p.display_name(), "pretrained", self.seeds[0]), p)
                                for p in pair.pretrained_teachers()] if job.teacher_specs() else []
                    else:  # extra ensemble members (seeds not in the suite) are trained, not reported
                        refs = [(spec, None) for spec in job.teacher_specs() if spec.seed in ref_seeds]
                    for spec, pre in refs:
                        ref = Job(self.name, self.data, Pair(spec.arch, spec.arch, pre), "teacher", spec.params,
                                  spec.kind, spec.seed, self.train, self.eval, self.headline_eps, gpu)
                        teachers.setdefault(ref.job_id, ref)
        return list(teachers.values()) + students


# What a job computes from its config, versioned: bumped when the same config would give different numbers, so
# records of an older protocol never pass for new ones (their ids differ) and are re-run, not resumed.
# 1: the first; 2: each attack runs only on the examples it has not broken at a smaller eps; 3: models in the
# channels-last layout on the CPU, evaluation on a copy with batch norms folded (same functions, other last bits);
# 4: training steps with optim.FlatOptimizer (Adam's and SGD's updates, in another order of float operations);
# pretrained (checkpoint, RobustBench) teachers in the layout of trained ones (channels-last on the CPU);
# 5: ARD as published (CE inner maximisation, student in train mode), the worst case adds the attacks that see
# through gradient masking, the convergence check re-runs the strongest attack, AutoAttack at reference strength.
PROTOCOL = 5


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
        """Everything that determines the job's numbers (not the suite name): the hash input."""
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
            **({"gpu": dataclasses.asdict(self.gpu)} if self.gpu is not None else {}),
        }

    @property
    def job_id(self) -> str:
        blob = json.dumps(self.config(), sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def label(self) -> str:
        if self.is_teacher:
            return f"teacher {self.pair.teacher} ({self.teacher_kind}) seed {self.seed}"
        return f"{self.method} {self.pair.teacher}->{self.pair.student} seed {self.seed}"


# ---- loading ----------------------------------------------------------------------------------------------

SUITE_KEYS = {"name", "description", "dataset", "data", "pairs", "methods", "seeds", "train", "eval", "headline_eps",
              "check", "executor", "gpu", "save", "reference_seeds"}


def builtin_suites() -> dict[str, Path]:
    """Suite name -> file, from the repository's benchmarks/ or the installed package."""
    found: dict[str, Path] = {}
    try:
        for entry in resources.files("kdbench.suites").iterdir():
            if entry.name.endswith(".toml"):
                found[entry.name[:-5]] = Path(str(entry))
    except (ModuleNotFoundError, FileNotFoundError, TypeError):
        pass
    if REPO_BENCHMARKS.is_dir():
        for path in REPO_BENCHMARKS.glob("*.toml"):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def resolve_suite_path(suite: str) -> Path:
    path = Path(suite)
    if suite.endswith(".toml") or path.parent != Path("."):
        if not path.is_file():
            raise KdbenchError(f"suite file {suite!r} does not exist")
        return path
    suites = builtin_suites()
    if suite not in suites:
        from .errors import choices_error

        raise choices_error("suite", suite, suites)
    return suites[suite]


def load_suite(suite: str) -> Suite:
    path = resolve_suite_path(suite)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise KdbenchError(f"suite file {str(path)!r} is not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KdbenchError(f"cannot read suite file {str(path)!r}: {e}") from None
    return parse_suite(doc, default_name=path.stem, source=str(path))


def _check_eps(value: float, where: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise KdbenchError(f"{where} = {value!r} is outside [0, 1] (eps is in [0, 1] pixel scale)")
    return value


def _check_names(names, registry, where: str):
    for name in names:
        if name not in registry:
            from .errors import choices_error

            raise choices_error(registry.kind, name, registry.names()) from None


def parse_suite(doc: dict, default_name: str = "suite", source: str = "") -> Suite:
    for key in doc:
        if key not in SUITE_KEYS:
            raise unknown_key_error("the suite file", key, SUITE_KEYS)
    name = doc.get("name", default_name)
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name) or name[0] == ".":
        raise KdbenchError(f"suite name must be letters, digits, '-', '_' or '.', got {name!r}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise KdbenchError(f"description must be a string, got {description!r}")

    data_table = dict(doc.get("data", {})) if isinstance(doc.get("data", {}), dict) else doc.get("data")
    if "dataset" in doc:
        if not isinstance(data_table, dict):
            raise KdbenchError(f"data must be a table, got {data_table!r}")
        data_table["name"] = doc["dataset"]
    data = from_table(DataConfig, data_table, "data")
    if data.name not in DATASETS and ":" not in data.name:
        DATASETS.check(data.name)
    base_dir = Path(source).resolve().parent if source else Path.cwd()
    data = resolve_data_config(data, base_dir)

    pairs_doc = doc.get("pairs", [{"teacher": "cnn-large", "student": "cnn-small"}])
    if not isinstance(pairs_doc, list) or not pairs_doc:
        raise KdbenchError(f"pairs must be a non-empty list of {{teacher, student}} tables, got {pairs_doc!r}")
    pairs = tuple(parse_pair(p, f"pairs[{i}]", base_dir, data.name) for i, p in enumerate(pairs_doc))

    seeds = doc.get("seeds", [1, 2, 3])
    if not isinstance(seeds, list) or not seeds:
        raise KdbenchError(f"seeds must be a non-empty list of integers >= 1, got {seeds!r}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise KdbenchError(f"seed {s!r} is invalid; seeds are integers >= 1")
    if len(set(seeds)) != len(seeds):
        raise KdbenchError(f"seeds must be distinct, got {seeds!r}")

    train = from_table(TrainConfig, doc.get("train"), "train")
    if train.optimizer not in OPTIMIZERS:
        raise KdbenchError(f"train.optimizer {train.optimizer!r} is unknown; choose from: {', '.join(OPTIMIZERS)}")
    if train.schedule not in SCHEDULES:
        raise KdbenchError(f"train.schedule {train.schedule!r} is unknown; choose from: {', '.join(SCHEDULES)}")
    for key in ("epochs", "teacher_epochs", "batch_size"):
        if getattr(train, key) < 1:
            raise KdbenchError(f"train.{key} must be >= 1, got {getattr(train, key)!r}")
    if train.adv_steps < 0:
        raise KdbenchError(f"train.adv_steps must be >= 0, got {train.adv_steps!r}")
    if not train.lr > 0:
        raise KdbenchError(f"train.lr must be > 0, got {train.lr!r}")
    _check_eps(train.adv_eps, "train.adv_eps")

    ev = from_table(EvalConfig, doc.get("eval"), "eval")
    _check_names(ev.attacks, ATTACKS, "eval.attacks")
    _check_names(ev.corruptions, CORRUPTIONS, "eval.corruptions")
    _check_names(ev.noise_families, NOISE_FAMILIES, "eval.noise_families")
    for f in ev.noise_levels:
        if isinstance(f, bool) or not 0.0 < f <= 1.0:
            raise KdbenchError(f"eval.noise_levels: level {f!r} is outside (0, 1]")
    for e in ev.eps:
        _check_eps(e, "eval.eps")
    for e in ev.sweep_eps:
        _check_eps(e, "eval.sweep_eps")
    for s in ev.severities:
        if s not in (1, 2, 3, 4, 5):
            raise KdbenchError(f"eval.severities: severity {s!r} is invalid; choose from: 1, 2, 3, 4, 5")
    if not ev.eps:
        raise KdbenchError("eval.eps must list at least one eps")
    for key in ("pgd_steps", "apgd_steps", "square_queries", "batch_size"):
        if getattr(ev, key) < 1:
            raise KdbenchError(f"eval.{key} must be >= 1, got {getattr(ev, key)!r}")

    headline = doc.get("headline_eps", 0.1 if 0.1 in ev.eps else ev.eps[len(ev.eps) // 2])
    if isinstance(headline, bool) or not isinstance(headline, (int, float)):
        raise KdbenchError(f"headline_eps must be a number, got {headline!r}")
    headline = _check_eps(float(headline), "headline_eps")
    if headline not in ev.eps:
        raise KdbenchError(f"headline_eps {headline!r} must be one of eval.eps: {', '.join(map(str, ev.eps))}")

    methods = parse_methods(doc.get("methods", {"ce": {}, "kd": {}}))
    check = from_table(CheckConfig, doc.get("check"), "check")
    for key, tol in check.tolerance.items():
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise KdbenchError(f"check.tolerance.{key} must be a number >= 0, got {tol!r}")
    if not check.k >= 0 or not check.floor >= 0:
        raise KdbenchError(f"check.k and check.floor must be >= 0, got {check.k!r} and {check.floor!r}")
    executor = check_executor(from_table(ExecutorConfig, doc.get("executor"), "executor"))
    gpu = check_gpu(from_table(GpuConfig, doc.get("gpu"), "gpu"))
    save = from_table(SaveConfig, doc.get("save"), "save")  # a non-boolean `students` is a one-line error
    ref_seeds = doc.get("reference_seeds")
    if ref_seeds is not None and (isinstance(ref_seeds, bool) or not isinstance(ref_seeds, int) or ref_seeds < 1):
        raise KdbenchError(f"reference_seeds must be an integer >= 1 (teacher reference rows at the first N seeds), "
                           f"got {ref_seeds!r}")
    suite = Suite(name, description, data, pairs, methods, tuple(seeds), train, ev, headline, source, check,
                  executor, gpu, save, ref_seeds)
    check_pretrained(suite)
    return suite


def check_executor(cfg: ExecutorConfig, where: str = "executor.") -> ExecutorConfig:
    """Resource settings in range (`where` names them in errors: the suite's table or the CLI's flags)."""
    if cfg.cpus_per_job < 1:
        raise KdbenchError(f"{where}cpus_per_job must be an integer >= 1, got {cfg.cpus_per_job!r}")
    if not cfg.gpus_per_job >= 0 or (cfg.gpus_per_job > 1 and cfg.gpus_per_job != int(cfg.gpus_per_job)):
        raise KdbenchError(f"{where}gpus_per_job must be >= 0 (a fraction of one GPU, or a whole number), "
                           f"got {cfg.gpus_per_job!r}")
    if cfg.max_retries < 0:
        raise KdbenchError(f"{where}max_retries must be >= 0, got {cfg.max_retries!r}")
    return cfg


def parse_methods(table: Any) -> tuple[MethodRun, ...]:
    """`[methods]` maps each method to its parameters (`kd = { temperature = 4.0 }`, `ce = {}`); the reserved
    key `teacher` picks the teacher kind (defaults to the method's own)."""
    if isinstance(table, list):
        table = {name: {} for name in table} if all(isinstance(n, str) for n in table) else None
    if not isinstance(table, dict) or not table:
        raise KdbenchError(f"methods must be a non-empty table of method = {{params}}, got {table!r}")
    runs = []
    for name, params in table.items():
        cls = METHODS.get(name)
        if not isinstance(params, dict):
            raise KdbenchError(f"methods.{name} must be a table of parameters, got {params!r}")
        params = dict(params)
        kind = params.pop("teacher", cls.teacher_kind)
        if cls.teacher_kind is None and kind is not None:
            raise KdbenchError(f"methods.{name} uses no teacher; remove its 'teacher' key")
        if kind is not None:
            TEACHER_KINDS.check(kind)
        merged = check_params(params, cls.defaults, f"methods.{name}")
        for key, allowed in cls.choices.items():
            if merged[key] not in allowed:
                raise KdbenchError(f"methods.{name}.{key} {merged[key]!r} is unknown; choose from: {', '.join(allowed)}")
        runs.append(MethodRun(name, tuple(sorted(merged.items())), kind))
    return tuple(runs)


def with_overrides(suite: Suite, methods: list[str] | None = None, seeds: list[int] | None = None) -> Suite:
    """The suite restricted to some of its methods and/or run on other seeds (CLI --methods / --seeds)."""
    if methods:
        known = {m.name: m for m in suite.methods}
        picked = []
        for name in methods:
            if name not in known:
                METHODS.check(name)  # unknown everywhere -> 'unknown method' error
                picked.extend(parse_methods({name: {}}))
            else:
                picked.append(known[name])
        suite = dataclasses.replace(suite, methods=tuple(picked))
    if seeds:
        for s in seeds:
            if s < 1:
                raise KdbenchError(f"seed {s!r} is invalid; seeds are integers >= 1")
        suite = dataclasses.replace(suite, seeds=tuple(dict.fromkeys(seeds)))
    check_pretrained(suite)
    return suite


def _pair_from_config(d: dict) -> Pair:
    d = dict(d)
    pre = d.pop("pretrained", None)
    more = d.pop("ensemble", [])
    pair = from_table(Pair, d, "config.pair")
    if pre is None:
        return pair
    return dataclasses.replace(pair, pretrained=from_table(PretrainedTeacher, pre, "config.pair.pretrained"),
                               ensemble=tuple(from_table(PretrainedTeacher, p, "config.pair.ensemble") for p in more))


def job_from_config(config: dict, suite: str = "reproduce") -> Job:
    """Rebuild the Job a record was produced by, from the `config` stored in the record (its hash must match)."""
    from .errors import KdbenchError

    protocol = config.get("protocol", 1) if isinstance(config, dict) else None
    if protocol != PROTOCOL:
        raise KdbenchError(f"the record was made by evaluation protocol {protocol!r}; this kdbench computes protocol "
                           f"{PROTOCOL}, so its numbers would differ by design: re-run the suite instead")
    try:
        return Job(
            suite=suite,
            data=from_table(DataConfig, config["data"], "config.data"),
            pair=_pair_from_config(config["pair"]),
            method=config["method"],
            params=tuple(sorted(config["params"].items())),
            teacher_kind=config["teacher_kind"],
            seed=config["seed"],
            train=from_table(TrainConfig, config["train"], "config.train"),
            eval=from_table(EvalConfig, config["eval"], "config.eval"),
            headline_eps=config["headline_eps"],
            gpu=check_gpu(from_table(GpuConfig, config["gpu"], "config.gpu")) if "gpu" in config else None,
        )
    except (KeyError, TypeError, AttributeError) as e:
        raise KdbenchError(f"the record's config is incomplete or malformed ({type(e).__name__}: {e})") from None
