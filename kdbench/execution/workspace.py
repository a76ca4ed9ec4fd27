"""What the jobs run in one process share: data on the device, trained teachers, transfer examples, the timings
of where the time went; and the process settings around them (cache folder, torch threads)."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import load as data_mod
from ..data.registry import TensorData


def default_cache_dir() -> Path:
    return Path(os.environ.get("KDBENCH_CACHE", Path.home() / ".cache" / "kdbench"))


@dataclass
class Workspace:
    """Everything shared by the jobs of one process: data on the device, the teacher cache, timings."""

    device: torch.device
    cache_dir: Path
    data: dict = field(default_factory=dict)
    teachers: dict = field(default_factory=dict)
    teacher_errors: dict = field(default_factory=dict)
    transfer: dict = field(default_factory=dict)  # transfer_cache.transfer_key -> {eps: x_adv}
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
