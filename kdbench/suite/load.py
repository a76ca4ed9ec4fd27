"""Suite files (TOML) -> validated `Suite` -> the job grid.

A suite is dataset x (teacher, student) pairs x methods x seeds. Every job is a pure function of its config;
its id is a hash of that config, so a re-run skips finished jobs. Besides the student jobs, a suite has one
reference job per teacher it uses (the teacher's own metrics, shown as reference rows); `reference_seeds = N`
limits those to the teachers of the first N seeds (every seed's teachers are still trained).

`plugins = ["my_kd.py", "mypkg.kd_losses"]` (files relative to the suite file, or importable modules) are imported
before the suite's tables are read (core/plugins.py): their methods, architectures, ... are then names like any
other. A suite that lists plugins runs their code.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.config import check_params, from_table, unknown_key_error
from ..core.errors import KdbenchError, choices_error
from ..core.gpu import GpuConfig, check_gpu
from ..data.load import resolve_data_config
from ..data.registry import DATASETS, DataConfig
from ..methods import METHODS, TeacherSpec
from ..training.pretrained import stand_ins
from ..training.teachers import TEACHER_KINDS
from .configs import (
    CheckConfig,
    EvalConfig,
    ExecutorConfig,
    SaveConfig,
    TrainConfig,
    check_eps,
    check_executor,
    check_l2_radii,
    parse_check,
    parse_eval,
    parse_train,
)
from .jobs import Job
from .pairs import Pair, parse_pair

REPO_BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


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
    seeds: tuple[int, ...] = ()  # this method's own seeds (the reserved key `seeds`); () = the suite's
    train: tuple[tuple[str, Any], ...] = ()  # [train] fields this method's students train with instead of the
    # suite's (the reserved key `train`); its teachers are the suite's, trained with the suite's [train]

    def train_config(self, suite_train: TrainConfig) -> TrainConfig:
        """The training settings of this method's students: the suite's, with this method's own in their place."""
        return dataclasses.replace(suite_train, **dict(self.train)) if self.train else suite_train


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
                train = m.train_config(self.train)
                teacher_train = self.train if train != self.train else None  # teachers: the suite's [train]
                for seed in m.seeds or self.seeds:
                    job = Job(self.name, self.data, pair, m.name, m.params, m.teacher_kind, seed, train, self.eval,
                              self.headline_eps, gpu, self.save.students, teacher_train)
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


SUITE_KEYS = {"name", "description", "dataset", "data", "pairs", "methods", "seeds", "train", "eval", "headline_eps",
              "check", "executor", "gpu", "save", "reference_seeds", "plugins"}


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
        raise choices_error("suite", suite, suites)
    return suites[suite]


