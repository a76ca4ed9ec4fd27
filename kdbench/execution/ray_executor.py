"""Run a suite's job grid on a Ray cluster: `kdbench run --executor ray [--address auto|HOST:PORT]`.

Only who runs a job changes, never what it computes: a job is still `job.run_job` on the job's config, so
the job ids, the records and the numbers are those of the local executor (same device, same threads per job).

- The driver (driver.py) does what it does for the local executor: the pre-flight checks, the results-folder
  lock, skipping finished job ids, the plan (teachers first, then the transfer examples the students share,
  then the jobs). It alone writes the results folder (records and failures/), the teacher cache and the cached
  transfer examples, atomically.
- Data: the driver loads each dataset once and puts it in Ray's object store.
- Teachers: every teacher the remaining jobs need is read from the driver's cache, loaded by the driver
  (pretrained teachers), or trained once by a Ray task whose state dict comes back to the driver (which caches
  it). Transfer examples are crafted once per teacher and seed by a Ray task, like the local executor's (the
  driver caches them too). The jobs get their teachers and transfer examples through the object store, so
  workers need no shared filesystem; a state dict is loaded with `weights_only=True`, as from the cache.
- Tasks reserve `cpus_per_job` CPUs (torch runs on that many threads) and `gpus_per_job` GPUs (from the suite's
  `[executor]` table or the command line); a job's task returns its record.
- Plugins: every task imports the driver's plugins first (core/plugins.py); their files travel with the run in
  Ray's runtime environment (`py_modules` of `ray.init`, ray_cluster.plugin_runtime_env), so a node without them
  runs their jobs, and a worker checks each file's SHA-256 against the driver's. (When Ray was initialised before
  the run, in a notebook, a worker reads a plugin file from where the driver loaded it.)
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

from ..core.errors import KdbenchError
from ..core.gpu import configure_backend, job_gpu
from ..evaluation.transfer import craft_all
from ..models.checkpoints import load_state_dict, state_dict_bytes, tensors_bytes
from ..suite.configs import check_executor
from ..suite.load import Suite
from ..training.teacher_cache import preload_teacher, teacher_config, teacher_path, train_teacher
from ..training.teachers import teacher_key
from .job import run_job
from .ray_cluster import check_device, connect, failure, fits_somewhere, import_ray, plugin_runtime_env, slots
from .run_output import RunResult
from .run_plan import JOB, TEACHER, Done
from .run_progress import Progress
from .transfer_cache import needs_transfer, transfer_key, transfer_path
from .workspace import Workspace, default_cache_dir

# ---- worker side: runs in the Ray worker processes ----------------------------------------------------------

_WORKER: dict = {}  # per worker process, for the tasks of one run: data on the device


def _worker_device(device_name: str, threads: int, gpus: float):
    import torch

    from ..core.gpu import pick_device

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


def _workspace(job, where: tuple, teachers: tuple, corruptions_from=None) -> Workspace:
    """A workspace for `job` on this worker, `where` = (data box, device name, threads, GPUs, the driver's
    plugins), holding its teachers (one payload each, in the order of `job.teacher_specs()`: ("state", name,
    checkpoint bytes) or ("module", name, nn.Module))."""
    import tempfile

    from ..core.plugins import import_sources

    data_box, device_name, threads, gpus, plugins = where
    import_sources(plugins)  # before anything names a plugin's entry
    device = _worker_device(device_name, threads, gpus)
    configure_backend(job_gpu(job, device))
    # the cache folder is never read: every teacher is preloaded (a worker has no access to the driver's cache)
    ws = Workspace(device, Path(tempfile.gettempdir()) / "kdbench-ray-unused", corruptions_from=corruptions_from)
    ws.data[job.data] = _worker_data(job.data, data_box, device)
    for spec, (kind, name, value) in zip(job.teacher_specs(), teachers):
        preload_teacher(ws, spec, job, value if kind == "module" else load_state_dict(io.BytesIO(value), device, name))
    return ws


def teacher_task(spec, job, where: tuple, name: str):
    """Train one teacher; returns (("state", name, checkpoint bytes), seconds). `name`: its cache file."""
    ws = _workspace(job, where, ())
    t0 = time.perf_counter()
    model = train_teacher(spec, job, ws.get_data(job.data), ws.device)
    return ("state", name, state_dict_bytes(model)), time.perf_counter() - t0


def transfer_task(job, where: tuple, teacher):
    """Craft the transfer examples of `job`'s first teacher and seed; returns (their bytes, seconds)."""
    ws = _workspace(job, where, (teacher,))
    (model,) = [m for _, m in ws.teachers.values()]
    t0 = time.perf_counter()
    examples = craft_all(model, ws.get_data(job.data), job.eval, job.seed)
    return tensors_bytes(examples), time.perf_counter() - t0


