"""The correctness half of gpu_check.py: every registered method, teacher kind, attack and corruption, and the
CIFAR-10 smoke suite end to end, under a `[gpu]` autocast setting; and the float32 evaluation of a model trained
under bf16, twice. Each check returns rows {section, name, setting, ok, detail, seconds}.

Registries are iterated, so a method, attack or corruption registered later is checked without an edit here.
"""

from __future__ import annotations

import dataclasses
import math
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdbench.evaluation.attacks import ATTACKS, build_attack
from kdbench.data.corruptions import CORRUPTIONS, corrupt
from kdbench.evaluation.evaluate import evaluate
from kdbench.core.gpu import AUTOCAST_DTYPES, GpuConfig, full_precision, place
from kdbench.methods import METHODS, Batch, TrainContext
from kdbench.models.registry import ModelInput, build_model
from kdbench.suite.load import REPO_BENCHMARKS, parse_suite
from kdbench.suite.configs import EvalConfig
from kdbench.training.teachers import TEACHER_KINDS
from kdbench.training.loop import fit

SETTINGS = ("bf16", "fp16", "off")
FP16_STEPS = 20
EPS = 8 / 255
CIFAR = (3, 32, 32)
INP = ModelInput(CIFAR, 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))


@dataclass(frozen=True)
class Size:
    """How big the checks run: the architectures, batch and steps."""

    student: str
    teacher: str
    batch: int
    steps: int
    smoke_pairs: tuple[tuple[str, str], ...] | None  # None: the smoke suite's own (WRN-34-10 -> ResNet-18, MobileNetV2)


FULL = Size("resnet18", "wrn-34-10", 64, 3, None)
TINY = Size("cnn-small", "cnn-large", 8, 2, (("cnn-large", "cnn-small"), ("cnn-large", "lenet-small")))


def row(section, name, setting, ok, detail="", seconds=0.0) -> dict:
    return {"section": section, "name": name, "setting": setting, "ok": bool(ok), "detail": detail,
            "seconds": round(seconds, 3)}