def declared_kernels(suite: str) -> str | None:
    """The suite file's `[executor] kernels` as written (unchecked; None when absent or unreadable): read before
    the suite is loaded, since loading it can run tensor code (the data an L2 radius is checked against) and the
    kernels must be pinned before any (machine.pin_kernels)."""
    try:
        doc = tomllib.loads(resolve_suite_path(suite).read_text(encoding="utf-8"))
    except (KdbenchError, tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
        return None
    executor = doc.get("executor")
    kernels = executor.get("kernels") if isinstance(executor, dict) else None
    return kernels if isinstance(kernels, str) else None


def load_suite(suite: str) -> Suite:
    path = resolve_suite_path(suite)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise KdbenchError(f"suite file {str(path)!r} is not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KdbenchError(f"cannot read suite file {str(path)!r}: {e}") from None
    return parse_suite(doc, default_name=path.stem, source=str(path))


def parse_suite(doc: dict, default_name: str = "suite", source: str = "") -> Suite:
    for key in doc:
        if key not in SUITE_KEYS:
            raise unknown_key_error("the suite file", key, SUITE_KEYS)
    load_suite_plugins(doc.get("plugins", []), Path(source).resolve().parent if source else Path.cwd())
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

    seeds = check_seeds(doc.get("seeds", [1, 2, 3]), "seeds")

    train = parse_train(doc.get("train"))
    ev = parse_eval(doc.get("eval"))
    if ev.eps_l2 or ev.certify is not None:  # an L2 radius must fit the images: at most their diagonal
        from ..data.load import image_shape

        check_l2_radii(ev, image_shape(data))
    headline = doc.get("headline_eps", 0.1 if 0.1 in ev.eps else ev.eps[len(ev.eps) // 2])
    if isinstance(headline, bool) or not isinstance(headline, (int, float)):
        raise KdbenchError(f"headline_eps must be a number, got {headline!r}")
    headline = check_eps(float(headline), "headline_eps")
    if headline not in ev.eps:
        raise KdbenchError(f"headline_eps {headline!r} must be one of eval.eps: {', '.join(map(str, ev.eps))}")

    methods = parse_methods(doc.get("methods", {"ce": {}, "kd": {}}), train)
    check = parse_check(doc.get("check"))
    executor = check_executor(from_table(ExecutorConfig, doc.get("executor"), "executor"))
    gpu = check_gpu(from_table(GpuConfig, doc.get("gpu"), "gpu"))
    save = from_table(SaveConfig, doc.get("save"), "save")  # a non-boolean `students` is a one-line error
    ref_seeds = doc.get("reference_seeds")
    if ref_seeds is not None and (isinstance(ref_seeds, bool) or not isinstance(ref_seeds, int) or ref_seeds < 1):
        raise KdbenchError(f"reference_seeds must be an integer >= 1 (teacher reference rows at the first N seeds), "
                           f"got {ref_seeds!r}")
    suite = Suite(name, description, data, pairs, methods, seeds, train, ev, headline, source, check,
                  executor, gpu, save, ref_seeds)
    check_pretrained(suite)
    return suite


def load_suite_plugins(plugins: Any, base_dir: Path) -> None:
    """Import the suite's `plugins` (files relative to `base_dir`, or module names), before its tables are read."""
    from ..core.plugins import load_plugin

    if not isinstance(plugins, list) or not all(isinstance(p, str) and p for p in plugins):
        raise KdbenchError(f"plugins must be a list of .py files (relative to the suite file) or module names, "
                           f"got {plugins!r}")
    for spec in plugins:
        load_plugin(spec, base_dir)


def check_seeds(seeds: Any, where: str) -> tuple[int, ...]:
    """A non-empty list of distinct integers >= 1."""
    if not isinstance(seeds, list) or not seeds:
        raise KdbenchError(f"{where} must be a non-empty list of integers >= 1, got {seeds!r}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise KdbenchError(f"seed {s!r} is invalid; seeds are integers >= 1")
    if len(set(seeds)) != len(seeds):
        raise KdbenchError(f"{where} must be distinct, got {seeds!r}")
    return tuple(seeds)


def parse_methods(table: Any, train: TrainConfig | None = None) -> tuple[MethodRun, ...]:
    """`[methods]` maps each method to its parameters (`kd = { temperature = 4.0 }`, `ce = {}`). Reserved keys:
    `teacher` picks the teacher kind (defaults to the method's own); `seeds` gives the method its own seeds in
    place of the suite's (more seeds for the rows whose comparisons need them; the leaderboard pairs two rows on
    the seeds both have); `train` is a table of `[train]` fields that replace the suite's (`train`) for this
    method's students (`defensive = { temperature = 100.0, train = { epochs = 40 } }`), validated like `[train]`.
    Its teachers are shared with every method and trained with the suite's `[train]`, so `teacher_epochs` is not
    a method's to set."""
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
        own_seeds = check_seeds(params.pop("seeds"), f"methods.{name}.seeds") if "seeds" in params else ()
        own_train = method_train(params.pop("train"), train, name) if "train" in params else ()
        if cls.teacher_kind is None and kind is not None:
            raise KdbenchError(f"methods.{name} uses no teacher; remove its 'teacher' key")
        if kind is not None:
            TEACHER_KINDS.check(kind)
        merged = check_params(params, cls.defaults, f"methods.{name}")
        for key, allowed in cls.choices.items():
            if merged[key] not in allowed:
                raise KdbenchError(f"methods.{name}.{key} {merged[key]!r} is unknown; choose from: {', '.join(allowed)}")
        for key, bound in cls.bounds.items():
            if not bound.holds(merged[key]):
                raise KdbenchError(f"methods.{name}.{key} {merged[key]!r} is outside its range {bound}")
        problem = cls.params_problem(merged)
        if problem:
            raise KdbenchError(f"methods.{name}: {problem}")
        runs.append(MethodRun(name, tuple(sorted(merged.items())), kind, own_seeds, own_train))
    return tuple(runs)


def method_train(table: Any, train: TrainConfig | None, name: str) -> tuple[tuple[str, Any], ...]:
    """A method's `train` table, validated like `[train]` over the suite's (`train`): its fields, typed."""
    where = f"methods.{name}.train"
    if isinstance(table, dict) and "teacher_epochs" in table:
        raise KdbenchError(f"{where}.teacher_epochs: a method's teachers are shared by every method and trained "
                           f"with the suite's [train]; set teacher_epochs there")
    merged = parse_train(table, where, train or TrainConfig())
    return tuple(sorted((k, getattr(merged, k)) for k in table))


def with_overrides(suite: Suite, methods: list[str] | None = None, seeds: list[int] | None = None) -> Suite:
    """The suite restricted to some of its methods and/or run on other seeds (CLI --methods / --seeds; the seeds
    given replace every method's own seeds too). A method of the suite keeps its parameters and its own training
    settings; one the suite does not name runs with its defaults."""
    if methods:
        known = {m.name: m for m in suite.methods}
        picked = []
        for name in methods:
            if name not in known:
                METHODS.check(name)  # unknown everywhere -> 'unknown method' error
                picked.extend(parse_methods({name: {}}, suite.train))
            else:
                picked.append(known[name])
        suite = dataclasses.replace(suite, methods=tuple(picked))
    if seeds:
        for s in seeds:
            if s < 1:
                raise KdbenchError(f"seed {s!r} is invalid; seeds are integers >= 1")
        suite = dataclasses.replace(suite, seeds=tuple(dict.fromkeys(seeds)),  # for every method: theirs too
                                    methods=tuple(dataclasses.replace(m, seeds=()) for m in suite.methods))
    check_pretrained(suite)
    return suite
