"""How many jobs `run --workers auto` runs at once on the CPU: one per `cpus_per_job` usable cores, and no more
than the available memory holds.

Each worker process holds its own copy of what its jobs need, so a worker's memory is estimated from the suite
before anything runs (each architecture built once and run on one example to read its layer sizes):
- the process itself (torch, torchattacks and kdbench imported, the digits loaded: 358 MiB of private memory,
  measured; counted as `PROCESS_BASE`);
- the data: train and test images as float32 tensors;
- every teacher of the suite (a worker keeps the teachers of its earlier jobs), and the largest student four
  times over (weights, gradients, the optimizer's two moments), plus a batch-norm-folded copy of each kind of
  model for the attacks;
- activations: the largest model's layer outputs per example (summed over its layers, as a backward pass keeps
  them) times the larger of the training and evaluation batch, with a margin (`ACTIVATION_MARGIN`: backward
  passes of cnn-large, ResNet-18 and MobileNetV2 on the CPU used 0.8-1.3x that sum, measured);
- transfer examples: one set per (first teacher, seed) of the students evaluated on them, at most
  `transfer_cache.TRANSFER_BUDGET` kept.
The available memory is /proc/meminfo's MemAvailable (else os.sysconf's available pages), lowered to a cgroup's
limit where one is set (containers). The cap keeps the estimate of all workers within `MEMORY_SHARE` of it.
`--workers N` is taken as given.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

MIB = 2**20
PROCESS_BASE = 400 * MIB
ACTIVATION_MARGIN = 1.25
MEMORY_SHARE = 0.9
FLOAT = 4  # bytes of a float32


@dataclass(frozen=True)
class WorkerMemory:
    """Estimated bytes one worker process holds at its peak."""

    data: int
    models: int
    activations: int
    transfer: int
    base: int = PROCESS_BASE

    @property
    def total(self) -> int:
        return self.base + self.data + self.models + self.activations + self.transfer


@functools.lru_cache(maxsize=64)
def model_size(arch: str, shape: tuple[int, int, int], num_classes: int) -> tuple[int, int]:
    """(parameters, bytes of layer outputs per example in a forward pass) of `arch`: built and run once on one
    example (a second for WRN-34-10 on a CPU; milliseconds for the small models)."""
    from ..models.registry import ModelInput, build_model

    inp = ModelInput(shape, num_classes, (0.5,) * shape[0], (0.25,) * shape[0])
    model = build_model(arch, inp).eval()  # eval: a batch of one; the outputs have the shapes of training's
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += sum(t.numel() for t in (output if isinstance(output, (tuple, list)) else (output,))
                     if isinstance(t, torch.Tensor))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    finally:
        for h in handles:
            h.remove()
    return sum(p.numel() for p in model.parameters()), total * FLOAT


def worker_memory(suite) -> WorkerMemory:
    """The peak memory of one worker running the jobs of `suite` (see the module docstring)."""
    from .estimate import data_shape
    from .transfer_cache import TRANSFER_BUDGET, needs_transfer

    ds = data_shape(suite)
    example = math.prod(ds.shape) * FLOAT
    teachers, students = set(), set()
    jobs = suite.jobs()
    for job in jobs:
        if not job.is_teacher:
            students.add(job.pair.student)
        for spec in job.teacher_specs():
            arch = job.stand_in(spec).arch if job.pair.pretrained is not None else spec.arch
            if arch:  # a RobustBench teacher has no kdbench architecture to measure
                teachers.add((arch, spec.kind, spec.seed, spec.params))
    sizes = {a: model_size(a, ds.shape, ds.num_classes) for a in {t[0] for t in teachers} | students}
    weights = sum(sizes[t[0]][0] for t in teachers) + max((5 * sizes[s][0] for s in students), default=0)
    weights += max((sizes[t[0]][0] for t in teachers), default=0)  # a folded copy for the transfer attack
    batch = max(max(j.train.batch_size for j in jobs), suite.eval.batch_size)  # a method's own batch included
    per_example = max((act for _, act in sizes.values()), default=0)
    # one set per (first teacher, student seed): a teacher's seed is its students' (extra ensemble members have
    # seeds of their own, but only the first teacher crafts), so this is no more than one per teacher
    sets = len({(j.teacher_specs()[0], j.seed) for j in jobs if needs_transfer(j)})
    one_set = ds.n_test * example * len(suite.eval.eps)
    return WorkerMemory(data=(ds.n_train + ds.n_test) * (example + 8), models=weights * FLOAT,
                        activations=int(per_example * min(batch, max(ds.n_train, ds.n_test)) * ACTIVATION_MARGIN),
                        transfer=min(sets * one_set, TRANSFER_BUDGET + one_set))


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int | None:
    """Bytes of memory available to new processes now (None where the system does not say)."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if avail is None and hasattr(os, "sysconf"):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            avail = None
    for limit, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap, now = _read_int(limit), _read_int(used)
        if cap is not None and now is not None and cap < 2**60:
            avail = cap - now if avail is None else min(avail, cap - now)
    return avail


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def memory_capped_workers(workers: int, suite, available: int | None = None) -> tuple[int, str]:
    """`workers` (one per `cpus_per_job` cores) lowered to what the available memory holds, and the note the
    progress line shows."""
    if workers <= 1:
        return workers, ""
    available = available_memory() if available is None else available
    if available is None:
        return workers, f"auto: {workers} by the cores; the available memory is unknown"
    need = worker_memory(suite).total
    fits = max(1, int(available * MEMORY_SHARE // need))
    if fits < workers:
        return fits, (f"auto: memory for {fits} of the {workers} the cores allow, ~{_gib(need)} per worker of "
                      f"{_gib(available)} available; --workers N overrides")
    return workers, f"auto: by the cores; ~{_gib(need)} per worker of {_gib(available)} available"


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def local_workers(requested, device, cpus_per_job: int) -> int:
    """How many jobs the local executor runs at once: `requested`, or for 'auto' (None) one per `cpus_per_job`
    usable cores on the CPU and one on CUDA (a GPU is shared only when asked)."""
    if requested not in (None, "auto"):
        return requested
    return 1 if device.type == "cuda" else max(1, usable_cores() // cpus_per_job)
