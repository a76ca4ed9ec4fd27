"""The timing half of gpu_check.py: training steps and evaluation attacks of the robustness-cifar10 architectures,
each as a ratio to a bare forward+backward step of the same model and batch and as images/s; and two estimates of
the robustness-cifar10 suite's cost: from those timings, and from its FLOP count and a GPU's published peak.

Steps are kdbench's own (`train.fit` over a method's `losses`, the flat-buffer optimizer, autocast as the
`[gpu]` setting asks, the teachers' logits per batch as with augmentation); attacks are the registered ones on a
batch-norm-folded copy, in float32, as `evaluate` runs them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdbench.evaluation.attacks import build_attack
from kdbench.execution.estimate import count_passes, data_shape, eval_forward_passes, eval_grad_steps
from kdbench.models.fold import fold_batch_norm
from kdbench.core.gpu import AUTOCAST_DTYPES, GpuConfig, full_precision, place, training_precision
from kdbench.methods import METHODS
from kdbench.models.registry import build_model, count_macs
from kdbench.suite.load import load_suite, parse_suite
from kdbench.suite.configs import EvalConfig
from kdbench.training.loop import fit

from _gpu_checks import EPS, INP, job_step, synthetic


@dataclass(frozen=True)
class TimingPlan:
    students: tuple[str, ...]
    teacher: str
    batches: tuple[int, ...]
    steps: int  # training steps per timed sample
    repeats: int
    apgd_steps: int


FULL_PLAN = TimingPlan(("resnet18", "mobilenetv2"), "wrn-34-10", (128, 512), 3, 3, 100)
TINY_PLAN = TimingPlan(("cnn-small", "lenet-small"), "cnn-large", (8, 32), 2, 2, 10)

# Published dense peak throughputs (NVIDIA A100 Tensor Core GPU datasheet, SXM4): TF32 tensor-core math (what
# float32 convolutions use through cuDNN by default in PyTorch) and bfloat16.
GPUS = {"NVIDIA A100-SXM4-80GB": {"tf32": 156e12, "bf16": 312e12}}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device, repeats: int) -> float:
    fn()  # warm-up: allocations, cuDNN autotuning
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timing_suite(student: str, teacher: str, batch: int, setting: str, methods: tuple[str, ...]):
    """robustness-cifar10's training table for (teacher, student) and `methods`, at batch `batch`."""
    base = load_suite("robustness-cifar10")
    t = base.train
    doc = {"name": "gpu-timing", "dataset": "digits", "seeds": [1], "headline_eps": EPS,
           "pairs": [{"teacher": teacher, "student": student}],
           "methods": {m: {} for m in methods},
           "train": {"epochs": 1, "teacher_epochs": 1, "batch_size": batch, "optimizer": t.optimizer, "lr": t.lr,
                     "momentum": t.momentum, "weight_decay": t.weight_decay, "adv_eps": t.adv_eps,
                     "adv_steps": t.adv_steps, "adv_step_size": t.step_size()},
           "eval": {"eps": [EPS]}, "gpu": {"autocast": setting}}
    return parse_suite(doc)


