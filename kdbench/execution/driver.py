"""Suite -> jobs -> records: the one driver of every run, whichever executor runs the jobs.

The driver (the `kdbench run` process) owns the run: the pre-flight checks (writable results and cache folders),
the results folder's lock, skipping the jobs whose record is there (a re-run resumes, a killed run resumes where
it stopped), the plan of the work (run_plan.py: teachers first, then the transfer examples the students share,
then the jobs), and everything written: records, failures/, the teacher cache and the cached transfer examples,
atomically. An executor only runs tasks and hands back their results:

- inline_executor.py: one job after another in this process (`run --workers 1`);
- pool_executor.py: worker processes of this machine (`run --workers N`);
- ray_executor.py: tasks on a Ray cluster (`run --executor ray`).

An executor has `header` (the first progress line's end), `threads` (torch threads per job), `slots` (tasks at
once), `plans` (whether teachers and transfer examples are tasks of their own, else the jobs train and craft
them), `one_at_a_time` (it says when each job starts), and open(todo, progress) -> a line of what it runs on,
submit(task), wait(timeout) -> [Done], drain() -> the Done of what finished (after Ctrl-C), close().

A job computes the same record whoever runs it (job.py), so the records do not depend on the executor.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..core.atomic import atomic_write_bytes
from ..records.store import load_records
from ..training.teacher_cache import save_teacher
from .run_output import RunResult, fail_job, record_result
from .run_plan import JOB, TEACHER, Done, plan_jobs, plan_run
from .run_progress import HEARTBEAT_SECONDS, Progress
from .transfer_cache import transfer_path
from .workspace import default_cache_dir


def run_suite(suite, out: Path, device: torch.device, cache_dir: Path | None = None, quiet: bool = False,
              stream=None, fail_fast: bool = False, data_dir: Path | None = None, download: bool = False,
              corruptions_from: Path | None = None, workers: int = 1, threads: int | None = None,
              workers_note: str = "") -> RunResult:
    """Run every job of `suite` whose record is not in `out` yet, on this machine. A job that raises (a diverging
    loss, a bad checkpoint, ...) is recorded under failures/ and the rest of the suite goes on (or stops,
    `fail_fast`).

    `workers` > 1 runs the jobs on that many worker processes (pool_executor.py), else one at a time in this
    process. `threads`: torch threads per job (None: as torch is set now); the numbers depend on it.
    `workers_note`: why that many workers (shown in the progress line)."""
    from ..core.gpu import configure_backend

    cuda = device.type == "cuda"
    configure_backend(suite.gpu if cuda else None)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()

    def executor(todo: list):
        n = max(1, min(workers, len(todo)))
        header = f"device {device}, " + (f"{n} workers" if n > 1 else "1 worker") + (
            f" ({workers_note})" if workers_note else "")
        if n > 1:
            from .pool_executor import PoolExecutor

            return PoolExecutor(header, device, n, threads or torch.get_num_threads(), cache_dir, data_dir, download,
                                corruptions_from, fetch=download or suite.data.download)
        from .inline_executor import InlineExecutor

        return InlineExecutor(header, device, threads, cache_dir, data_dir, download, corruptions_from)

    return drive(suite, out, executor, cache_dir, cuda, quiet, stream, fail_fast, corruptions_from)


def drive(suite, out: Path, executor_for, cache_dir: Path, cuda: bool, quiet: bool = False, stream=None,
          fail_fast: bool = False, corruptions_from: Path | None = None) -> RunResult:
    """Run the jobs of `suite` (for CUDA if `cuda`) missing from `out` on `executor_for(todo)`."""
    from ..evaluation.cifar_c import with_cifar_c
    from .safety import check_writable, results_lock

    t_start = time.perf_counter()
    out = Path(out)
    suite = with_cifar_c(suite, corruptions_from)
    check_writable(out, "results folder")
    check_writable(cache_dir, "cache folder")
    with results_lock(out):
        jobs = suite.jobs(cuda)
        done = {r["job_id"] for r in load_records(out)[0]}
        todo = [j for j in jobs if j.job_id not in done]
        result = RunResult(len(jobs), len(jobs) - len(todo), 0)
        progress = Progress(len(jobs), quiet, stream, skipped=result.skipped)
        executor = executor_for(todo)
        progress.say(f"suite {suite.name}: {len(jobs)} jobs, {result.skipped} already done, {executor.header}")
        if todo:
            _Run(executor, todo, out, cache_dir, progress, fail_fast, result).go()
    result.seconds = time.perf_counter() - t_start
    return result


class _Run:
    """The driver's bookkeeping of one run: what waits, what runs, what came back."""

    def __init__(self, executor, todo, out, cache_dir, progress, fail_fast, result):
        self.executor, self.todo, self.out, self.cache_dir = executor, todo, out, cache_dir
        self.progress, self.fail_fast, self.result = progress, fail_fast, result
        plan = plan_run(todo, cache_dir, executor.threads) if executor.plans else plan_jobs(todo)
        self.plan, self.pending, self.ready = plan, list(plan.tasks), set(plan.ready)
        self.errors: dict = {}  # key -> (error, details) of a teacher or transfer set that failed
        self.running = 0  # tasks submitted, not finished
        self.stop = False

    def go(self) -> None:
        ex, progress = self.executor, self.progress
        try:
            what = ex.open(self.todo, progress)
            if ex.plans:
                progress.say(f"    {what}; {self.plan.teachers} teacher(s) to train first, {self.plan.transfers} "
                             "set(s) of transfer examples to craft")
            self.hand_out()
            while self.running and not self.stop:
                done = ex.wait(5.0)
                for d in done:
                    self.collect(d)
                self.hand_out()
                if not done and time.perf_counter() - progress.last > HEARTBEAT_SECONDS:
                    self.status("still running")
        except KeyboardInterrupt:
            # keep what is finished: write every record that is ready now, then stop the executor
            for d in ex.drain():
                self.collect(d)
            progress.say(f"interrupted: {self.result.ran} job(s) finished and recorded; the rest resume on the next "
                         "run")
            raise
        finally:
            ex.close()

    def hand_out(self) -> None:
        """Submit each waiting task whose teachers and transfer examples are ready, in the plan's order; fail the
        jobs of a teacher or transfer set that failed."""
        for task in list(self.pending):
            if self.stop:
                return
            bad = next((k for k in task.after if k in self.errors), None)
            if bad is not None:
                self.pending.remove(task)
                if task.kind == JOB:
                    self.fail(task.job, *self.errors[bad])
                else:
                    self.errors[task.key] = self.errors[bad]
            elif all(k in self.ready for k in task.after):
                self.pending.remove(task)
                if task.kind == TEACHER:
                    self.progress.say(f"    training {task.label}")
                self.executor.submit(task)
                self.running += 1

    def collect(self, d: Done) -> None:
        task, progress, result = d.task, self.progress, self.result
        self.running -= 1
        if task.kind == JOB:
            if d.error is not None:
                self.fail(task.job, d.error, d.details)
                return
            record, profile = d.value
            record_result(self.out, record)
            for k, v in profile.items():
                result.profile[k] = result.profile.get(k, 0.0) + v
            result.ran += 1
            progress.done += 1
            if not self.executor.one_at_a_time:
                self.status(f"{task.label} ({record['train_seconds'] + record['eval_seconds']:.1f}s)")
            return
        if d.error is not None:  # every job waiting for it fails with the same error
            self.errors[task.key] = (d.error, d.details)
            progress.say(f"    {task.label} FAILED: {type(d.error).__name__}: {d.error}")
            return
        blob, seconds = d.value
        if task.kind == TEACHER:
            save_teacher(self.cache_dir, task.cache_key, task.cfg, blob)
        else:
            atomic_write_bytes(transfer_path(self.cache_dir, task.cache_key), blob)
        spent = "teacher training" if task.kind == TEACHER else "eval: transfer"
        result.profile[spent] = result.profile.get(spent, 0.0) + seconds
        self.ready.add(task.key)
        progress.tasks += 1
        progress.say(f"    {task.label} {'trained' if task.kind == TEACHER else 'crafted'} ({seconds:.1f}s), cached")

    def fail(self, job, error: BaseException, details: str | None) -> None:
        self.result.failed.append(fail_job(self.out, job, error, self.progress, details))
        self.progress.done += 1
        self.progress.failed += 1
        self.stop = self.stop or self.fail_fast

    def status(self, what: str) -> None:
        self.progress.status(what, min(self.executor.slots, self.running))
