"""GPU speed settings, the suite's `[gpu]` table, and where a model is placed. The table applies only to jobs
that run on CUDA; on the CPU models always use the channels-last layout (see `place`).

- `autocast`: mixed precision for training forward and backward passes (`torch.autocast`): "bf16" (default;
  no loss scaling needed), "fp16" (with a gradient scaler), or "off". Softmax, log-softmax, KL and
  cross-entropy run in float32 under autocast (PyTorch's autocast op lists). The inner PGD of adversarial
  training and adversarial distillation, every evaluation attack, corruption and metric run in float32.
- `channels_last`: convolutional models in the NHWC memory layout (faster convolutions on tensor cores).
- `cudnn_benchmark`: let cuDNN time its convolution algorithms and keep the fastest (faster, not
  bit-for-bit deterministic between runs).

A job that runs on CUDA carries these settings in its config, so they enter its job id (a bf16 run and a
float32 run of the same job are two records); a CPU job's config and id do not mention them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .errors import KdbenchError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


@dataclass(frozen=True)
class GpuConfig:
    autocast: str = "bf16"  # bf16 | fp16 | off
    channels_last: bool = True
    cudnn_benchmark: bool = True


def check_gpu(cfg: GpuConfig) -> GpuConfig:
    if cfg.autocast not in AUTOCAST_DTYPES:
        raise KdbenchError(f"gpu.autocast {cfg.autocast!r} is unknown; choose from: {', '.join(AUTOCAST_DTYPES)}")
    return cfg


def configure_backend(cfg: GpuConfig | None) -> None:
    """Process-wide settings for a run on CUDA (`cfg` None: a CPU run, nothing to set)."""
    if cfg is not None:
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark


def place(model: nn.Module, device: torch.device, cfg: GpuConfig | None) -> nn.Module:
    """`model` on `device`, in the channels-last (NHWC) memory layout on the CPU, and on CUDA where `cfg` asks
    for it. On the CPU, oneDNN's convolution, batch-norm and max-pool kernels are faster in NHWC: a training
    step of the digits CNNs costs about 0.75x, an attack step about 0.8x of the NCHW one (the numbers change in
    their last bits, which the evaluation protocol number in every job id accounts for)."""
    model = model.to(device)
    if cfg.channels_last if cfg is not None else device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


def autocast_dtype(cfg: GpuConfig | None) -> torch.dtype | None:
    """The dtype training runs its forward passes in, or None for full precision."""
    return None if cfg is None else AUTOCAST_DTYPES[cfg.autocast]


def training_precision(device: torch.device, dtype: torch.dtype | None):
    """The context a training step runs in: autocast to `dtype`, or nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def full_precision(x: torch.Tensor):
    """The context of an attack inside a training step: autocast off, whatever the step runs in."""
    return torch.autocast(x.device.type, enabled=False)


def pick_device(name: str | None) -> torch.device:
    """The device of `--device NAME`: auto (CUDA when present, else the CPU), cpu, cuda or cuda:N."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu" or name.startswith("cuda"):
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise KdbenchError(f"device {name!r} requested but CUDA is not available; choose from: auto, cpu")
        return torch.device(name)
    raise KdbenchError(f"unknown device {name!r}; choose from: auto, cpu, cuda, cuda:N")


def job_gpu(job, device: torch.device) -> GpuConfig | None:
    """The [gpu] settings that apply to `job` on `device`: its own on CUDA, none on the CPU."""
    return job.gpu if device.type == "cuda" else None
