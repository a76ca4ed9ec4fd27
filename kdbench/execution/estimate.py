"""`run --dry-run`: the job grid of a suite and an estimate of its compute time, measured on this device.

Nothing is trained and no data is read. The estimate has two measured ingredients:

1. per architecture, the time of one training forward+backward and of one no-grad forward on a batch of
   random inputs of the suite's data shape, on the current device (at the suite's batch size on a GPU; on a
   CPU at a small batch, scaled linearly to the batch size), the fastest of a few repeats;
2. per job kind (teacher kind or distillation method), how many forward passes of the student and of the
   teacher one training step makes (forward hooks on a step of stand-in models: PGD steps count, cached
   teacher logits do not).

Training time = epochs x steps per epoch x the step's passes x the measured pass times (plus one teacher pass
over the data when its logits are cached). Evaluation time counts the gradient steps of the attacks (sweep and
sanity checks included: the convergence check re-runs the strongest attack at twice its steps with its restarts,
counted at the costliest attack's steps; per threat model, L-inf at eval.eps and L2 at eval.eps_l2) and the
forward passes (clean, corruptions, the noise sweep, the noise draws, transfer, and the noisy copies of randomized
smoothing's certification: len(sigma) x (n0 + n) per certified example), each attack step timed as the evaluation runs one: a real PGD attack (torchattacks, its own
element-wise work included, which on a small model costs as much as half the model's pass) at the evaluation's
batch size, on a copy with batch norms folded, no weight gradients. Each attack runs only on the examples it has
not broken at a smaller eps, which depends on the model; the count is the upper bound, every example attacked at
every eps. On the default suite most examples of most students survive the smallest eps, and that bound was
within 1.5x of what the records show (docs/reliability.md); on a model broken at the smallest eps it is an
overestimate of up to `eval_grad_steps(ev) / eval_grad_steps(ev, broken_at_first=True)` (3.3x for the default
suite). Not counted: the see-through attacks, which run only where gradient masking is detected
(evaluation/worst_case.py). The numbers hold for the device the dry run ran on; they are an estimate, not a
measurement of the suite.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.gpu import place
from ..evaluation.attacks import ATTACKS, attacks_of, build_attack
from ..evaluation.evaluate import NOISE_DRAWS
from ..evaluation.threat_model import NOISE_DRAWS as NOISE_DRAWS_L2
from ..evaluation.threat_model import unbounded_attack
from ..evaluation.worst_case import STRONG_RESTARTS
from ..methods import METHODS, Batch, TrainContext
from ..models.fold import fold_batch_norm
from ..models.registry import ModelInput, build_model, count_params
from ..suite.configs import EvalConfig
from ..suite.jobs import Job
from ..suite.load import Suite
from .job_cost import PassCounter as _PassCounter
from .job_cost import teacher_passes

MEASURE_REPEATS = 7
MEASURE_BUDGET_S = 2.0
CPU_MEASURE_BATCH = 8
CPU_BUDGET_S = 1.0  # on a CPU, measure at the real batch size when one step of it takes less than this
ATTACK_MEASURE_STEPS = 2  # PGD steps timed for the evaluation's cost of one attack step


@dataclass(frozen=True)
class DataShape:
    shape: tuple[int, int, int]
    num_classes: int
    n_train: int
    n_test: int


def data_shape(suite: Suite) -> DataShape:
    """Shape, classes and split sizes of the suite's data, without loading the images."""
    import numpy as np

    from ..data.load import load_data, user_path
    from ..data.torchvision_sets import SETS

    cfg = suite.data
    if cfg.name in SETS:
        s = SETS[cfg.name]
        shape, k, n_tr, n_te = s.shape, s.num_classes, s.n_train, s.n_test
    elif cfg.name.startswith("npz:"):
        with np.load(user_path(cfg.name), allow_pickle=False) as f:
            x = f["x_train"]
            n_tr, n_te, k = len(x), len(f["y_test"]), int(f["y_train"].max()) + 1
            dims = x.shape[1:]
            shape = (1, *dims) if len(dims) == 2 else (dims[2], dims[0], dims[1]) if dims[2] <= 4 else dims
    else:  # digits, folder:...: small enough to load
        d = load_data(cfg)
        return DataShape(d.shape, d.num_classes, len(d.x_train), len(d.x_test))
    n_tr = min(n_tr, cfg.train_subset or n_tr)
    n_te = min(n_te, cfg.test_subset or n_te)
    return DataShape(tuple(shape), k, n_tr, n_te)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_arch(arch: str, ds: DataShape, batch: int, device, eval_batch: int | None = None) -> dict:
    """Seconds per example of a training forward+backward ("fb") and of a no-grad forward ("f"); and, as the
    evaluation runs them (`eval_batch` examples at once, on a copy with batch norms folded, no weight
    gradients), of an attack step ("afb": forward+backward to the input) and of a forward ("af")."""
    inp = ModelInput(ds.shape, ds.num_classes, (0.5,) * ds.shape[0], (0.25,) * ds.shape[0])
    model = place(build_model(arch, inp), device, None)  # the CPU layout of a real run (gpu.place)

    def data(b):
        return torch.rand(b, *ds.shape, device=device), torch.randint(0, ds.num_classes, (b,), device=device)

    b = batch
    if device.type != "cuda":  # small models: the real batch size; big ones: a small batch, scaled linearly
        x, y = data(2)
        F.cross_entropy(model.train()(x), y).backward()  # the first step also sets up kernels: not timed
        t0 = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        if (time.perf_counter() - t0) / 2 * batch > CPU_BUDGET_S:
            b = min(batch, CPU_MEASURE_BATCH)
    x, y = data(b)

    def fb():
        model.train()
        loss = F.cross_entropy(model(x), y)
        loss.backward()

    @torch.no_grad()
    def fwd():
        model.eval()
        model(x)

    out = {name: _per_example(fn, b, device) for name, fn in (("fb", fb), ("f", fwd))}
    out["params"] = count_params(model)
    folded = fold_batch_norm(model.eval()).requires_grad_(False)
    eb = b if b < batch else min(eval_batch or batch, ds.n_test)  # at the evaluation's batch unless scaled down
    xe, ye = data(eb)

    attack = build_attack("pgd", folded, 0.03, EvalConfig(pgd_steps=ATTACK_MEASURE_STEPS), 0, ds.num_classes)

    def attack_step():
        attack(xe, ye)

    @torch.no_grad()
    def attack_fwd():
        folded(xe)

    out["afb"] = _per_example(attack_step, eb, device) / ATTACK_MEASURE_STEPS
    out["af"] = _per_example(attack_fwd, eb, device)
    return out


