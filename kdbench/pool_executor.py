"""The local executor's parallel mode: the jobs of a run on `workers` processes of this machine.

Only who runs a job changes, never what it computes: a worker runs `runner.run_job` on the job's config with
`threads` torch threads, so the records are those of `run --workers 1` with the same `--cpus-per-job`.

- The driver (the `kdbench run` process) holds the results folder's lock and alone writes records, failures/
  and the teacher cache, atomically, with the sequential executor's functions. A worker only computes.
- Teachers come first: each teacher the remaining jobs need and the cache lacks is trained once, by one worker,
  and its state dict comes back to the driver, which caches it. A job is handed to the pool once all its
  teachers are cached; the worker reads them from the cache (pretrained teachers it loads itself).
- Transfer examples (transfer.py) come next: each set the remaining students share (one per teacher, seed and
  evaluation) and the cache lacks is crafted once, by one worker, as soon as its teacher is cached; the driver
  writes it into the cache folder, and the students' jobs start once it is there and read it.
- Each worker keeps the data and the teachers of its earlier jobs in memory, and the transfer examples it
  crafted or read (`runner.trim_transfer` bounds them).
- Workers are forked from the driver where that is safe (`start_method`), so they start at once with all it
  has imported; elsewhere they are spawned, and spend ~3.5 s importing torch, torch._dynamo (which every torch
  optimizer loads) and torchattacks. Entries a script or a test registered at run time (a method of its own,
  ...) reach spawned workers when they pickle by reference (`registry.portable_entries`).
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
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

HEARTBEAT_SECONDS = 60.0  # a progress line at least this often while jobs run

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
                 parent: int, entries: list) -> None:
    import torch

    from .registry import adopt_entries
    from .runner import Workspace
    from .safety import forget_locks

    forget_locks()  # forked: the results lock is the driver's alone, released when it exits or is killed
    adopt_entries(entries)  # after `runner` imported every family: a script's own methods, models, ...
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and stops the workers
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    _WORKER["ws"] = Workspace(torch.device(device), cache_dir, data_dir=data_dir, download=download,
                              corruptions_from=corruptions_from)


def _teacher_task(spec, job):
    """Train one teacher; returns (its checkpoint bytes, seconds)."""
    from .gpu import configure_backend
    from .runner import job_gpu, state_dict_bytes, train_teacher

    ws = _WORKER["ws"]
    configure_backend(job_gpu(job, ws.device))
    data = ws.get_data(job.data)
    t0 = time.perf_counter()
    model = train_teacher(spec, job, data, ws.device)
    return state_dict_bytes(model), time.perf_counter() - t0


def _transfer_task(job):
    """Craft the transfer examples that `job` shares with the other students of its teacher and seed (the teacher
    is cached, or pretrained); returns (their bytes, seconds). This worker keeps them for its next jobs."""
    import torch

    from .gpu import configure_backend
    from .runner import Progress, get_teacher, job_gpu
    from .transfer import craft_all, examples_bytes, transfer_key

    ws = _WORKER["ws"]
    configure_backend(job_gpu(job, ws.device))
    data = ws.get_data(job.data)
    teacher = get_teacher(job.teacher_specs()[0], job, ws, Progress(1, quiet=True))
    t0 = time.perf_counter()
    examples = craft_all(teacher, data, job.eval, job.seed)
    seconds = time.perf_counter() - t0
    ws.transfer[transfer_key(job, torch.get_num_threads())] = examples
    return examples_bytes(examples), seconds


def _job_task(job):
    """Run one job; returns (record, where its time went)."""
    from .gpu import configure_backend
    from .runner import Progress, job_gpu, run_job, trim_transfer

    ws = _WORKER["ws"]
    configure_backend(job_gpu(job, ws.device))
    ws.profile = {}
    trim_transfer(ws.transfer)
    record = run_job(job, ws, Progress(1, quiet=True))
    return record, ws.profile


# ---- driver side ----------------------------------------------------------------------------------------------


@dataclass
class _Teacher:
    """What jobs wait for: a teacher to train, or transfer examples to craft (after the teachers `after`)."""

    label: str
    cfg: dict
    ready: bool = False
    error: BaseException | None = None
    details: str | None = None
    after: tuple = ()  # keys of the teachers this must wait for
    job: object = None  # transfer examples: a job they are crafted for, until submitted


@dataclass
class PoolOutcome:
    ran: int = 0
    failed: list = field(default_factory=list)  # (job, reason)
    profile: dict = field(default_factory=dict)


def _remote_details(error: BaseException) -> str | None:
    """The worker's traceback of `error`, which concurrent.futures attaches as its cause."""
    cause = error.__cause__
    return str(cause) if cause is not None and type(cause).__name__ == "_RemoteTraceback" else None