def job_task(job, where: tuple, corruptions_from, transfer, *teachers):
    """Run one job with its teachers and transfer examples (bytes, or None); returns (record, profile)."""
    import torch

    ws = _workspace(job, where, teachers, corruptions_from)
    if transfer is not None:
        ws.transfer[transfer_key(job, torch.get_num_threads())] = load_state_dict(io.BytesIO(transfer), ws.device)
    record = run_job(job, ws, Progress(1, quiet=True))
    return record, ws.profile


# ---- driver side ----------------------------------------------------------------------------------------------


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


def run_suite_ray(suite: Suite, out: Path, device_name: str = "auto", cache_dir: Path | None = None,
                  quiet: bool = False, stream=None, fail_fast: bool = False, data_dir: Path | None = None,
                  download: bool = False, corruptions_from: Path | None = None, address: str | None = None,
                  resources=None) -> RunResult:
    """`driver.run_suite` with every teacher, transfer set and job a Ray task (see the module docstring)."""
    from .driver import drive

    ray = import_ray()
    res = check_executor(resources or suite.executor)
    check_device(device_name, res)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    corruptions_from = Path(corruptions_from).resolve() if corruptions_from else None

    def executor(todo: list):
        return RayExecutor(ray, device_name, res, address, cache_dir, data_dir, download, corruptions_from)

    return drive(suite, out, executor, cache_dir, res.gpus_per_job > 0, quiet, stream, fail_fast, corruptions_from)


