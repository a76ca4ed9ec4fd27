"""Which machine made a number: CPU model and the capabilities its float kernels dispatch on, GPU name, thread
count and library versions.

On one machine type, with the same threads and versions, a job is bit-for-bit reproducible: equal configs give
equal numbers. Across CPUs (another vector width picks other kernels, summing in another order) or thread counts,
the last bits differ, training amplifies them, and the numbers move by a few examples. `same_machine` tells the
two cases apart; `check` and `reproduce` expect equality in the first and use the noise model of noise.py in the
second.
"""

from __future__ import annotations

import platform

# CPU features that change which float kernels run (vector width, fused multiply-add, low-precision units)
FLOAT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
               "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")

# what must agree for two records to come from the same machine type
KEY = ("cpu_model", "cpu_capability", "gpu", "device", "threads", "torch", "torchattacks")


def _proc_cpuinfo() -> tuple[str | None, list[str]]:
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return None, []
    model, flags = None, []
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if model is None and name in ("model name", "cpu model", "hardware"):
            model = value.strip()
        elif not flags and name in ("flags", "features"):
            flags = value.split()
    return model, flags


def cpu_info() -> dict:
    """{"model": ..., "capability": torch's CPU kernel level (e.g. AVX2, AVX512), "flags": [float-relevant]}."""
    import torch

    model, flags = _proc_cpuinfo()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    return {"model": model or platform.processor() or platform.machine() or None, "capability": capability,
            "flags": sorted(f for f in set(flags) if f in FLOAT_FLAGS)}


def gpu_name(device) -> str | None:
    import torch

    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(dev)
    return f"{torch.cuda.get_device_name(dev)} (sm_{major}{minor})"


def machine_of(env: dict | None) -> dict:
    """The parts of a record's `env` that decide whether a re-run is bit-identical (None where unrecorded)."""
    env = env or {}
    cpu = env.get("cpu") or {}
    device = str(env.get("device") or "").split(":")[0] or None
    return {"cpu_model": cpu.get("model"), "cpu_capability": cpu.get("capability"), "gpu": env.get("gpu"),
            "device": device, "threads": env.get("threads"), "torch": env.get("torch"),
            "torchattacks": env.get("torchattacks")}


def same_machine(a: dict | None, b: dict | None) -> bool:
    """Both records (their `env`) come from one machine type, thread count and library versions. Records made
    before CPUs were recorded compare by what they hold, so two copies of one record still match."""
    return machine_of(a) == machine_of(b)


def describe(env: dict | None) -> str:
    m = machine_of(env)
    cpu = m["cpu_model"] or "unrecorded CPU"
    if m["cpu_capability"]:
        cpu += f" [{m['cpu_capability']}]"
    parts = [cpu] + ([m["gpu"]] if m["gpu"] else []) + [f"{m['threads']} thread(s)", f"torch {m['torch']}"]
    return ", ".join(parts)


def differences(a: dict | None, b: dict | None) -> list[str]:
    ma, mb = machine_of(a), machine_of(b)
    return [f"{k} {ma[k]!r} vs {mb[k]!r}" for k in KEY if ma[k] != mb[k]]
