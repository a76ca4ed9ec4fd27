"""Run a suite's job grid on a Ray cluster: `kdbench run --executor ray [--address auto|HOST:PORT]`.

Only who runs a job changes, never what it computes: a job is still `runner.run_job` on the job's config, so
the job ids, the records and the numbers are those of the local executor (same device, same threads per job).

- The driver (the `kdbench run` process) does what the local executor does around the jobs: the pre-flight
  checks, the results-folder lock, skipping finished job ids. It alone writes the results folder (records and
  failures/) and the teacher cache, atomically, with the local executor's functions.
- Data: the driver loads each dataset once and puts it in Ray's object store.
- Teachers: every teacher the remaining jobs need is read from the driver's cache, loaded by the driver
  (pretrained teachers), or trained once by a Ray task whose state dict comes back to the driver (which caches
  it). The jobs get their teachers through the object store, so workers need no shared filesystem; a state
  dict is loaded with `weights_only=True`, as from the cache.
- Jobs: one Ray task per job, reserving `cpus_per_job` CPUs (torch runs on that many threads) and
  `gpus_per_job` GPUs (from the suite's `[executor]` table or the command line); it returns the record.
- Faults: a task whose worker process or node dies is re-run up to `max_retries` times; after that, or when
  the job itself raises, the job is recorded under failures/ like a local failure and the grid goes on.
  Ctrl-C keeps every record written so far (and writes those that are ready) and cancels the rest.

Needs the optional `ray` package (`pip install 'kdbench[ray]'`) and kdbench on every node.
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path

from .errors import KdbenchError
from .gpu import configure_backend
from .records import load_records
from .runner import (
    Progress,
    RunResult,
    Workspace,
    default_cache_dir,
    fail_job,
    job_gpu,
    load_state_dict,
    preload_teacher,
    record_result,
    run_job,
    save_teacher,
    state_dict_bytes,
    teacher_config,
    teacher_path,
    train_teacher,
    trim_transfer,
)
from .jobs import Job
from .suite import Suite
from .suite_configs import ExecutorConfig, check_executor
from .teachers import teacher_key

HEARTBEAT_SECONDS = 60.0  # a progress line at least this often while jobs run


class WorkerDied(RuntimeError):
    """The worker process or node running a job died more often than `max_retries` allows."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise KdbenchError("--executor ray needs Ray: pip install 'kdbench[ray]'") from None
    return ray


# ---- worker side: runs in the Ray worker processes ----------------------------------------------------------

_WORKER: dict = {}  # per worker process, for the tasks of one run: data on the device, transfer examples


def _worker_device(device_name: str, threads: int, gpus: float):
    import torch

    from .runner import pick_device

    torch.set_num_threads(threads)
    if gpus > 0:  # Ray sets CUDA_VISIBLE_DEVICES to the task's GPUs: "cuda" is the first of them
        return pick_device("cuda" if device_name == "auto" else device_name)
    return torch.device("cpu")


def _worker_data(cfg, data_box: list, device):
    """The job's data on `device`: fetched from the object store once per worker process."""
    import ray

    cache = _WORKER.setdefault("data", {})
    key = (cfg, str(device))
    if key not in cache:
        if len(cache) >= 2:
            cache.pop(next(iter(cache)))
        cache[key] = ray.get(data_box[0]).to(device)
    return cache[key]


def _worker_transfer() -> dict:
    """Transfer examples crafted on a teacher by earlier jobs of this worker (`runner.trim_transfer`)."""
    return trim_transfer(_WORKER.setdefault("transfer", {}))


def _decode_teacher(payload, device):
    """A teacher from the object store: ("state", name, checkpoint bytes) or ("module", name, nn.Module)."""
    kind, name, value = payload
    if kind == "module":
        return value
    return load_state_dict(io.BytesIO(value), device, name)


def teacher_task(spec, job: Job, data_box: list, device_name: str, threads: int, gpus: float, name: str):
    """Train one teacher; returns (("state", name, checkpoint bytes), seconds). `name`: its cache file."""
    device = _worker_device(device_name, threads, gpus)
    configure_backend(job_gpu(job, device))
    data = _worker_data(job.data, data_box, device)
    t0 = time.perf_counter()
    model = train_teacher(spec, job, data, device)
    return ("state", name, state_dict_bytes(model)), time.perf_counter() - t0


