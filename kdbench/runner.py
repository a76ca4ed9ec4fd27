"""Suite -> jobs -> (teacher, distillation, evaluation) -> records. Reports are written by report.py.

A job is a pure function of its config; its record is named by the job id, so a re-run skips finished jobs
and a killed run resumes where it stopped. Teachers are trained once and cached as state dicts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import data as data_mod
from .augment import make_augmenter
from .datasets import TensorData, config_dict
from .evaluate import evaluate
from .examples import pack_masks
from .gpu import autocast_dtype, configure_backend, place
from .methods import METHODS, Batch, TeacherSpec, TrainContext
from .models import ModelInput, build_model, count_macs, count_params
from .jobs import Job
from .records import atomic_write_bytes, atomic_write_text, environment, load_records, utc_now, write_record
from .suite import Suite
from .teachers import TEACHER_KINDS, cache_settings, teacher_key
from .train import fit, predict_logits, seed_everything
from .transfer import shared_examples


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("KDBENCH_CACHE", Path.home() / ".cache" / "kdbench"))


def pick_device(name: str | None) -> torch.device:
    from .errors import KdbenchError

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu" or name.startswith("cuda"):
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise KdbenchError(f"device {name!r} requested but CUDA is not available; choose from: auto, cpu")
        return torch.device(name)
    raise KdbenchError(f"unknown device {name!r}; choose from: auto, cpu, cuda, cuda:N")


class Progress:
    def __init__(self, total: int, quiet: bool, stream=None):
        self.total, self.quiet, self.stream = total, quiet, stream or sys.stderr
        self.start = time.perf_counter()
        self.done = 0

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=self.stream, flush=True)

    def job(self, i: int, label: str) -> None:
        elapsed = time.perf_counter() - self.start
        eta = "" if self.done == 0 else f", ETA {elapsed / self.done * (self.total - self.done):.0f}s"
        self.say(f"[job {i}/{self.total}{eta}] {label}")


@dataclass
class Workspace:
    """Everything shared by the jobs of one run: data on the device, the teacher cache, timings."""

    device: torch.device
    cache_dir: Path
    data: dict = field(default_factory=dict)
    teachers: dict = field(default_factory=dict)
    teacher_errors: dict = field(default_factory=dict)
    transfer: dict = field(default_factory=dict)  # transfer.transfer_key -> {eps: x_adv}
    profile: dict = field(default_factory=dict)
    data_dir: Path | None = None  # --data-dir: where torchvision datasets live (else the suite's / default)
    download: bool = False  # --download
    corruptions_from: Path | None = None  # --corruptions-from: a CIFAR-10-C / CIFAR-100-C folder

    def add_time(self, key: str, seconds: float) -> None:
        self.profile[key] = self.profile.get(key, 0.0) + seconds

    def get_data(self, cfg) -> TensorData:
        if cfg not in self.data:
            t0 = time.perf_counter()
            self.data[cfg] = data_mod.load_data(cfg, self.data_dir, self.download).to(self.device)
            self.add_time("data", time.perf_counter() - t0)
        return self.data[cfg]


TRANSFER_BUDGET = 256 * 2**20  # bytes of transfer examples a worker process keeps for its next jobs


def trim_transfer(cache: dict, budget: int = TRANSFER_BUDGET) -> dict:
    """Drop the oldest entries of a transfer cache (transfer key -> {eps: examples}) until it holds at
    most `budget` bytes; they depend only on their key, so a later job may craft them again."""
    size = {k: sum(t.numel() * t.element_size() for t in v.values()) for k, v in cache.items()}
    while cache and sum(size.values()) > budget:
        size.pop(oldest := next(iter(cache)))
        cache.pop(oldest)
    return cache


def model_input(data) -> ModelInput:
    return ModelInput(data.shape, data.num_classes, data.mean, data.std)


def teacher_config(spec: TeacherSpec, job: Job, threads: int) -> dict:
    """What determines a trained teacher, its cache key. `threads`: the torch threads it trains on, which change
    its weights in the last bits on the CPU (a CUDA job's are set by its [gpu] settings instead)."""
    t = job.train
    params, kind_train = cache_settings(spec.kind, dict(spec.params), t)  # the kind's own facts (teachers.py)
    # format 2: CPU teachers train in the channels-last layout (gpu.place), which changes their last bits;
    # format 3: they train with optim.FlatOptimizer
    cfg = {"format": 3, "data": config_dict(job.data), "arch": spec.arch, "kind": spec.kind,
           "params": params, "seed": spec.seed,
           "train": {"epochs": t.teacher_epochs, "batch_size": t.batch_size, "optimizer": t.optimizer, "lr": t.lr,
                     "momentum": t.momentum, "weight_decay": t.weight_decay, "schedule": t.schedule, **kind_train}}
    if job.gpu is not None:  # trained on a GPU with these settings (mixed precision, ...)
        cfg["gpu"] = dataclasses.asdict(job.gpu)
    else:
        cfg["threads"] = threads
    return cfg


def job_gpu(job: Job, device: torch.device):
    """The [gpu] settings that apply to `job` on `device`: its own on CUDA, none on the CPU."""
    return job.gpu if device.type == "cuda" else None


def get_teacher(spec: TeacherSpec, job: Job, ws: Workspace, progress: Progress) -> torch.nn.Module:
    """The trained teacher for `spec`: from memory, from the disk cache, or trained now and cached."""
    cfg = teacher_config(spec, job, torch.get_num_threads())  # trained here, now, if not cached
    key = teacher_key(cfg)
    if key in ws.teachers:
        return ws.teachers[key][1]
    if key in ws.teacher_errors:  # trained once already in this run and failed: fail fast, same reason
        raise ws.teacher_errors[key]
    data = ws.get_data(job.data)
    if job.pair.pretrained is not None:  # loaded from elsewhere: never trained, never cached on disk
        from .pretrained import load_pretrained

        pre = job.stand_in(spec)  # the one declared as this teacher's kind
        loaded = ws.teachers.get(("pretrained", pre))
        if loaded is None:
            t0 = time.perf_counter()
            model = place(load_pretrained(pre, model_input(data), ws.device, ws.cache_dir),
                          ws.device, job_gpu(job, ws.device))  # the layout of a trained teacher
            ws.add_time("teacher loading", time.perf_counter() - t0)
            loaded = ws.teachers[("pretrained", pre)] = (spec, model)
        ws.teachers[key] = loaded
        return loaded[1]
    path = teacher_path(ws.cache_dir, key)
    if path.is_file():
        model = place(build_model(spec.arch, model_input(data)), ws.device, job_gpu(job, ws.device))
        model.load_state_dict(load_state_dict(path, ws.device))
    else:
        t0 = time.perf_counter()
        progress.say(f"    training teacher {spec.arch} ({spec.kind}) seed {spec.seed}")
        try:
            model = train_teacher(spec, job, data, ws.device)
        except Exception as e:
            ws.teacher_errors[key] = e
            raise
        save_teacher(ws.cache_dir, key, cfg, state_dict_bytes(model))
        ws.add_time("teacher training", time.perf_counter() - t0)
    model.eval().requires_grad_(False)
    ws.teachers[key] = (spec, model)
    return model


def train_teacher(spec: TeacherSpec, job: Job, data, device: torch.device) -> torch.nn.Module:
    """Train the teacher `spec` of `job` on `data` now, without the cache (get_teacher caches the result)."""
    kind = TEACHER_KINDS.get(spec.kind)
    params = {**kind.defaults, **dict(spec.params)}
    seed_everything(spec.seed)
    gpu = job_gpu(job, device)
    model = place(build_model(spec.arch, model_input(data)), device, gpu)
    objective = kind.objective(model, params, job.train)
    x, y = data.x_train, data.y_train
    augment = make_augmenter(job.data.augment, spec.seed, device) or (lambda xb: xb)
    fit(model, list(model.parameters()), lambda idx, p: objective(augment(x[idx]), y[idx], p), len(x),
        job.train.teacher_epochs, job.train, spec.seed, device, amp=autocast_dtype(gpu))
    return model


def state_dict_bytes(model: torch.nn.Module) -> bytes:
    """The model's state dict (on the CPU) as the bytes of a teacher-cache file."""
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def teacher_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "teachers" / f"{key}.pt"


def save_teacher(cache_dir: Path, key: str, cfg: dict, blob: bytes) -> None:
    """Put a trained teacher (`state_dict_bytes`) and its config in the cache, atomically."""
    path = teacher_path(cache_dir, key)
    atomic_write_bytes(path, blob)
    atomic_write_text(path.with_suffix(".json"), json.dumps(cfg, indent=1, sort_keys=True))


def preload_teacher(ws: Workspace, spec: TeacherSpec, job: Job, teacher) -> None:
    """Hand `ws` the teacher `spec` of `job` (a state dict, or a loaded module for a pretrained teacher): run_job
    then takes it from memory and never trains it or reads the cache."""
    if isinstance(teacher, dict):
        inp = model_input(ws.get_data(job.data))
        model = place(build_model(spec.arch, inp), ws.device, job_gpu(job, ws.device))
        model.load_state_dict(teacher)
    else:
        model = teacher.to(ws.device)
    key = teacher_key(teacher_config(spec, job, torch.get_num_threads()))
    ws.teachers[key] = (spec, model.eval().requires_grad_(False))


def load_state_dict(source, device, name: str | None = None) -> dict:
    """A state dict from a file path or a file-like object (`name` says which in errors), never executing code
    (`weights_only=True`)."""
    from .errors import KdbenchError

    try:
        return torch.load(source, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle safely is a bad checkpoint
        raise KdbenchError(f"cannot load checkpoint {name or str(source)!r} as a plain state dict: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None


def train_student(job: Job, data, teachers: list, ws: Workspace) -> tuple[torch.nn.Module, list[dict]]:
    cls = METHODS.get(job.method)
    seed_everything(job.seed)
    gpu = job_gpu(job, ws.device)
    student = place(build_model(job.pair.student, model_input(data)), ws.device, gpu)
    t = job.train
    ctx = TrainContext(num_classes=data.num_classes, input_shape=data.shape, epochs=t.epochs, adv_eps=t.adv_eps,
                       adv_steps=t.adv_steps, adv_step_size=t.step_size())
    distiller = cls(student, teachers, dict(job.params), ctx).to(ws.device)
    x, y = data.x_train, data.y_train
    augment = make_augmenter(job.data.augment, job.seed, ws.device)
    # augmented inputs differ every step: the teachers' logits are then computed per batch, not cached
    cached = [predict_logits(tm, x) for tm in teachers] if cls.uses_teacher_logits and augment is None else []

    def step(idx, progress):
        if augment is None:
            return distiller.losses(Batch(x[idx], y[idx], [c[idx] for c in cached], progress))
        xb = augment(x[idx])
        with torch.no_grad():
            logits = [tm(xb) for tm in teachers] if cls.uses_teacher_logits else []
        return distiller.losses(Batch(xb, y[idx], logits, progress))

    history = fit(distiller, distiller.trainable_parameters(), step, len(x), t.epochs, t, job.seed, ws.device,
                  amp=autocast_dtype(gpu))
    # evaluation needs gradients with respect to the inputs only: none for the weights (cheaper attacks)
    return distiller.student.eval().requires_grad_(False), history


def run_job(job: Job, ws: Workspace, progress: Progress) -> dict:
    data = ws.get_data(job.data)
    specs = job.teacher_specs()
    teachers = [get_teacher(s, job, ws, progress) for s in specs]
    t0 = time.perf_counter()
    if job.is_teacher:
        model, history = teachers[0], []
        source = None
    else:
        model, history = train_student(job, data, teachers, ws)
        source = teachers[0] if teachers else None
    train_seconds = time.perf_counter() - t0
    ws.add_time("student training", 0.0 if job.is_teacher else train_seconds)

    per_example: dict = {}
    metrics, flags, evidence, timings, eval_seconds = evaluate_job_model(job, ws, model, source, specs, data,
                                                                         per_example)
    teacher_info = teacher_summary(job, specs, teachers, data)
    record = {
        "schema": 1,
        "job_id": job.job_id,
        "suite": job.suite,
        "role": "teacher" if job.is_teacher else "student",
        "dataset": job.data.name,
        "pair": f"{job.pair.teacher}->{job.pair.student}",
        "teacher": teacher_info,
        "student": {"arch": job.pair.teacher if job.is_teacher else job.pair.student, "params": count_params(model),
                    "macs": count_macs(model, data.shape)},
        "method": f"teacher:{job.teacher_kind}" if job.is_teacher else job.method,
        "method_params": dict(job.params),
        "trained_on": {} if job.is_teacher else METHODS.get(job.method).trains_on(dict(job.params)),
        "teacher_kind": job.teacher_kind,
        "seed": job.seed,
        "metrics": metrics,
        "flags": flags,
        "flag_evidence": evidence,
        "examples": pack_masks(per_example),
        "headline_eps": job.headline_eps,
        "train_history": history[-1:] if history else [],
        "train_seconds": round(train_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "eval_timings": {k: round(v, 3) for k, v in timings.items()},
        "config": job.config(),
        "env": environment(ws.device),
        "created": utc_now(),
    }
    if job.save_student and not job.is_teacher:
        from .students import attach_weights

        attach_weights(record, model, data)
    return record


def evaluate_job_model(job: Job, ws: Workspace, model, source, specs, data, per_example: dict | None = None) -> tuple:
    """`model` evaluated with `job`'s protocol (attacks, transfer from `source`, corruptions, CIFAR-C); returns
    (metrics, flags, flag evidence, timings, eval seconds) and fills `per_example` with the per-example
    correctness masks (evaluate's out-parameter). Shared by run_job and `kdbench evaluate`."""
    seed_everything(job.seed)
    timings: dict = {}
    t1 = time.perf_counter()
    transfer_cache = shared_examples(ws, job) if source is not None and job.eval.transfer else None
    metrics, flags, evidence = evaluate(model, data.x_test, data.y_test, data.num_classes, job.eval, job.seed,
                                        job.headline_eps, source=source, timings=timings,
                                        transfer_cache=transfer_cache, per_example=per_example)
    if job.eval.cifar_c:  # CIFAR-10-C / CIFAR-100-C, beside the synthetic corruptions
        from .cifar_c import evaluate_cifar_c

        t2 = time.perf_counter()
        metrics.update(evaluate_cifar_c(model, ws.corruptions_from, data, job.eval.severities, job.eval.batch_size,
                                        job.eval.cifar_c))
        timings["cifar-c"] = time.perf_counter() - t2
    eval_seconds = time.perf_counter() - t1
    for k, v in timings.items():
        ws.add_time(f"eval: {k}", v)
    return metrics, flags, evidence, timings, eval_seconds


def teacher_summary(job: Job, specs: list, teachers: list, data) -> dict | None:
    """The record's `teacher` entry: the first teacher's arch, kind, seeds, size and clean accuracy."""
    if not teachers:
        return None
    tm = teachers[0]
    info = {"arch": specs[0].arch, "kind": specs[0].kind, "seeds": [s.seed for s in specs],
            "params": count_params(tm),
            "clean": (predict_logits(tm, data.x_test).argmax(1) == data.y_test).float().mean().item()}
    info["macs"] = count_macs(tm, data.shape)
    if job.pair.pretrained is not None:
        info["kind"] = "pretrained"
        info["pretrained"] = dataclasses.asdict(job.stand_in(specs[0]))  # the teacher described here
        if job.pair.ensemble:  # every pretrained teacher, in the order of the teachers
            info["pretrained_all"] = [dataclasses.asdict(job.stand_in(s)) for s in specs]
    return info


@dataclass
class RunResult:
    total: int
    skipped: int
    ran: int
    failed: list = field(default_factory=list)  # (job, reason) of each failed job
    profile: dict = field(default_factory=dict)
    seconds: float = 0.0


def failures_dir(out: Path) -> Path:
    return Path(out) / "failures"


def write_failure(out: Path, job: Job, error: BaseException, details: str | None = None) -> Path:
    """A failed job leaves `failures/<job_id>.json` (reason + config) and `.log` (traceback, or `details`: one
    from another process); no record."""
    import traceback

    folder = failures_dir(out)
    log = folder / f"{job.job_id}.log"
    atomic_write_text(log, details if details is not None else "".join(traceback.format_exception(error)))
    info = {"job_id": job.job_id, "suite": job.suite, "label": job.label(),
            "reason": f"{type(error).__name__}: {error}", "config": job.config(), "traceback": log.name,
            "created": utc_now()}
    path = folder / f"{job.job_id}.json"
    atomic_write_text(path, json.dumps(info, indent=1, sort_keys=True) + "\n")
    return path


def fail_job(out: Path, job: Job, error: BaseException, progress: Progress, details: str | None = None) -> tuple:
    """Record a failed job under failures/ (`write_failure`) and say so; returns (job, reason), an entry of
    `RunResult.failed`. Shared by every executor."""
    path = write_failure(out, job, error, details)
    reason = f"{type(error).__name__}: {error}"
    progress.say(f"    FAILED {job.label()}: {reason} (details in {path})")
    return job, reason


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block on `threads` torch threads (None: as set now), then restore this process's setting."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def record_result(out: Path, record: dict) -> None:
    """Write a finished job's record, after its student's weights (students.py), so a record never names a
    missing file; a failure left by an earlier run of the same job goes."""
    from .students import save_weights

    save_weights(out, record)
    write_record(out, record)
    for stale in (failures_dir(out) / f"{record['job_id']}.json", failures_dir(out) / f"{record['job_id']}.log"):
        stale.unlink(missing_ok=True)


def run_suite(suite: Suite, out: Path, device: torch.device, cache_dir: Path | None = None, quiet: bool = False,
              stream=None, fail_fast: bool = False, data_dir: Path | None = None, download: bool = False,
              corruptions_from: Path | None = None, workers: int = 1, threads: int | None = None,
              workers_note: str = "") -> RunResult:
    """Run every job of `suite` whose record is not in `out` yet. A job that raises (a diverging loss, a bad
    checkpoint, ...) is recorded under failures/ and the rest of the suite goes on (or stops, `fail_fast`).

    `workers` > 1 runs the jobs on that many worker processes (pool_executor.py), else one at a time in this
    process. `threads`: torch threads per job (None: as torch is set now); the numbers depend on it.
    `workers_note`: why that many workers (shown in the progress line)."""
    from .cifar_c import with_cifar_c
    from .safety import check_writable, results_lock

    t_start = time.perf_counter()
    out = Path(out)
    suite = with_cifar_c(suite, corruptions_from)
    ws = Workspace(device, Path(cache_dir) if cache_dir else default_cache_dir(), data_dir=data_dir,
                   download=download, corruptions_from=corruptions_from)
    check_writable(out, "results folder")
    check_writable(ws.cache_dir, "cache folder")
    cuda = device.type == "cuda"
    configure_backend(suite.gpu if cuda else None)
    with results_lock(out):
        jobs = suite.jobs(cuda)
        done = {r["job_id"] for r in load_records(out)[0]}
        todo = [j for j in jobs if j.job_id not in done]
        progress = Progress(len(jobs), quiet, stream)
        workers = max(1, min(workers, len(todo)))
        how = (f"{workers} workers" if workers > 1 else "1 worker") + (f" ({workers_note})" if workers_note else "")
        progress.say(f"suite {suite.name}: {len(jobs)} jobs, {len(jobs) - len(todo)} already done, device {device}, "
                     f"{how}")
        if workers > 1:
            from .pool_executor import run_pool

            if download or suite.data.download:  # once, here, rather than by every worker at the same time
                _fetch_data(todo, data_dir)
            outcome = run_pool(todo, out, device, workers, threads or torch.get_num_threads(), ws.cache_dir,
                               progress, fail_fast, data_dir, download, corruptions_from)
            return RunResult(len(jobs), len(jobs) - len(todo), outcome.ran, outcome.failed, outcome.profile,
                             time.perf_counter() - t_start)
        with torch_threads(threads):
            failed = _run_here(todo, jobs, out, ws, progress, fail_fast)
    return RunResult(len(jobs), len(jobs) - len(todo), len(todo) - len(failed), failed, ws.profile,
                     time.perf_counter() - t_start)


def _fetch_data(jobs: list[Job], data_dir) -> None:
    """Load (and so download) each dataset of `jobs` once; a failure is left to the jobs, which report it."""
    for cfg in dict.fromkeys(j.data for j in jobs):
        try:
            data_mod.load_data(cfg, data_dir, True)
        except Exception:  # noqa: BLE001, S112 - every job of this dataset fails with the same error, recorded
            continue


def _run_here(todo: list[Job], jobs: list[Job], out: Path, ws: Workspace, progress: Progress,
              fail_fast: bool) -> list:
    """The jobs `todo` one after another in this process; returns the failed ones as (job, reason)."""
    failed = []
    for job in todo:
        progress.job(len(jobs) - len(todo) + progress.done + 1, job.label())
        try:
            record = run_job(job, ws, progress)
        except Exception as e:  # noqa: BLE001 - any job error is recorded; the grid goes on
            failed.append(fail_job(out, job, e, progress))
            if fail_fast:
                break
        else:
            record_result(out, record)
        progress.done += 1
    return failed