def synthetic(n: int, device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-shaped images in [0, 1] with a class-dependent brightness, and their labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (0.6 * torch.rand(n, *CIFAR, generator=g) + 0.04 * y.view(-1, 1, 1, 1)).clamp(0, 1)
    return x.to(device), y.to(device)


def supports(device: torch.device, setting: str) -> str:
    """'' when autocast to the setting's dtype works on `device`, else why not."""
    dtype = AUTOCAST_DTYPES[setting]
    if dtype is None:
        return ""
    try:
        with torch.autocast(device.type, dtype=dtype):
            torch.nn.Linear(4, 2).to(device)(torch.rand(2, 4, device=device))
    except (RuntimeError, TypeError) as e:
        return f"no {device.type} {setting} autocast in this torch build ({str(e).splitlines()[0]})"
    return ""


def all_methods_suite(size: Size, setting: str):
    """A suite of every registered method at its defaults, whose jobs also hold every teacher kind they use."""
    doc = {"name": "gpu-check", "dataset": "digits", "seeds": [1], "headline_eps": EPS,
           "pairs": [{"teacher": size.teacher, "student": size.student}],
           "methods": {name: {} for name in METHODS.names()},
           "train": {"epochs": 1, "teacher_epochs": 1, "batch_size": size.batch, "optimizer": "sgd", "lr": 0.01,
                     "adv_eps": EPS, "adv_steps": 2, "adv_step_size": 2 / 255},
           "eval": {"eps": [EPS]}, "gpu": {"autocast": setting}}
    return parse_suite(doc)


def _teachers(job, device, gpu):
    return [place(build_model(s.arch, INP), device, gpu).eval().requires_grad_(False) for s in job.teacher_specs()]


def job_step(job, device, gpu, x, y):
    """(module, params, step_losses(idx, progress)) of one job: a teacher kind's objective or a method's losses,
    the teachers' logits computed per batch (as a run with augmentation does)."""
    t = job.train
    if job.is_teacher:
        model = place(build_model(job.pair.teacher, INP), device, gpu)
        kind = TEACHER_KINDS.get(job.teacher_kind)
        objective = kind.objective(model, {**kind.defaults, **dict(job.params)}, t)
        return model, list(model.parameters()), lambda idx, p: objective(x[idx], y[idx], p)
    cls = METHODS.get(job.method)
    student = place(build_model(job.pair.student, INP), device, gpu)
    teachers = _teachers(job, device, gpu)
    ctx = TrainContext(10, CIFAR, t.epochs, t.adv_eps, t.adv_steps, t.step_size())
    distiller = cls(student, teachers, dict(job.params), ctx).to(device)

    def step(idx, progress):
        with torch.no_grad():
            logits = [tm(x[idx]) for tm in teachers] if cls.uses_teacher_logits else []
        return distiller.losses(Batch(x[idx], y[idx], logits, progress))

    return distiller, distiller.trainable_parameters(), step


def check_methods(device: torch.device, setting: str, size: Size) -> list[dict]:
    """Every job of the all-methods suite trains a few steps under `setting`: it finishes, its losses are finite
    (fit raises otherwise) and its weights moved (a float16 loss scaler that skips every step fails)."""
    why = supports(device, setting)
    suite = all_methods_suite(size, setting)
    if why:
        return [row("methods", j.label(), setting, True, f"skipped: {why}") for j in suite.jobs(True)]
    gpu, amp = suite.gpu, AUTOCAST_DTYPES[setting]
    # float16 starts at a loss scale of 2^16 and skips the steps whose gradients overflow while it halves the
    # scale (as torch.amp.GradScaler does): give it the steps to come down before asking for an update (attention
    # transfer, whose loss is weighted by 1000, needs more than 8 halvings)
    steps = FP16_STEPS if setting == "fp16" else size.steps
    x, y = synthetic(size.batch * steps, device)
    out = []
    for job in suite.jobs(True):
        name = f"teacher:{job.teacher_kind}" if job.is_teacher else job.method
        t0 = time.perf_counter()
        try:
            torch.manual_seed(0)
            module, params, step = job_step(job, device, gpu, x, y)
            before = [p.detach().clone() for p in params]
            history = fit(module, params, step, len(x), 1, job.train, 0, device, amp=amp)
            moved = any(not torch.equal(a, p.detach()) for a, p in zip(before, params))
            finite = all(math.isfinite(v) for h in history for v in h.values())
            detail = ", ".join(f"{k}={v:.4g}" for k, v in history[-1].items())
            ok = finite and moved and bool(history[-1])
            if not moved:
                detail += f"; the weights did not change in {steps} steps"
        except Exception as e:  # noqa: BLE001 - a check reports any failure and goes on
            ok, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        out.append(row("methods", name, setting, ok, detail, time.perf_counter() - t0))
    return out


def attack_stages(name: str, model, eps: float, ev: EvalConfig, seed: int, num_classes: int = 10) -> list:
    """[(label, attack)] that the registered attack `name` runs: itself, or, for an ensemble entry (one with
    `components`, as AutoAttack run component by component), each component it applies at `num_classes`."""
    comps = [c for c in getattr(ATTACKS.get(name), "components", ()) if num_classes >= getattr(c, "min_classes", 2)]
    if not comps:
        return [(name, build_attack(name, model, eps, ev, seed, num_classes))]
    return [(f"{name}/{c.name}", c.build(model, eps, seed, num_classes)) for c in comps]


def run_on_survivors(stages: list, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Adversarial examples after every stage in order, each attacking only the examples still classified
    correctly (an example never broken keeps its input)."""
    x_adv = x.clone()
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    for _, attack in stages:
        idx = torch.nonzero(ok).flatten()
        if len(idx) == 0:
            break
        found = attack(x[idx], y[idx]).detach()
        x_adv[idx] = found
        with torch.no_grad():
            ok[idx] = model(found).argmax(1) == y[idx]
    return x_adv


def check_attacks(device: torch.device, setting: str, size: Size, ev: EvalConfig) -> list[dict]:
    """Every registered attack on a model placed as `setting` places it (attacks run in float32): adversarial
    examples of the input's shape, device and dtype, finite, in [0, 1], within eps, accuracy <= clean."""
    gpu = GpuConfig(autocast=setting)
    torch.manual_seed(0)
    model = place(build_model(size.student, INP), device, gpu)
    # a few steps of training, so that predictions depend on the input and the attacks can break them (an untrained
    # model predicts one class everywhere, and AutoAttack's Square would spend all its queries on it)
    x_fit, y_fit = synthetic(64, device, seed=4)
    cfg = all_methods_suite(size, setting).train
    fit(model, list(model.parameters()), lambda idx, p: {"ce": F.cross_entropy(model(x_fit[idx]), y_fit[idx])}, 64, 10,
        dataclasses.replace(cfg, optimizer="adam", lr=3e-3, batch_size=16), 0, device)
    model.eval().requires_grad_(False)
    x, _ = synthetic(size.batch, device, seed=1)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model gets right: the attacks have something to break
    out = []
    for name in ATTACKS.names():
        t0 = time.perf_counter()
        try:
            torch.manual_seed(0)
            with full_precision(x):
                x_adv = run_on_survivors(attack_stages(name, model, EPS, ev, 0), model, x, y)
            with torch.no_grad():
                acc = (model(x_adv).argmax(1) == y).float().mean().item()
            problems = [p for p, bad in (
                ("shape/device/dtype", x_adv.shape != x.shape or x_adv.device != x.device or x_adv.dtype != x.dtype),
                ("not finite", not bool(torch.isfinite(x_adv).all())),
                ("outside [0, 1]", bool((x_adv < 0).any() or (x_adv > 1).any())),
                ("outside the eps ball", _distance(x_adv, x, ATTACKS.get(name).norm) > EPS + 1e-6)) if bad]
            ok, detail = not problems, "; ".join(problems) or f"accuracy 1.0 -> {acc:.3f}"
        except Exception as e:  # noqa: BLE001
            ok, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        out.append(row("attacks", name, setting, ok, detail, time.perf_counter() - t0))
    return out


def _distance(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> float:
    """The largest distance of an adversarial example from its input, in the attack's norm (an L2 attack runs at
    the L2 radius EPS here)."""
    d = (x_adv - x).flatten(1).float()
    return (d.abs().amax(1) if norm == "linf" else d.norm(dim=1)).max().item()


def check_corruptions(device: torch.device, size: Size) -> list[dict]:
    """Every registered corruption at severities 1-5 on the device: same shape and device, finite, in [0, 1],
    and the same output for the same seed."""
    x, _ = synthetic(size.batch, device, seed=2)
    out = []
    for name in CORRUPTIONS.names():
        t0 = time.perf_counter()
        problems = []
        try:
            for s in (1, 2, 3, 4, 5):
                a, b = corrupt(name, x, s, 1), corrupt(name, x, s, 1)
                if a.shape != x.shape or a.device != x.device or not bool(torch.isfinite(a).all()):
                    problems.append(f"severity {s}: shape, device or finiteness")
                elif a.min() < 0 or a.max() > 1:
                    problems.append(f"severity {s}: outside [0, 1]")
                elif not torch.equal(a, b):
                    problems.append(f"severity {s}: differs between two calls with one seed")
            ok, detail = not problems, "; ".join(problems) or "severities 1-5"
        except Exception as e:  # noqa: BLE001
            ok, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        out.append(row("corruptions", name, "float32", ok, detail, time.perf_counter() - t0))
    return out


def check_determinism(device: torch.device, size: Size, ev: EvalConfig) -> list[dict]:
    """A student trained under bf16 (kd), then evaluated in float32 twice: the same metrics both times."""
    if supports(device, "bf16"):
        return [row("determinism", "bf16-trained, evaluated twice", "bf16", True, "skipped: " + supports(device, "bf16"))]
    t0 = time.perf_counter()
    suite = all_methods_suite(size, "bf16")
    job = next(j for j in suite.jobs(True) if j.method == "kd")
    x, y = synthetic(size.batch * size.steps, device)
    x_test, y_test = synthetic(size.batch, device, seed=3)
    torch.manual_seed(0)
    module, params, step = job_step(job, device, suite.gpu, x, y)
    fit(module, params, step, len(x), 1, job.train, 0, device, amp=torch.bfloat16)
    model = module.student.eval().requires_grad_(False)
    first, flags1, _ = evaluate(model, x_test, y_test, 10, ev, 1, EPS)
    second, flags2, _ = evaluate(model, x_test, y_test, 10, ev, 1, EPS)
    differ = sorted(k for k in set(first) | set(second) if first.get(k) != second.get(k))
    ok = not differ and flags1 == flags2
    detail = f"{len(first)} metrics identical" if ok else f"differ: {', '.join(differ[:6])}"
    return [row("determinism", "bf16-trained, evaluated twice", "bf16", ok, detail, time.perf_counter() - t0)]


def write_synthetic_npz(path: Path, n_train: int, n_test: int) -> Path:
    """CIFAR-10-shaped uint8 NHWC images and labels in the npz layout kdbench reads (`npz:PATH`)."""
    xs, ys = [], []
    for n, seed in ((n_train, 10), (n_test, 11)):
        x, y = synthetic(n, "cpu", seed)
        xs.append((x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
        ys.append(y.numpy().astype(np.int64))
    np.savez(path, x_train=xs[0], y_train=ys[0], x_test=xs[1], y_test=ys[1])
    return path


def smoke_suite(setting: str, size: Size, data: str):
    """robustness-cifar10-smoke with its `[gpu]` autocast set to `setting`, on `data` ("cifar10" or an npz
    path); `size.smoke_pairs` replaces its architectures (the CPU's tiny size)."""
    doc = tomllib.loads((REPO_BENCHMARKS / "robustness-cifar10-smoke.toml").read_text())
    if data != "cifar10":
        doc["data"]["name"] = f"npz:{data}"
    if size.smoke_pairs:
        doc["pairs"] = [{"teacher": t, "student": s} for t, s in size.smoke_pairs]
    doc["gpu"] = {"autocast": setting}
    return parse_suite(doc, "robustness-cifar10-smoke")


def check_smoke(device: torch.device, setting: str, size: Size, workdir: Path, data_dir: Path | None) -> list[dict]:
    """The CIFAR-10 smoke suite end to end through `run_suite`: every job writes a record, no failures, every
    metric finite. On the CPU the `[gpu]` settings do not apply to a suite's jobs, so one run covers them."""
    from kdbench.records.store import load_records
    from kdbench.execution.driver import run_suite

    data = "cifar10"
    if data_dir is None:
        data = str(write_synthetic_npz(workdir / "cifar-shaped.npz", 64, 32))
    suite = smoke_suite(setting, size, data)
    out = workdir / f"smoke-{setting}"
    t0 = time.perf_counter()
    try:
        result = run_suite(suite, out, device, cache_dir=workdir / "cache", quiet=True, data_dir=data_dir)
        records, bad = load_records(out)
        jobs = suite.jobs(device.type == "cuda")
        nonfinite = [f"{r['method']}:{k}" for r in records for k, v in r["metrics"].items()
                     if not (isinstance(v, (int, float)) and math.isfinite(v))]
        ok = not result.failed and not bad and len(records) == len(jobs) and not nonfinite
        detail = (f"{len(records)}/{len(jobs)} jobs recorded, {len(result.failed)} failed"
                  + (f", not finite: {', '.join(nonfinite[:4])}" if nonfinite else "")
                  + (f"; {result.failed[0][1]}" if result.failed else ""))
    except Exception as e:  # noqa: BLE001
        ok, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    name = "robustness-cifar10-smoke" + (" (tiny architectures)" if size.smoke_pairs else "")
    return [row("smoke suite", name, setting if device.type == "cuda" else "cpu", ok, detail,
                time.perf_counter() - t0)]


def check_ev(tiny: bool) -> EvalConfig:
    """The evaluation of the checks: few steps (they check wiring, not strength)."""
    return EvalConfig(attacks=("fgsm", "pgd", "apgd-ce", "apgd-dlr"), eps=(EPS,), pgd_steps=3, apgd_steps=3,
                      square_queries=20 if tiny else 100, sweep_eps=(EPS, 0.5), corruptions=("gaussian_noise",),
                      severities=(1, 5), batch_size=64)