def _per_example(fn, batch: int, device) -> float:
    """Seconds per example of `fn` on `batch` examples: the fastest of up to MEASURE_REPEATS timed calls (within
    MEASURE_BUDGET_S), so that other processes of a busy machine taking the core now and then do not count."""
    fn()  # warm-up (allocations, cudnn autotuning)
    times = []
    while len(times) < MEASURE_REPEATS and (len(times) < 2 or sum(times) < MEASURE_BUDGET_S):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times) / batch


def count_passes(job: Job, ds: DataShape) -> dict:
    """Forward passes per training step of the job's model (grad) and teachers (no grad), on stand-in models."""
    shape = (ds.shape[0], 8, 8)
    inp = ModelInput(shape, ds.num_classes, (0.5,) * shape[0], (0.25,) * shape[0])
    t = job.train
    x, y = torch.rand(4, *shape), torch.randint(0, ds.num_classes, (4,))
    torch.manual_seed(0)
    if job.is_teacher:
        if job.pair.pretrained is not None:
            return {"student": 0, "teacher": 0}
        return {"student": teacher_passes(job.teacher_kind, job.params, t, ds.shape[0], ds.num_classes),
                "teacher": 0}
    cls = METHODS.get(job.method)
    student = build_model("cnn-small", inp)
    teachers = [build_model("cnn-small", inp).eval() for _ in job.teacher_specs()]
    ctx = TrainContext(ds.num_classes, shape, t.epochs, t.adv_eps, t.adv_steps, t.step_size(), t.adv_warmup)
    distiller = cls(student, teachers, dict(job.params), ctx)
    s_count, t_counts = _PassCounter(student), [_PassCounter(m) for m in teachers]
    distiller.train()
    with torch.no_grad():
        logits = [m(x) for m in teachers] if cls.uses_teacher_logits else []
    for c in t_counts:
        c.nograd = c.grad = 0
    distiller.losses(Batch(x, y, logits, 0.5))
    return {"student": s_count.grad + s_count.nograd,
            "teacher": sum(c.grad + c.nograd for c in t_counts),
            "teacher_logits": len(teachers) if cls.uses_teacher_logits else 0}


