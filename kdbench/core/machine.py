"""Which machine made a number: CPU model and the capabilities its float kernels dispatch on, GPU name, thread
count and library versions.

On one machine type, with the same threads and versions, a job is bit-for-bit reproducible: equal configs give
equal numbers. Across CPUs (another vector width picks other kernels, summing in another order), thread counts or
kernel settings (KERNEL_VARS: ATEN_CPU_CAPABILITY=avx2 makes an AVX-512 CPU report torch's AVX2 level while oneDNN
and MKL still run AVX-512 kernels, so the CPU's own features are compared too) the last bits differ, training
amplifies them, and the numbers move. `same_machine` tells the two cases apart; `check` and `reproduce` expect
equality in the first and the cross-machine variation of machine_variation.py in the second.
"""

from __future__ import annotations

import os
import platform

# CPU features that change which float kernels run (vector width, fused multiply-add, low-precision units)
FLOAT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
               "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")

# environment variables that choose the CPU kernels of torch (ATen), oneDNN and MKL, read when each library first
# runs: set, they make a machine run other kernels than its CPU would pick (records keep them as env.cpu.kernels)
KERNEL_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")

# `[executor] kernels` / --kernels: the kernel level a suite pins torch, oneDNN and MKL to ("native": each picks
# the best its CPU has). At "avx2" an AVX-512 CPU runs the kernels an AVX2 CPU runs (MKL in its reproducible mode):
# a job's record was bit-identical to one made on an AVX2-only CPU of the same model line (docs/reliability.md).
KERNEL_LEVELS = {"native": {},
                 "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
                          "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
ABOVE = {"avx2": ("avx512", "amx")}  # CPU features whose kernels a level leaves unused

# what must agree for two records to come from the same machine type
KEY = ("cpu_model", "cpu_level", "cpu_flags", "gpu", "device", "threads", "torch", "torchattacks")


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


def kernel_settings() -> dict:
    """The KERNEL_VARS set in this process's environment, {name: value}."""
    return {name: os.environ[name] for name in KERNEL_VARS if os.environ.get(name)}


def cpu_info() -> dict:
    """{"model": ..., "capability": torch's CPU kernel level (e.g. AVX2, AVX512), "flags": [float-relevant]}, and
    "kernels" (kernel_settings) where one of KERNEL_VARS is set."""
    import torch

    model, flags = _proc_cpuinfo()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    info = {"model": model or platform.processor() or platform.machine() or None, "capability": capability,
            "flags": sorted(f for f in set(flags) if f in FLOAT_FLAGS)}
    kernels = kernel_settings()
    return {**info, "kernels": kernels} if kernels else info


def gpu_name(device) -> str | None:
    import torch

    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(dev)
    return f"{torch.cuda.get_device_name(dev)} (sm_{major}{minor})"


def kernel_level(cpu: dict) -> str | None:
    """The KERNEL_LEVELS level a record's CPU ran at: pinned, or "native" on a CPU with nothing above it (an AVX2
    CPU with its own kernels runs those of "avx2"); None for any other setting of KERNEL_VARS."""
    kernels, flags = cpu.get("kernels") or {}, cpu.get("flags") or []
    for level, settings in KERNEL_LEVELS.items():
        if settings and (kernels == settings or (
                not kernels and str(cpu.get("capability", "")).lower() == level
                and not any(f.startswith(ABOVE[level]) for f in flags))):
            return level
    return "native" if not kernels else None


def machine_of(env: dict | None) -> dict:
    """The parts of a record's `env` that decide whether a re-run is bit-identical (None where unrecorded): the CPU
    model, its kernels (the level, or the CPU's own capability and the kernel settings) and the features those
    kernels can use, threads, GPU and versions."""
    env = env or {}
    cpu = env.get("cpu") or {}
    device = str(env.get("device") or "").split(":")[0] or None
    flags, level = cpu.get("flags"), kernel_level(cpu)
    if level in ABOVE and isinstance(flags, list):
        flags = [f for f in flags if not f.startswith(ABOVE[level])]
    return {"cpu_model": cpu.get("model"),
            "cpu_level": level if level in ABOVE else " ".join(
                [str(cpu.get("capability"))] + [f"{k}={v}" for k, v in sorted((cpu.get("kernels") or {}).items())]),
            "cpu_flags": " ".join(sorted(flags)) if isinstance(flags, list) else None, "gpu": env.get("gpu"),
            "device": device, "threads": env.get("threads"), "torch": env.get("torch"),
            "torchattacks": env.get("torchattacks")}


def pin_kernels(level: str) -> None:
    """Make torch, oneDNN and MKL run `level`'s kernels in this process and the workers it starts. The libraries
    read their variables when they first run, so this must come before any tensor work: torch's level is read back
    to make sure. A CPU without the level (no AVX2, not x86) keeps its own kernels, with a note on stderr, and its
    records say so."""
    import sys

    from .errors import KdbenchError

    settings = KERNEL_LEVELS[level]
    if not settings:
        return
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    import torch

    got = torch.backends.cpu.get_cpu_capability()
    if got.lower() == level:
        return
    for name, value in before.items():  # the records must not claim kernels this CPU did not run
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if got.upper().startswith("AVX512"):
        raise KdbenchError(f"kernels = {level!r}: torch already runs {got} kernels in this process (it ran before "
                           "they could be pinned): start kdbench with "
                           + " ".join(f"{k}={v}" for k, v in settings.items()) + " set, or use kernels = 'native'")
    print(f"note: kernels = {level!r} needs an x86-64 CPU with {level.upper()}; this one runs its own ({got})",
          file=sys.stderr)


def same_machine(a: dict | None, b: dict | None) -> bool:
    """Both records (their `env`) come from one machine type, thread count and library versions. Records made
    before CPUs were recorded compare by what they hold, so two copies of one record still match."""
    return machine_of(a) == machine_of(b)


def describe(env: dict | None) -> str:
    m, cpu_env = machine_of(env), (env or {}).get("cpu") or {}
    cpu = m["cpu_model"] or "unrecorded CPU"
    if cpu_env.get("capability"):
        cpu += f" [{cpu_env['capability']}" + (f", kernels {kernel_level(cpu_env) or cpu_env['kernels']}"
                                              if cpu_env.get("kernels") else "") + "]"
    parts = [cpu] + ([m["gpu"]] if m["gpu"] else []) + [f"{m['threads']} thread(s)", f"torch {m['torch']}"]
    return ", ".join(parts)


def differences(a: dict | None, b: dict | None) -> list[str]:
    ma, mb = machine_of(a), machine_of(b)
    return [f"{k} {ma[k]!r} vs {mb[k]!r}" for k in KEY if ma[k] != mb[k]]