def job_task(job: Job, data_box: list, device_name: str, threads: int, gpus: float, corruptions_from, *teachers):
    """Run one job with its teachers (one payload per `job.teacher_specs()`); returns (record, profile)."""
    import tempfile

    device = _worker_device(device_name, threads, gpus)
    configure_backend(job_gpu(job, device))
    # the cache folder is never read: every teacher is preloaded (a worker has no access to the driver's cache)
    ws = Workspace(device, Path(tempfile.gettempdir()) / "kdbench-ray-unused", corruptions_from=corruptions_from)
    ws.data[job.data] = _worker_data(job.data, data_box, device)
    ws.transfer = _worker_transfer()
    for spec, payload in zip(job.teacher_specs(), teachers, strict=True):
        preload_teacher(ws, spec, job, _decode_teacher(payload, device))
    record = run_job(job, ws, Progress(1, quiet=True))
    return record, ws.profile


# ---- driver side ----------------------------------------------------------------------------------------------


def check_device(device_name: str, res: ExecutorConfig) -> None:
    """The device a job runs on follows its resources: CUDA when it reserves a GPU, else the CPU."""
    if device_name not in ("auto", "cpu", "cuda"):
        hint = "; Ray picks the GPU of each job: use --device cuda" if device_name.startswith("cuda:") else ""
        raise KdbenchError(f"device {device_name!r} cannot be used with --executor ray; choose from: auto, cpu, "
                           f"cuda{hint}")
    if device_name == "cuda" and res.gpus_per_job == 0:
        raise KdbenchError("--device cuda with --executor ray needs a GPU per job: gpus_per_job > 0 "
                           "(suite [executor] table or --gpus-per-job)")
    if device_name == "cpu" and res.gpus_per_job > 0:
        raise KdbenchError(f"--device cpu reserves no GPU, but gpus_per_job is {res.gpus_per_job:g}; "
                           "drop one of them")


def prepare(suite: Suite, device_name: str, address: str | None = None, cpus_per_job: int | None = None,
            gpus_per_job: float | None = None, max_retries: int | None = None):
    """Check the Ray executor's inputs (nothing runs yet); returns run(out, **run_suite options) -> RunResult."""
    import_ray()
    over = {k: v for k, v in (("cpus_per_job", cpus_per_job), ("gpus_per_job", gpus_per_job),
                              ("max_retries", max_retries)) if v is not None}
    res = check_executor(dataclasses.replace(suite.executor, **over))
    check_device(device_name, res)

    def run(out: Path, **kw) -> RunResult:
        return run_suite_ray(suite, out, device_name, address=address, resources=res, **kw)

    return run


