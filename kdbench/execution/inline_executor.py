"""The local executor's one-process mode (`run --workers 1`): the jobs one after another in this process, on
`threads` torch threads (this process's setting is restored after the run).

No task of its own trains a teacher or crafts transfer examples: a job trains the teachers it needs and the
cache lacks, and `evaluate` crafts the transfer examples of its teacher and seed; both stay in this process's
memory (workspace.py) for the later jobs."""

from __future__ import annotations

from collections import deque

from .job import run_job
from .run_plan import Done
from .workspace import Workspace, torch_threads


class InlineExecutor:
    plans = False  # the jobs train and craft what they need, here
    one_at_a_time = True
    slots = 1

    def __init__(self, header: str, device, threads: int | None, cache_dir, data_dir, download: bool,
                 corruptions_from):
        self.header, self.threads = header, threads
        self.ws = Workspace(device, cache_dir, data_dir=data_dir, download=download, corruptions_from=corruptions_from)
        self.queue: deque = deque()
        self.progress = None
        self._threads = None

    def open(self, todo: list, progress) -> str:
        self.progress = progress
        self._threads = torch_threads(self.threads)
        self._threads.__enter__()
        return "this process"

    def submit(self, task) -> None:
        self.queue.append(task)

    def wait(self, timeout: float) -> list[Done]:
        """Run the next job now (whatever `timeout`)."""
        task = self.queue.popleft()
        self.progress.started(task.label)
        self.ws.profile = {}
        try:
            record = run_job(task.job, self.ws, self.progress)
        except Exception as e:  # noqa: BLE001 - any job error is recorded; the grid goes on
            return [Done(task, error=e)]
        return [Done(task, (record, self.ws.profile))]

    def drain(self) -> list[Done]:
        return []

    def close(self) -> None:
        self.queue.clear()
        if self._threads is not None:
            self._threads.__exit__(None, None, None)
            self._threads = None
