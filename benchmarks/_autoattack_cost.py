"""What kdbench's registered `autoattack` costs per 1,000 CIFAR-shaped images.

AutoAttack runs each component on the examples that are still robust, so its cost depends on the model: it is
highest for a model that nothing breaks. Both functions here measure that upper bound: the labels are the
model's own predictions (every image correct) and eps is 1e-4 (too small to flip a prediction), so every
component runs on every image at full strength. The attack is built from kdbench's registry (`build_attack`, or
an ensemble entry's components run each on the survivors, `_gpu_checks.attack_stages`) with the robustness-cifar10
suite's `[eval]` table, so whatever `autoattack` is registered is what is measured.

- `time_autoattack`: runs it and times it (the GPU, or a few images on the CPU).
- `count_passes`: runs it on a small stand-in model and counts the images pushed through forward passes with
  and without autograd; times those passes for the real architecture; their product extrapolates the cost
  without running a full AutoAttack through a large model on a CPU.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from kdbench.evaluation.attacks import ATTACKS
from kdbench.models.fold import fold_batch_norm
from kdbench.core.gpu import full_precision, place
from kdbench.models.registry import build_model
from kdbench.suite.load import load_suite

from _gpu_checks import INP, attack_stages, run_on_survivors, synthetic

EPS_ALL_SURVIVE = 1e-4


def registered_version() -> str:
    return next(e.summary for e in ATTACKS.entries() if e.name == "autoattack")


def _victim(arch: str, device, n: int, seed: int = 0):
    device = torch.device(device)
    torch.manual_seed(seed)
    model = fold_batch_norm(place(build_model(arch, INP), device, None).eval())  # as evaluate() attacks it
    x, _ = synthetic(n, device, seed=5)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_autoattack(arch: str, device, n: int, batch: int = 500) -> dict:
    """Seconds of the registered AutoAttack on `n` images that every component attacks; per 1,000 images."""
    model, x, y = _victim(arch, device, n)
    ev = load_suite("robustness-cifar10").eval
    stages = attack_stages("autoattack", model, EPS_ALL_SURVIVE, ev, 0)
    _sync(device)
    t0 = time.perf_counter()
    with full_precision(x):
        advs = [run_on_survivors(stages, model, x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]
    _sync(device)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        robust = (model(torch.cat(advs)).argmax(1) == y).float().mean().item()
    return {"arch": arch, "device": str(device), "images": n, "seconds": seconds, "per_1000_s": seconds / n * 1000,
            "robust_fraction": robust, "version": registered_version(), "how": "timed"}


class _Counter:
    def __init__(self, model):
        self.grad = self.nograd = 0
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        if torch.is_grad_enabled():
            self.grad += args[0].shape[0]
        else:
            self.nograd += args[0].shape[0]


def count_passes(n: int = 4, stand_in: str = "cnn-small") -> dict:
    """Images x forward passes per image of the registered AutoAttack when every image survives, counted on a
    small stand-in model (the count depends on the attack's steps and queries, not on the architecture)."""
    model, x, y = _victim(stand_in, "cpu", n)
    ev = load_suite("robustness-cifar10").eval
    counter = _Counter(model)
    try:
        with full_precision(x):
            adv = run_on_survivors(attack_stages("autoattack", model, EPS_ALL_SURVIVE, ev, 0), model, x, y)
    finally:
        counter.handle.remove()
    with torch.no_grad():
        robust = (model(adv).argmax(1) == y).float().mean().item()
    return {"grad_passes_per_image": counter.grad / n, "nograd_passes_per_image": counter.nograd / n,
            "robust_fraction": robust, "stand_in": stand_in, "images": n}


def pass_seconds(arch: str, device, batch: int, repeats: int = 3) -> dict:
    """Seconds per image of a forward pass with an input gradient (an attack step) and of a no-grad forward, for
    `arch` as evaluate() runs it (batch norms folded), at `batch`: medians of `repeats` after one warm-up."""
    model, x, y = _victim(arch, device, batch)

    def grad_pass():
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xr), y), xr)

    def forward():
        with torch.no_grad():
            model(x)

    out = {}
    for name, fn in (("grad", grad_pass), ("nograd", forward)):
        fn()
        times, cpu = [], []
        for _ in range(repeats):
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out[name] = statistics.median(times) / batch
        out[name + "_cpu"] = statistics.median(cpu) / batch  # CPU time: what an idle machine's wall time would be
    return out


def extrapolate(arch: str, device, batch: int, counted: dict | None = None) -> dict:
    """Per 1,000 images: counted passes per image x measured seconds per pass and image."""
    counted = counted or count_passes()
    per = pass_seconds(arch, device, batch)
    def per_image(suffix=""):
        return (counted["grad_passes_per_image"] * per["grad" + suffix]
                + counted["nograd_passes_per_image"] * per["nograd" + suffix])

    return {"arch": arch, "device": str(device), "pass_batch": batch, "seconds_per_grad_pass": per["grad"],
            "seconds_per_forward": per["nograd"], "cpu_seconds_per_grad_pass": per["grad_cpu"],
            "cpu_seconds_per_forward": per["nograd_cpu"], **counted, "per_1000_s": per_image() * 1000,
            "per_1000_cpu_s": per_image("_cpu") * 1000,
            "version": registered_version(), "how": "extrapolated: counted passes x measured pass times"}