def teacher_cost(spec, train_cfg, memo: dict | None = None) -> int:
    """A relative cost of training the teacher `spec`: epochs x forward passes per step (estimate.py counts them
    on a stand-in model, the inner attack of an adversarial teacher included). `memo` keeps the counts of the
    kinds seen so far."""
    from .estimate import teacher_passes

    memo = {} if memo is None else memo
    key = (spec.kind, repr(spec.params), repr(train_cfg))
    if key not in memo:
        memo[key] = teacher_passes(spec.kind, spec.params, train_cfg)
    return train_cfg.teacher_epochs * memo[key]


def run_pool(todo: list, out: Path, device, workers: int, threads: int, cache_dir: Path, progress,
             fail_fast: bool, data_dir, download: bool, corruptions_from) -> PoolOutcome:
    """Run the jobs `todo` on `workers` processes (see the module docstring); records go to `out`."""
    from .registry import portable_entries
    from .records import atomic_write_bytes
    from .runner import fail_job, record_result, save_teacher, teacher_config, teacher_path
    from .teachers import teacher_key
    from .transfer import needs_transfer, transfer_key, transfer_path

    result = PoolOutcome()
    teachers: dict[str, _Teacher] = {}
    waiting: list = []  # (job, teacher keys) not yet handed to the pool
    futures: dict[Future, tuple] = {}  # -> ("teacher", key) | ("job", job)
    stop = False

    def fail(job, error: BaseException, details: str | None) -> None:
        nonlocal stop
        result.failed.append(fail_job(out, job, error, progress, details))
        progress.done += 1
        stop = stop or fail_fast

    teachers_trained = 0  # tasks of this run as much as its jobs: the ETA counts them

    def line(what: str) -> None:
        elapsed = time.perf_counter() - progress.start
        finished = result.ran + len(result.failed)
        left = len(todo) - finished
        tasks_done = finished + teachers_trained  # the time so far went to the teachers too
        eta = f", ETA {elapsed / tasks_done * left:.0f}s" if finished and left else ""
        progress.say(f"[job {progress.total - left}/{progress.total}{eta}] {what}")

    ctx = get_context(start_method(device, threads))
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(str(device), threads, cache_dir, data_dir, download, corruptions_from,
                                         os.getpid(), portable_entries()))

    def submit(fn, *args):
        try:
            return pool.submit(fn, *args)
        except (BrokenProcessPool, RuntimeError) as e:  # the pool broke (a worker died): fail it at collection
            f: Future = Future()
            f.set_exception(e)
            return f

    try:
        to_train = []  # (spec, job, key) of each teacher the cache lacks
        for job in todo:
            keys = []
            for spec in job.teacher_specs():
                if job.pair.pretrained is not None:  # loaded by the worker, never trained or cached
                    continue
                cfg = teacher_config(spec, job, threads)
                key = teacher_key(cfg)
                keys.append(key)
                if key in teachers:
                    continue
                t = teachers[key] = _Teacher(f"{spec.arch} ({spec.kind}) seed {spec.seed}", cfg)
                if teacher_path(cache_dir, key).is_file():
                    t.ready = True
                else:
                    to_train.append((spec, job, key))
            if needs_transfer(job):  # crafted once, by one worker, for every student of this teacher and seed
                key = "transfer:" + transfer_key(job, threads)
                if key not in teachers:
                    spec = job.teacher_specs()[0]
                    ready = transfer_path(cache_dir, key[len("transfer:"):]).is_file()
                    teachers[key] = _Teacher(f"transfer examples of {spec.arch} ({spec.kind}) seed {job.seed}", {},
                                             ready, after=tuple(keys[:1]), job=None if ready else job)
                keys = [*keys, key]
            waiting.append((job, keys))
        # the costliest teachers first: the jobs waiting for them are the costliest too (adversarial teachers
        # and ARD/RSLAD students), so they start early and cheaper jobs fill the end, where a worker would idle
        passes: dict = {}
        to_train.sort(key=lambda item: -teacher_cost(item[0], item[1].train, passes))
        for spec, job, key in to_train:
            futures[submit(_teacher_task, spec, job)] = ("teacher", key)
        n_train = len(to_train)
        n_craft = sum(1 for t in teachers.values() if t.job is not None)
        progress.say(f"    {workers} worker processes ({ctx.get_start_method()}ed), {threads} thread(s) each; "
                     f"{n_train} teacher(s) to train first, {n_craft} set(s) of transfer examples to craft")

        def hand_out() -> None:
            for key, t in teachers.items():  # transfer examples, once their teacher is cached
                if t.job is None or stop:
                    continue
                bad = next((teachers[k] for k in t.after if teachers[k].error is not None), None)
                if bad is not None:
                    t.error, t.details, t.job = bad.error, bad.details, None
                elif all(teachers[k].ready for k in t.after):
                    futures[submit(_transfer_task, t.job)] = ("transfer", key)
                    t.job = None
            for item in list(waiting):
                job, keys = item
                if stop:
                    return
                bad = next((teachers[k] for k in keys if teachers[k].error is not None), None)
                if bad is not None:
                    waiting.remove(item)
                    fail(job, bad.error, bad.details)
                elif all(teachers[k].ready for k in keys):
                    waiting.remove(item)
                    futures[submit(_job_task, job)] = ("job", job)

        hand_out()
        last = time.perf_counter()
        while futures and not stop:
            done, _ = wait(list(futures), timeout=5.0, return_when=FIRST_COMPLETED)
            for fut in done:
                kind, what = futures.pop(fut)
                if kind in ("teacher", "transfer"):
                    t = teachers[what]
                    try:
                        blob, seconds = fut.result()
                    except Exception as e:  # noqa: BLE001 - every job of this teacher fails with it
                        t.error, t.details = e, _remote_details(e)
                        progress.say(f"    {'teacher ' if kind == 'teacher' else ''}{t.label} FAILED: "
                                     f"{type(e).__name__}: {e}")
                        continue
                    if kind == "teacher":
                        save_teacher(cache_dir, what, t.cfg, blob)
                    else:
                        atomic_write_bytes(transfer_path(cache_dir, what[len("transfer:"):]), blob)
                    spent = "teacher training" if kind == "teacher" else "eval: transfer"
                    result.profile[spent] = result.profile.get(spent, 0.0) + seconds
                    t.ready = True
                    teachers_trained += 1
                    progress.say(f"    {'teacher ' if kind == 'teacher' else ''}{t.label} "
                                 f"{'trained' if kind == 'teacher' else 'crafted'} ({seconds:.1f}s), cached")
                else:
                    try:
                        record, profile = fut.result()
                    except Exception as e:  # noqa: BLE001 - any job error is recorded; the grid goes on
                        fail(what, e, _remote_details(e))
                        continue
                    record_result(out, record)
                    for k, v in profile.items():
                        result.profile[k] = result.profile.get(k, 0.0) + v
                    result.ran += 1
                    progress.done += 1
                    line(f"done: {what.label()} ({record['train_seconds'] + record['eval_seconds']:.1f}s)")
                last = time.perf_counter()
            hand_out()
            if not done and time.perf_counter() - last > HEARTBEAT_SECONDS:
                line("still running")
                last = time.perf_counter()
    except KeyboardInterrupt:
        # keep what is finished: write every record that is ready now, then stop the workers
        for fut, (kind, what) in list(futures.items()):
            if kind == "job" and fut.done() and not fut.cancelled() and fut.exception() is None:
                record_result(out, fut.result()[0])
                result.ran += 1
        progress.say(f"interrupted: {result.ran} job(s) finished and recorded; the rest resume on the next run")
        raise  # `finally` stops the workers
    finally:
        _stop(pool)
    return result


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the worker processes now (a running job's work is dropped)."""
    processes = list((pool._processes or {}).values())  # noqa: SLF001 - no public way to stop running tasks
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(timeout=5)
