"""Guards around a run's output: a pre-flight check that the results and cache folders are writable (before any
training), and an exclusive lock so two runs never write the same results folder.

The lock is `<out>/.kdbench.lock`, held with fcntl.flock for the whole run; a second run on the same folder
exits at once with a clear message (exit code 2) rather than waiting. The kernel releases the lock when the
process dies, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from ..core.errors import KdbenchError

MIN_FREE_BYTES = 50 * 2**20  # refuse to start with less free space than this in the output folder
LOCK_NAME = ".kdbench.lock"
_HELD: set[int] = set()  # the descriptors of the locks this process holds (see forget_locks)


def check_writable(folder: Path, what: str) -> None:
    """Create `folder` if needed and prove that a file can be written there; one-line error otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".kdbench-write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise KdbenchError(f"{what} {str(folder)!r} is not writable: {e.strerror or e}") from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise KdbenchError(f"{what} {str(folder)!r} has only {free / 2**20:.0f} MiB free; "
                           f"at least {MIN_FREE_BYTES / 2**20:.0f} MiB are needed")


@contextlib.contextmanager
def results_lock(out: Path):
    """Hold the results folder's lock, or fail at once if another run holds it."""
    path = Path(out) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise KdbenchError(f"results folder {str(out)!r} is in use by another kdbench run (pid {holder}); "
                               "wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD.add(fd)
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)


def forget_locks() -> None:
    """In a process forked from a lock holder: close the inherited lock descriptors, so that the lock is released
    as soon as the holder exits or dies, whatever this process still does (the holder's own descriptors keep it
    held until then)."""
    for fd in list(_HELD):
        os.close(fd)
    _HELD.clear()