class RayExecutor:
    plans = True  # teachers and transfer examples are tasks of their own, trained and crafted once
    one_at_a_time = False

    def __init__(self, ray, device_name, res, address, cache_dir, data_dir, download, corruptions_from):
        self.ray, self.device_name, self.res, self.address = ray, device_name, res, address
        self.cache_dir, self.data_dir, self.download, self.corruptions_from = cache_dir, data_dir, download, \
            corruptions_from
        self.header = f"executor ray ({res.cpus_per_job} CPU, {res.gpus_per_job:g} GPU per job)"
        self.threads, self.slots = res.cpus_per_job, 1
        self.owned = False
        self.refs: dict = {}  # ObjectRef -> task
        self.seconds: dict = {}  # ObjectRef of a teacher's or transfer set's bytes -> ObjectRef of its seconds
        self.payloads: dict = {}  # task key -> ObjectRef of a teacher's payload or a transfer set's bytes
        self.data: dict = {}  # data config -> [ObjectRef] (in a list: a task fetches it only when it needs it)
        self.inputs: dict = {}  # data config -> ModelInput, or the error loading the data raised
        self.failed_now: list = []  # Done of tasks that failed before reaching the cluster
        self.plugins, self.runtime_env, self.shipped = [], None, None  # the plugins, and the folder carrying them

    def open(self, todo: list, progress) -> str:
        from ..data import load as data_mod
        from ..models.registry import model_input

        ray = self.ray
        self._ship_plugins()
        self.owned = connect(ray, self.address, self.runtime_env)
        if self.runtime_env and not self.owned:
            progress.say("note: Ray was initialised before this run, without the plugins' files: each node reads "
                         "them from where this process loaded them")
        if not fits_somewhere(ray, self.res):
            msg = (f"no node of the Ray cluster has {self.res.cpus_per_job} CPU(s) and {self.res.gpus_per_job:g} "
                   f"GPU(s) for one job; lower cpus_per_job / gpus_per_job")
            if not self.address:
                raise KdbenchError(msg)
            progress.say(f"warning: {msg} (or wait for the cluster to grow)")
        self.slots = slots(ray, self.res)
        self.fns = {TEACHER: ray.remote(teacher_task), "transfer": ray.remote(transfer_task), JOB: ray.remote(job_task)}
        for cfg in dict.fromkeys(j.data for j in todo):
            try:
                data = data_mod.load_data(cfg, self.data_dir, self.download)
            except Exception as e:  # noqa: BLE001 - the local executor fails each job with it too
                self.inputs[cfg] = e
                continue
            self.inputs[cfg] = model_input(data)
            self.data[cfg] = [ray.put(data)]
            del data
        return f"{self.slots} job(s) at a time"

    def _ship_plugins(self) -> None:
        import tempfile

        from ..core.plugins import plugin_sources

        self.plugins = plugin_sources(with_code=False)
        if self.plugins:
            self.shipped = tempfile.TemporaryDirectory(prefix="kdbench-plugins-")
            self.runtime_env = plugin_runtime_env(Path(self.shipped.name))

    def _options(self, name: str, returns: int = 1) -> dict:
        # the task's name is the worker's process title: `ps` shows which job a worker runs
        return {"name": name, "num_returns": returns, "num_cpus": self.res.cpus_per_job,
                "num_gpus": self.res.gpus_per_job, "max_retries": self.res.max_retries, "retry_exceptions": False}

    def _teacher(self, spec, job):
        """The payload of the teacher `spec` of `job` in the object store: trained by this run, loaded by the
        driver (pretrained), or read from the driver's cache."""
        key = teacher_key(teacher_config(spec, job, self.threads))
        ref = self.payloads.get(f"{TEACHER}:{key}")
        if ref is None:
            if job.pair.pretrained is not None:  # loaded by the driver, never trained or cached
                from ..training.pretrained import load_pretrained

                pre = job.stand_in(spec)
                model = load_pretrained(pre, self.inputs[job.data], "cpu", self.cache_dir)
                ref = self.ray.put(("module", pre.display_name(), model))
            else:
                path = teacher_path(self.cache_dir, key)
                ref = self.ray.put(("state", str(path), path.read_bytes()))
            self.payloads[f"{TEACHER}:{key}"] = ref
        return ref

    def _transfer(self, job):
        """The transfer examples of `job` in the object store (crafted by this run, or from the driver's cache)."""
        key = transfer_key(job, self.threads)
        ref = self.payloads.get(f"transfer:{key}")
        if ref is None:
            ref = self.payloads[f"transfer:{key}"] = self.ray.put(transfer_path(self.cache_dir, key).read_bytes())
        return ref

    def submit(self, task) -> None:
        job = task.job
        try:
            if isinstance(self.inputs[job.data], BaseException):
                raise self.inputs[job.data]
            where = (self.data[job.data], self.device_name, self.res.cpus_per_job, self.res.gpus_per_job,
                     self.plugins)
            if task.kind == TEACHER:
                path = teacher_path(self.cache_dir, task.cache_key)
                ref, seconds = self.fns[TEACHER].options(**self._options(f"training {task.label} [{task.cache_key}]",
                                                                         2)).remote(task.spec, job, where, str(path))
            elif task.kind == JOB:
                transfer = self._transfer(job) if needs_transfer(job) else None
                ref = self.fns[JOB].options(**self._options(f"{job.label()} [{job.job_id}]")).remote(
                    job, where, self.corruptions_from, transfer, *[self._teacher(s, job) for s in job.teacher_specs()])
            else:
                ref, seconds = self.fns["transfer"].options(**self._options(task.label, 2)).remote(
                    job, where, self._teacher(job.teacher_specs()[0], job))
        except Exception as e:  # noqa: BLE001 - the driver records it, as it would from the cluster
            self.failed_now.append(Done(task, error=e))
            return
        if task.kind != JOB:
            self.payloads[task.key], self.seconds[ref] = ref, seconds
        self.refs[ref] = task

    def _done(self, ref) -> Done:
        task = self.refs.pop(ref)
        try:
            value = self.ray.get(ref)
            if task.kind != JOB:
                value = (value[2] if task.kind == TEACHER else value, self.ray.get(self.seconds.pop(ref)))
        except Exception as e:  # noqa: BLE001 - the driver records it
            error, details = failure(self.ray, e, self.res.max_retries)
            return Done(task, error=error, details=details)
        return Done(task, value)

    def wait(self, timeout: float) -> list[Done]:
        if self.failed_now:
            done, self.failed_now = self.failed_now, []
            return done
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        return [self._done(ref) for ref in ready]

    def drain(self) -> list[Done]:
        ready = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)[0] if self.refs else []
        done, self.failed_now = self.failed_now, []
        return done + [self._done(ref) for ref in ready]

    def close(self) -> None:
        import contextlib

        for ref in list(self.refs):
            with contextlib.suppress(Exception):  # already finished or gone
                self.ray.cancel(ref, force=True)
        if self.owned:
            self.ray.shutdown()
        if self.shipped is not None:
            self.shipped.cleanup()