def eval_grad_steps(ev, broken_at_first: bool = False) -> int:
    """Gradient steps per test example of the evaluation: every example attacked at every eps (an upper bound),
    or (`broken_at_first`) every example broken at the smallest eps, so that no attack runs at a larger one
    and the convergence check finds nothing left to attack (a lower bound for a model that classifies its test
    examples correctly)."""
    steps = 0
    for norm, radii in (("linf", ev.eps), ("l2", ev.eps_l2)):
        names = attacks_of(norm, ev.attacks)
        if not radii or not names:
            continue
        per_eps = sum(ATTACKS.get(a).grad_steps(ev) for a in names)  # each attack's entry knows its cost
        steps += (1 if broken_at_first else len(radii)) * per_eps
        if ev.sanity and not broken_at_first:  # the strongest single attack (at most the costliest) again: 2x steps
            single = [ATTACKS.get(a).grad_steps(ev) for a in names if not ATTACKS.get(a).components]
            steps += STRONG_RESTARTS * 2 * max(single, default=0)
            unbounded = unbounded_attack(names, norm) if norm != "linf" else None  # at half the image diagonal
            steps += ATTACKS.get(unbounded).grad_steps(ev) if unbounded else 0
    extra = [e for e in ev.sweep_eps if e not in ev.eps and not (broken_at_first and e > min(ev.eps))]
    steps += len(extra) * (ev.pgd_steps + ev.apgd_steps)
    return steps + 1  # the input gradients (the masking evidence)


def eval_forward_passes(ev, transfer: bool = False) -> int:
    """Forward passes per test example of the evaluation besides the attacks: clean, the corruptions, the noise
    sweep, the sanity check's noise draws, and the transfer examples (`transfer`: a student with a teacher)."""
    passes = 2 + len(ev.corruptions) * len(ev.severities) + len(ev.noise_families) * len(ev.noise_levels)
    passes += NOISE_DRAWS if ev.sanity else 0
    passes += NOISE_DRAWS_L2 if ev.sanity and ev.eps_l2 else 0
    if ev.certify is not None:  # the noisy copies of every certified example (every skip-th), per sigma
        passes += math.ceil(len(ev.certify.sigma) * (ev.certify.n0 + ev.certify.n) / ev.certify.skip)
    return passes + (len(ev.eps) if transfer else 0)