def bare_step(model, x, y, device, amp):
    """One forward+backward of CE with weight gradients, nothing else."""

    def run():
        model.train()
        for p in model.parameters():
            p.grad = None
        with training_precision(device, amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()

    return run


def _job_seconds(job, device, gpu, amp, plan: TimingPlan, batch: int) -> float:
    x, y = synthetic(batch * plan.steps, device)
    module, params, step = job_step(job, device, gpu, x, y)
    run = lambda: fit(module, params, step, len(x), 1, job.train, 0, device, amp=amp)  # noqa: E731
    return median_seconds(run, device, plan.repeats) / plan.steps


def _attack_seconds(model, name: str, ev: EvalConfig, x, y, device, repeats: int) -> float:
    folded = fold_batch_norm(model.eval())
    attack = build_attack(name, folded, EPS, ev, 0, 10)

    def run():
        torch.manual_seed(0)
        with full_precision(x):
            attack(x, y)

    return median_seconds(run, device, repeats)


def step_name(job) -> str:
    inner = f" (PGD-{job.train.adv_steps} inner)"
    if job.is_teacher:
        return f"{job.teacher_kind} teacher step" + (inner if job.teacher_kind == "adversarial" else "")
    return f"{job.method} step" + (inner if METHODS.get(job.method).teacher_kind == "adversarial" else "")


def time_arch(arch: str, role: str, plan: TimingPlan, batch: int, device, setting: str, methods) -> list[dict]:
    """Rows for one architecture and batch: the bare step, each training step (`methods`; teacher: `ce` and the
    adversarial teacher kind), PGD-20 and APGD-CE."""
    gpu = GpuConfig(autocast=setting) if device.type == "cuda" else None
    amp = AUTOCAST_DTYPES[setting] if device.type == "cuda" else None
    torch.manual_seed(0)
    model = place(build_model(arch, INP), device, gpu)
    x, y = synthetic(batch, device)
    bare = median_seconds(bare_step(model, x, y, device, amp), device, plan.repeats)
    rows = [("bare forward+backward", bare)]
    if role == "student":
        jobs = [j for j in timing_suite(arch, plan.teacher, batch, setting, methods).jobs(True) if not j.is_teacher]
    else:  # a teacher: plain CE training, and the adversarial training robustness-cifar10 gives it
        jobs = timing_suite(arch, arch, batch, setting, ("ce",)).jobs(True)
        jobs += [j for j in timing_suite(plan.students[0], arch, batch, setting, ("rslad",)).jobs(True)
                 if j.is_teacher and j.teacher_kind == "adversarial"]
    for job in jobs:
        rows.append((step_name(job), _job_seconds(job, device, gpu, amp, plan, batch)))
    model.eval().requires_grad_(False)
    with torch.no_grad():
        y = model(x).argmax(1)  # every image correct: APGD attacks only those, PGD every one
    for name, ev in (("PGD-20", EvalConfig(pgd_steps=20)), (f"APGD-CE-{plan.apgd_steps}", EvalConfig(apgd_steps=plan.apgd_steps))):
        attack = "pgd" if name == "PGD-20" else "apgd-ce"
        rows.append((f"{name} evaluation", _attack_seconds(model, attack, ev, x, y, device, max(1, plan.repeats - 1))))
    return [{"arch": arch, "role": role, "batch": batch, "what": what, "seconds": s, "images_per_s": batch / s,
             "ratio_to_bare": s / bare} for what, s in rows]


def time_all(plan: TimingPlan, device, setting: str, progress=print) -> list[dict]:
    methods = tuple(dict.fromkeys(("ce", "kd", "rslad", *[m.name for m in load_suite("robustness-cifar10").methods])))
    rows = []
    for batch in plan.batches:
        for arch, role in [(s, "student") for s in plan.students] + [(plan.teacher, "teacher")]:
            progress(f"  timing {arch} ({role}) at batch {batch} ...")
            rows += time_arch(arch, role, plan, batch, device, setting, methods)
    return rows


def suite_hours_from_timings(rows: list[dict], plan: TimingPlan) -> dict:
    """robustness-cifar10's cost from the timed rows: training steps at the suite's batch (128), attack steps at
    the largest batch timed; evaluation counts every attack step as if every test image survived (as
    `run --dry-run` does). Only meaningful when the suite's own architectures were timed."""
    suite = load_suite("robustness-cifar10")
    ds = data_shape(suite)
    train_b = min(plan.batches, key=lambda b: abs(b - suite.train.batch_size))
    eval_b = max(plan.batches)
    per = {(r["arch"], r["batch"], r["what"].split(" (")[0]): r["seconds"] / r["batch"] for r in rows}

    def grad_step(arch):  # seconds per image of one attack step: the dearer of PGD's and APGD's
        pgd = per[(arch, eval_b, "PGD-20 evaluation")] / 20
        apgd = per[(arch, eval_b, f"APGD-CE-{plan.apgd_steps} evaluation")] / plan.apgd_steps
        return max(pgd, apgd)

    train_s = eval_s = 0.0
    for job in suite.jobs(True):
        if job.is_teacher:
            train_s += suite.train.teacher_epochs * ds.n_train * per[(job.pair.teacher, train_b, "adversarial teacher step")]
            arch = job.pair.teacher
        else:
            train_s += suite.train.epochs * ds.n_train * per[(job.pair.student, train_b, f"{job.method} step")]
            arch = job.pair.student
        eval_s += ds.n_test * eval_grad_steps(suite.eval) * grad_step(arch)
    return {"train_hours": train_s / 3600, "eval_hours": eval_s / 3600, "hours": (train_s + eval_s) / 3600}


def suite_flops() -> dict:
    """FLOPs of robustness-cifar10: per job, epochs x images x (forward passes per step counted by
    `kdbench.execution.estimate.count_passes`, each with its backward: 3x a forward's FLOPs; the teachers' per-batch logits:
    1x), plus the evaluation's attack steps (3x a forward each, every test image attacked) and forward passes
    (`eval_forward_passes`: clean, corruptions, the noise sweep and the sanity check's noise draws).
    A forward's FLOPs are 2 x its multiply-accumulates (`count_macs`)."""
    suite = load_suite("robustness-cifar10")
    ds = data_shape(suite)
    macs = {}

    def fwd(arch):
        if arch not in macs:
            macs[arch] = count_macs(build_model(arch, INP), ds.shape)
        return 2 * macs[arch]

    train = evaluation = 0.0
    for job in suite.jobs(True):
        passes = count_passes(job, ds)
        if job.is_teacher:
            train += suite.train.teacher_epochs * ds.n_train * passes["student"] * 3 * fwd(job.pair.teacher)
            arch = job.pair.teacher
        else:
            per_image = passes["student"] * 3 * fwd(job.pair.student)
            per_image += (passes["teacher"] + passes.get("teacher_logits", 0)) * fwd(job.pair.teacher)
            train += suite.train.epochs * ds.n_train * per_image
            arch = job.pair.student
        ev = suite.eval
        evaluation += ds.n_test * (3 * eval_grad_steps(ev) + eval_forward_passes(ev)) * fwd(arch)
    return {"train_flops": train, "eval_flops": evaluation, "flops": train + evaluation,
            "forward_gflops": {a: 2 * m / 1e9 for a, m in macs.items()}}


def gpu_estimate(utilizations=(0.5, 0.35, 0.2)) -> dict:
    """robustness-cifar10's FLOPs over each named GPU's TF32 peak (the attack steps, most of the FLOPs, run in
    float32; the bf16 training passes are counted at the same rate, an upper bound) at the assumed fractions of
    that peak actually reached. An ESTIMATE, not a measurement."""
    f = suite_flops()
    out = {"basis": "FLOPs counted by kdbench (count_macs x passes per step from count_passes) / (published "
                    "TF32 peak x an assumed fraction of it reached)", **f, "gpus": {}}
    for name, peak in GPUS.items():
        out["gpus"][name] = {f"{u:.0%} of peak": f["flops"] / (peak["tf32"] * u) / 3600 for u in utilizations}
    return out


def fmt_hours(h: float) -> str:
    return f"{h:,.0f} h" if h >= 10 else f"{h:.1f} h" if h >= 0.1 else f"{h * 3600:.0f} s"
