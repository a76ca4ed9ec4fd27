"""What a run tells while it runs: job i of n, what finished, what failed, an ETA; a line at least every
`HEARTBEAT_SECONDS` while jobs run; nothing with `--quiet`."""

from __future__ import annotations

import sys
import time

HEARTBEAT_SECONDS = 60.0  # a progress line at least this often while jobs run


def fmt_seconds(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class Progress:
    """Counts of a run of `total` jobs, `skipped` of them finished by an earlier run. `done`: jobs of this run
    finished (recorded or failed), `failed` of them; `tasks`: the other work finished (teachers trained,
    transfer examples crafted), which the ETA counts as well."""

    def __init__(self, total: int, quiet: bool, stream=None, skipped: int = 0):
        self.total, self.quiet, self.stream, self.skipped = total, quiet, stream or sys.stderr, skipped
        self.start = self.last = time.perf_counter()
        self.done = self.failed = self.tasks = 0

    def say(self, msg: str) -> None:
        self.last = time.perf_counter()
        if not self.quiet:
            print(msg, file=self.stream, flush=True)

    def eta(self) -> str:
        left = self.total - self.skipped - self.done
        if not self.done or not left:
            return ""
        return f", ETA {fmt_seconds((time.perf_counter() - self.start) / (self.done + self.tasks) * left)}"

    def job(self, i: int, label: str) -> None:
        """Job `i` starts."""
        self.say(f"[job {i}/{self.total}{self.eta()}] {label}")

    def started(self, label: str) -> None:
        """The next job starts (jobs run one at a time)."""
        self.job(self.skipped + self.done + 1, label)

    def status(self, what: str, running: int) -> None:
        """Where the run stands (jobs run at once): done, running, failed; then `what` happened."""
        finished = self.skipped + self.done - self.failed
        self.say(f"[job {finished}/{self.total} done, {running} running, {self.failed} failed{self.eta()}] {what}")