def estimate(suite: Suite, device, progress=print) -> dict:
    """Per job: epochs and estimated train/eval seconds on `device`; and the totals."""
    ds = data_shape(suite)
    jobs = suite.jobs(torch.device(device).type == "cuda")
    t = suite.train
    archs = set()
    for j in jobs:
        if not j.is_teacher:
            archs.add(j.pair.student)
        archs.add(j.pair.teacher if j.pair.pretrained is None else j.pair.pretrained.arch)
    archs = sorted(a for a in archs if a)  # a RobustBench teacher has no kdbench architecture to measure
    costs = {}
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":  # measured on a job's threads; and every thread of a busy machine
        torch.set_num_threads(suite.executor.cpus_per_job)  # would be stalled by the others (1000x, measured)
    try:
        for arch in archs:
            progress(f"  measuring {arch} on {device} ...")
            costs[arch] = measure_arch(arch, ds, t.batch_size, device, suite.eval.batch_size)
    finally:
        torch.set_num_threads(threads)
    augmented = bool(suite.data.augment)
    steps_per_epoch = math.ceil(ds.n_train / min(t.batch_size, ds.n_train))

    def examples(batch_size: int) -> int:  # examples per epoch, the last batch padded to a full one
        return math.ceil(ds.n_train / min(batch_size, ds.n_train)) * min(batch_size, ds.n_train)

    rows = []
    sharing = Counter(_transfer_key(job) for job in jobs if not job.is_teacher and job.teacher_specs())
    for job in jobs:
        passes = count_passes(job, ds)
        teacher_arch = job.pair.pretrained.arch if job.pair.pretrained is not None else job.pair.teacher
        t_cost = costs.get(teacher_arch or "", {"f": 0.0, "fb": 0.0, "af": 0.0, "afb": 0.0})
        if job.is_teacher:
            trained = job.pair.pretrained is None
            epochs = t.teacher_epochs if trained else 0
            train_s = epochs * examples(t.batch_size) * passes["student"] * t_cost["fb"]
            model_cost = t_cost
        else:
            s_cost = costs[job.pair.student]
            epochs = job.train.epochs  # a method's own training settings, where it has them
            per_example = passes["student"] * s_cost["fb"] + passes["teacher"] * t_cost["f"]
            if passes.get("teacher_logits"):
                if augmented:
                    per_example += passes["teacher_logits"] * t_cost["f"]
                else:  # cached once per job
                    per_example += passes["teacher_logits"] * t_cost["f"] / max(epochs, 1)
            train_s = epochs * examples(job.train.batch_size) * per_example
            model_cost = s_cost
        ev = job.eval
        transfer = not job.is_teacher and ev.transfer and bool(job.teacher_specs())
        eval_s = ds.n_test * (eval_grad_steps(ev) * model_cost["afb"]
                              + eval_forward_passes(ev, transfer) * model_cost["af"])
        if transfer:
            # crafted once per (teacher, seed) and shared by the jobs of that teacher and seed
            eval_s += ds.n_test * len(ev.eps) * ev.pgd_steps * t_cost["afb"] / sharing[_transfer_key(job)]
        rows.append({"job": job, "epochs": epochs, "train_s": train_s, "eval_s": eval_s})
    return {"data": ds, "rows": rows, "costs": costs, "steps_per_epoch": steps_per_epoch,
            "train_s": sum(r["train_s"] for r in rows), "eval_s": sum(r["eval_s"] for r in rows)}


def _transfer_key(job: Job):
    """What a student's transfer examples depend on: its (first) teacher and its seed."""
    return job.teacher_specs()[0], job.seed


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 36 else f"{seconds:.1f} s"


def format_estimate(suite: Suite, est: dict, device, done: set[str] = frozenset()) -> str:
    ds = est["data"]
    kind = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (f"suite {suite.name}: {len(est['rows'])} jobs on {suite.data.name} "
              f"({ds.n_train} train / {ds.n_test} test images of {'x'.join(map(str, ds.shape))}, "
              f"{ds.num_classes} classes), batch {suite.train.batch_size}, {est['steps_per_epoch']} steps/epoch")
    lines = [header,
             "",
             f"{'job id':<16}  {'job':<52} {'epochs':>6} {'train':>10} {'eval':>10}  status"]
    for r in est["rows"]:
        job = r["job"]
        status = "done" if job.job_id in done else "to run"
        lines.append(f"{job.job_id:<16}  {job.label()[:52]:<52} {r['epochs']:>6} {_hours(r['train_s']):>10} "
                     f"{_hours(r['eval_s']):>10}  {status}")
    todo = [r for r in est["rows"] if r["job"].job_id not in done]
    total = sum(r["train_s"] + r["eval_s"] for r in todo)
    everything = sum(r["train_s"] + r["eval_s"] for r in est["rows"])
    lines += ["", "measured per architecture (seconds per example: train step forward+backward / forward):"]
    for arch, c in est["costs"].items():
        epoch = c["fb"] * ds.n_train
        lines.append(f"  {arch:<18} {c['params']:>12,} params  {c['fb'] * 1e3:8.3f} ms / {c['f'] * 1e3:8.3f} ms"
                     f"  (one plain epoch ~ {_hours(epoch)})")
    unit = "GPU" if device.type == "cuda" else "CPU"
    summary = (f"ESTIMATE for this device ({device}, {kind}), extrapolated from measured per-example times: "
               f"{total / 3600:.2f} {unit} hours for the {len(todo)} jobs still to run (training "
               f"{_hours(sum(r['train_s'] for r in todo))}, evaluation {_hours(sum(r['eval_s'] for r in todo))}); "
               f"{everything / 3600:.2f} h for all {len(est['rows'])} jobs, summed over the jobs (each on "
               f"cpus_per_job threads; parallel workers divide the wall time). Another device will differ; nothing "
               f"was run.")
    lines += ["", summary]
    return "\n".join(lines)
