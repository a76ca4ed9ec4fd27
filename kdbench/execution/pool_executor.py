"""The local executor's parallel mode (`run --workers N`): the tasks of a run on `workers` processes of this
machine.

Only who runs a job changes, never what it computes: a worker runs `job.run_job` on the job's config with
`threads` torch threads, so the records are those of `run --workers 1` with the same `--cpus-per-job`.

- The driver (driver.py) plans the work and alone writes records, failures/, the teacher cache and the cached
  transfer examples. A worker only computes: it trains a teacher (its state dict comes back), crafts a set of
  transfer examples (their bytes come back), or runs a job, reading its teachers and transfer examples from the
  cache folder (pretrained teachers it loads itself).
- Each worker keeps the data and the teachers of its earlier jobs in memory, and the transfer examples it
  crafted or read (`transfer_cache.trim_transfer` bounds them).
- Workers are forked from the driver where that is safe (`start_method`), so they start at once with all it
  has imported; elsewhere they are spawned, and spend ~3.5 s importing torch, torch._dynamo (which every torch
  optimizer loads) and torchattacks. A spawned worker imports the driver's plugins first, from the bytes the
  driver hashed (`plugins.plugin_sources`); entries a script or a test registered at run time (a method of its
  own, ...) reach spawned workers when they pickle by reference (`registry.portable_entries`).
- Workers ignore Ctrl-C (the driver writes what is finished, then stops them) and exit when the driver dies
  (killed), so a re-run never finds stray workers.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

from .run_plan import JOB, TEACHER, Done

# ---- worker side ----------------------------------------------------------------------------------------------

_WORKER: dict = {}


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:  # the driver is gone (killed): nothing will read what this worker computes
            os._exit(1)


def start_method(device, threads: int) -> str:
    """How the workers start: "fork" where forking the driver is safe, else "spawn".

    Forking is safe only when all of these hold:
    - Linux (macOS's system libraries are not fork-safe);
    - CPU jobs (CUDA cannot be used again in a forked child);
    - one torch thread per job (the child then never enters an OpenMP parallel region, and the driver's
      OpenMP thread pool, which does not survive a fork, is never needed);
    - no other thread in the driver (a lock another thread held would stay held in the child)."""
    import torch

    if (sys.platform.startswith("linux") and torch.device(device).type == "cpu" and threads == 1
            and threading.active_count() == 1):
        return "fork"
    return "spawn"


def _init_worker(device: str, threads: int, cache_dir: Path, data_dir, download: bool, corruptions_from,
                 parent: int, entries: list, plugins: list) -> None:
    import torch

    from ..core.plugins import import_sources
    from ..core.registry import adopt_entries
    from . import job  # noqa: F401 - every family a job uses registers its entries, before adopt_entries
    from .safety import forget_locks
    from .workspace import Workspace

    forget_locks()  # forked: the results lock is the driver's alone, released when it exits or is killed
    import_sources(plugins)  # the driver's plugins (a forked worker has them already)
    adopt_entries(entries)  # a script's own methods, models, ... (kdbench's own are there already)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and stops the workers
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    _WORKER["ws"] = Workspace(torch.device(device), cache_dir, data_dir=data_dir, download=download,
                              corruptions_from=corruptions_from)


def _workspace(job):
    from ..core.gpu import configure_backend, job_gpu

    ws = _WORKER["ws"]
    configure_backend(job_gpu(job, ws.device))
    return ws


def _teacher_task(spec, job):
    """Train one teacher; returns (its checkpoint bytes, seconds)."""
    from ..models.checkpoints import state_dict_bytes
    from ..training.teacher_cache import train_teacher

    ws = _workspace(job)
    data = ws.get_data(job.data)
    t0 = time.perf_counter()
    model = train_teacher(spec, job, data, ws.device)
    return state_dict_bytes(model), time.perf_counter() - t0


def _transfer_task(job):
    """Craft the transfer examples that `job` shares with the other students of its teacher and seed (the teacher
    is cached, or pretrained); returns (their bytes, seconds). This worker keeps them for its next jobs."""
    import torch

    from ..evaluation.transfer import craft_all
    from ..models.checkpoints import tensors_bytes
    from ..training.teacher_cache import get_teacher
    from .run_progress import Progress
    from .transfer_cache import transfer_key

    ws = _workspace(job)
    data = ws.get_data(job.data)
    teacher = get_teacher(job.teacher_specs()[0], job, ws, Progress(1, quiet=True))
    t0 = time.perf_counter()
    examples = craft_all(teacher, data, job.eval, job.seed)
    seconds = time.perf_counter() - t0
    ws.transfer[transfer_key(job, torch.get_num_threads())] = examples
    return tensors_bytes(examples), seconds


def _job_task(job):
    """Run one job; returns (record, where its time went)."""
    from .job import run_job
    from .run_progress import Progress
    from .transfer_cache import trim_transfer

    ws = _workspace(job)
    ws.profile = {}
    trim_transfer(ws.transfer)
    record = run_job(job, ws, Progress(1, quiet=True))
    return record, ws.profile


# ---- driver side ----------------------------------------------------------------------------------------------


def _remote_details(error: BaseException) -> str | None:
    """The worker's traceback of `error`, which concurrent.futures attaches as its cause."""
    cause = error.__cause__
    return str(cause) if cause is not None and type(cause).__name__ == "_RemoteTraceback" else None


class PoolExecutor:
    plans = True  # teachers and transfer examples are tasks of their own, trained and crafted once
    one_at_a_time = False

    def __init__(self, header: str, device, workers: int, threads: int, cache_dir: Path, data_dir, download: bool,
                 corruptions_from, fetch: bool = False):
        self.header, self.device, self.slots, self.threads = header, device, workers, threads
        self.cache_dir, self.data_dir, self.download, self.corruptions_from = cache_dir, data_dir, download, \
            corruptions_from
        self.fetch = fetch  # download the datasets once, here, rather than by every worker at the same time
        self.pool: ProcessPoolExecutor | None = None
        self.futures: dict[Future, object] = {}

    def open(self, todo: list, progress) -> str:
        from ..core.plugins import plugin_sources
        from ..core.registry import portable_entries

        if self.fetch:
            _fetch_data(todo, self.data_dir)
        ctx = get_context(start_method(self.device, self.threads))
        self.pool = ProcessPoolExecutor(self.slots, mp_context=ctx, initializer=_init_worker,
                                        initargs=(str(self.device), self.threads, self.cache_dir, self.data_dir,
                                                  self.download, self.corruptions_from, os.getpid(),
                                                  portable_entries(), plugin_sources()))
        return f"{self.slots} worker processes ({ctx.get_start_method()}ed), {self.threads} thread(s) each"

    def submit(self, task) -> None:
        if task.kind == TEACHER:
            fn, args = _teacher_task, (task.spec, task.job)
        else:
            fn, args = (_job_task if task.kind == JOB else _transfer_task), (task.job,)
        try:
            fut = self.pool.submit(fn, *args)
        except (BrokenProcessPool, RuntimeError) as e:  # the pool broke (a worker died): fail it at collection
            fut = Future()
            fut.set_exception(e)
        self.futures[fut] = task

    def _done(self, fut: Future) -> Done:
        task = self.futures.pop(fut)
        try:
            return Done(task, fut.result())
        except Exception as e:  # noqa: BLE001 - the driver records it
            return Done(task, error=e, details=_remote_details(e))

    def wait(self, timeout: float) -> list[Done]:
        done, _ = wait(list(self.futures), timeout=timeout, return_when=FIRST_COMPLETED)
        return [self._done(f) for f in done]

    def drain(self) -> list[Done]:
        return [self._done(f) for f in list(self.futures) if f.done() and not f.cancelled()]

    def close(self) -> None:
        """Cancel what has not started and end the worker processes now (a running task's work is dropped)."""
        if self.pool is None:
            return
        processes = list((self.pool._processes or {}).values())  # noqa: SLF001 - no public way to stop running tasks
        self.pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if p.is_alive():
                p.terminate()
        for p in processes:
            p.join(timeout=5)


def _fetch_data(jobs: list, data_dir) -> None:
    """Load (and so download) each dataset of `jobs` once; a failure is left to the jobs, which report it."""
    from ..data.load import load_data

    for cfg in dict.fromkeys(j.data for j in jobs):
        try:
            load_data(cfg, data_dir, True)
        except Exception:  # noqa: BLE001, S112 - every job of this dataset fails with the same error, recorded
            continue