def _connect(ray, address: str | None) -> bool:
    """Connect to the cluster at `address`, or start a Ray instance on this machine. True when this call
    initialised Ray (and so shuts it down at the end)."""
    if ray.is_initialized():
        return False
    if address and address != "auto":
        _check_reachable(address)
    kwargs = {"logging_level": "WARNING", "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:  # "local": a new instance, even when `ray start` left one running on this machine
            ray.init(address="local", include_dashboard=False, **kwargs)
    except ConnectionError as e:
        raise KdbenchError(f"cannot connect to the Ray cluster at {address!r}: {str(e).splitlines()[0]}") from None
    return True


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """One clear error now for a head that is not there (Ray itself would retry for minutes)."""
    import socket

    host, sep, port = address.rpartition(":")
    if address.startswith("ray://"):
        return
    if not sep or not port.isdigit() or not host:
        raise KdbenchError(f"--address {address!r} must be HOST:PORT (the head's GCS port, 6379 unless "
                           "`ray start --head --port` said otherwise) or 'auto'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise KdbenchError(f"cannot connect to the Ray cluster at {address!r}: {e.strerror or e}; start it with "
                           f"`ray start --head --port {port}` on {host}") from None


def _fits_somewhere(ray, res: ExecutorConfig) -> bool:
    for node in ray.nodes():
        have = node.get("Resources", {}) if node.get("Alive") else {}
        if have.get("CPU", 0) >= res.cpus_per_job and have.get("GPU", 0) >= res.gpus_per_job:
            return True
    return False


def _slots(ray, res: ExecutorConfig) -> int:
    """How many jobs the cluster runs at once (for the progress line)."""
    n = 0
    for node in ray.nodes():
        if node.get("Alive"):
            have = node.get("Resources", {})
            k = int(have.get("CPU", 0) // res.cpus_per_job)
            if res.gpus_per_job > 0:
                k = min(k, int(have.get("GPU", 0) // res.gpus_per_job))
            n += k
    return max(n, 1)


def _failure(ray, error: BaseException, retries: int) -> tuple[BaseException, str | None]:
    """(the error to report, its remote traceback) for an exception from ray.get."""
    from ray.exceptions import NodeDiedError, RayTaskError, WorkerCrashedError

    if isinstance(error, RayTaskError) and isinstance(error.cause, BaseException) and not isinstance(
            error.cause, ray.exceptions.RayError):
        return error.cause, str(error)
    if isinstance(error, RayTaskError) and isinstance(error.cause, BaseException):
        error = error.cause
    if isinstance(error, (WorkerCrashedError, NodeDiedError)):
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return WorkerDied(f"the worker running the job died {retries + 1} time(s), retries exhausted "
                          f"({type(error).__name__}: {first})"), str(error)
    return error, str(error)


def _fmt_seconds(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


@dataclasses.dataclass
class _Teacher:
    key: str
    label: str
    cfg: dict
    payload: object = None  # ObjectRef of the payload tuple, once known
    seconds_ref: object = None  # ObjectRef of the training time (trained teachers)
    error: BaseException | None = None
    details: str | None = None
    ready: bool = False


def run_suite_ray(suite: Suite, out: Path, device_name: str = "auto", cache_dir: Path | None = None,
                  quiet: bool = False, stream=None, fail_fast: bool = False, data_dir: Path | None = None,
                  download: bool = False, corruptions_from: Path | None = None, address: str | None = None,
                  resources: ExecutorConfig | None = None) -> RunResult:
    """`runner.run_suite` with every teacher and job a Ray task (see the module docstring)."""
    from .cifar_c import with_cifar_c
    from .safety import check_writable, results_lock

    ray = import_ray()
    res = check_executor(resources or suite.executor)
    check_device(device_name, res)
    t_start = time.perf_counter()
    out = Path(out)
    suite = with_cifar_c(suite, corruptions_from)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    check_writable(out, "results folder")
    check_writable(cache_dir, "cache folder")
    with results_lock(out):
        jobs = suite.jobs(res.gpus_per_job > 0)  # a job reserving a GPU runs on CUDA
        done = {r["job_id"] for r in load_records(out)[0]}
        todo = [j for j in jobs if j.job_id not in done]
        progress = Progress(len(jobs), quiet, stream)
        progress.say(f"suite {suite.name}: {len(jobs)} jobs, {len(jobs) - len(todo)} already done, executor ray "
                     f"({res.cpus_per_job} CPU, {res.gpus_per_job:g} GPU per job)")
        if not todo:
            return RunResult(len(jobs), len(jobs), 0, [], {}, time.perf_counter() - t_start)
        owned = _connect(ray, address)
        try:
            run = _GridRun(ray, suite, out, cache_dir, device_name, res, progress, fail_fast,
                           Path(corruptions_from).resolve() if corruptions_from else None, address)
            run.start(todo, data_dir, download)
            run.loop()
        finally:
            if owned:
                ray.shutdown()
    return RunResult(len(jobs), len(jobs) - len(todo), run.ran, run.failed, run.profile,
                     time.perf_counter() - t_start)


class _GridRun:
    """The driver's bookkeeping of one run: submitted tasks, what came back, progress."""

    def __init__(self, ray, suite, out, cache_dir, device_name, res, progress, fail_fast, corruptions_from, address):
        self.ray, self.suite, self.out, self.cache_dir = ray, suite, out, cache_dir
        self.device_name, self.res, self.progress, self.fail_fast = device_name, res, progress, fail_fast
        self.corruptions_from, self.address = corruptions_from, address
        self.teachers: dict[str, _Teacher] = {}
        self.inputs: dict = {}  # data config -> ModelInput (shapes, classes, normalization)
        self.teacher_refs: dict = {}  # ObjectRef -> _Teacher (teachers being trained)
        self.pending: dict = {}  # ObjectRef -> (job, teacher keys)
        self.failed: list = []
        self.ran = 0
        self.profile: dict = {}
        self.t0 = time.perf_counter()
        self.last_line = self.t0
        self.stopped = False

    # -- submission --

    def _options(self):
        return {"num_cpus": self.res.cpus_per_job, "num_gpus": self.res.gpus_per_job,
                "max_retries": self.res.max_retries, "retry_exceptions": False}

    def start(self, todo: list[Job], data_dir, download) -> None:
        ray = self.ray
        if not _fits_somewhere(ray, self.res):
            msg = (f"no node of the Ray cluster has {self.res.cpus_per_job} CPU(s) and {self.res.gpus_per_job:g} "
                   f"GPU(s) for one job; lower cpus_per_job / gpus_per_job")
            if not self.address:
                raise KdbenchError(msg)
            self.progress.say(f"warning: {msg} (or wait for the cluster to grow)")
        self.slots = _slots(ray, self.res)
        self.teacher_fn, self.job_fn = ray.remote(teacher_task), ray.remote(job_task)
        data_refs: dict = {}
        data_errors: dict = {}
        from . import data as data_mod
        from .runner import model_input

        for job in todo:
            if job.data not in data_refs and job.data not in data_errors:
                try:
                    data = data_mod.load_data(job.data, data_dir, download)
                except Exception as e:  # noqa: BLE001 - the local executor fails each job with it too
                    data_errors[job.data] = e
                    continue
                self.inputs[job.data] = model_input(data)
                data_refs[job.data] = [ray.put(data)]  # in a list: a task fetches it only when it needs it
                del data
        submitted = 0
        for job in todo:
            if self.stopped:  # --fail-fast and a job failed already
                break
            if job.data in data_errors:
                self._fail(job, data_errors[job.data], None)
                continue
            keys = [self._teacher(spec, job, data_refs[job.data]) for spec in job.teacher_specs()]
            bad = next((self.teachers[k] for k in keys if self.teachers[k].error is not None), None)
            if bad is not None:
                self._fail(job, bad.error, bad.details)
                continue
            # the task's name is the worker's process title: `ps` shows which job a worker runs
            ref = self.job_fn.options(name=f"{job.label()} [{job.job_id}]", **self._options()).remote(
                job, data_refs[job.data], self.device_name, self.res.cpus_per_job, self.res.gpus_per_job,
                self.corruptions_from, *[self.teachers[k].payload for k in keys])
            self.pending[ref] = (job, keys)
            submitted += 1
        n_train = len(self.teacher_refs)
        self.progress.say(f"    {submitted} jobs submitted, {n_train} teacher(s) to train first; "
                          f"{self.slots} job(s) at a time")

    def _teacher(self, spec, job: Job, data_box: list) -> str:
        """The key of the teacher `spec` of `job`, its payload put in the object store or being trained."""
        cfg = teacher_config(spec, job, self.res.cpus_per_job)
        key = teacher_key(cfg)
        if key in self.teachers:
            return key
        t = self.teachers[key] = _Teacher(key, f"{spec.arch} ({spec.kind}) seed {spec.seed}", cfg)
        if job.pair.pretrained is not None:  # loaded by the driver, never trained or cached
            from .pretrained import load_pretrained

            try:
                pre = job.stand_in(spec)
                model = load_pretrained(pre, self.inputs[job.data], "cpu", self.cache_dir)
                t.payload, t.ready = self.ray.put(("module", pre.display_name(), model)), True
            except Exception as e:  # noqa: BLE001 - every job of this teacher fails with it, as locally
                t.error = e
            return key
        path = teacher_path(self.cache_dir, key)
        if path.is_file():
            t.payload, t.ready = self.ray.put(("state", str(path), path.read_bytes())), True
            return key
        self.progress.say(f"    training teacher {t.label} on Ray")
        task = self.teacher_fn.options(name=f"training teacher {t.label} [{key}]", num_returns=2, **self._options())
        t.payload, t.seconds_ref = task.remote(spec, job, data_box, self.device_name, self.res.cpus_per_job,
                                               self.res.gpus_per_job, str(path))
        self.teacher_refs[t.payload] = t
        return key

    # -- collection --

    def running(self) -> int:
        ready_jobs = sum(1 for job, keys in self.pending.values() if all(self.teachers[k].ready for k in keys))
        return min(self.slots, ready_jobs + len(self.teacher_refs))

    def line(self, what: str) -> None:
        p = self.progress
        finished = self.ran + len(self.failed)
        elapsed = time.perf_counter() - self.t0
        left = len(self.pending)
        eta = f", ETA {_fmt_seconds(elapsed / finished * left)}" if finished and left else ""
        done = p.total - left - len(self.failed)
        p.say(f"[{done}/{p.total} done, {self.running()} running, {len(self.failed)} failed{eta}] {what}")
        self.last_line = time.perf_counter()

    def _fail(self, job: Job, error: BaseException, details: str | None) -> None:
        self.failed.append(fail_job(self.out, job, error, self.progress, details))
        if self.fail_fast:
            self.stopped = True

    def _collect_teacher(self, ref) -> None:
        t = self.teacher_refs.pop(ref)
        try:
            _, _, blob = self.ray.get(ref)
            seconds = self.ray.get(t.seconds_ref)
        except Exception as e:  # noqa: BLE001 - the jobs of this teacher fail with the same error
            t.error, t.details = _failure(self.ray, e, self.res.max_retries)
            self.progress.say(f"    teacher {t.label} FAILED: {type(t.error).__name__}: {t.error}")
            return
        save_teacher(self.cache_dir, t.key, t.cfg, blob)
        self.profile["teacher training"] = self.profile.get("teacher training", 0.0) + seconds
        t.ready = True
        self.line(f"teacher {t.label} trained ({seconds:.1f}s), cached")

    def _collect_job(self, ref) -> None:
        job, _ = self.pending.pop(ref)
        try:
            record, profile = self.ray.get(ref)
        except Exception as e:  # noqa: BLE001 - any job error is recorded; the grid goes on
            error, details = _failure(self.ray, e, self.res.max_retries)
            self._fail(job, error, details)
            self.line(f"failed {job.label()}")
            return
        record_result(self.out, record)
        for k, v in profile.items():
            self.profile[k] = self.profile.get(k, 0.0) + v
        self.ran += 1
        self.line(f"{job.label()} ({record['train_seconds'] + record['eval_seconds']:.1f}s)")

    def _collect(self, ref) -> None:
        if ref in self.teacher_refs:
            self._collect_teacher(ref)
        else:
            self._collect_job(ref)

    def cancel(self) -> None:
        import contextlib

        for ref in list(self.pending) + list(self.teacher_refs):
            with contextlib.suppress(Exception):  # already finished or gone
                self.ray.cancel(ref, force=True)

    def loop(self) -> None:
        ray = self.ray
        try:
            while (self.pending or self.teacher_refs) and not self.stopped:
                waiting = list(self.teacher_refs) + list(self.pending)
                ready, _ = ray.wait(waiting, num_returns=1, timeout=5.0)
                for ref in ready:
                    self._collect(ref)
                if not ready and time.perf_counter() - self.last_line > HEARTBEAT_SECONDS:
                    self.line("still running")
        except KeyboardInterrupt:
            # keep what is finished: write every record that is ready now, then cancel the rest
            waiting = list(self.teacher_refs) + list(self.pending)
            if waiting:
                ready, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
                for ref in ready:
                    self._collect(ref)
            self.progress.say(f"interrupted: {self.ran} job(s) finished and recorded, {len(self.pending)} cancelled")
            self.cancel()
            raise
        if self.stopped:
            self.cancel()
