"""What one attack step costs on the digits models, and how much of an evaluation is per-call overhead.

    python benchmarks/pass_cost.py                     # the cost model of a pass, cnn-small and cnn-large
    python benchmarks/pass_cost.py --jobs ce:1,at:1    # and the passes of those jobs' evaluations

1. A pass as an attack runs it: forward and backward to the input of the batch-norm-folded, channels-last copy that
   `evaluate` attacks (no weight gradients), CE loss, one torch thread. Timed with the thread's CPU clock (user +
   system) at several batch sizes, the sizes taking turns, the median of the repeats; a least-squares line gives
   the fixed cost of a call and the cost per image: t(n) = fixed + n * per_image.
2. Where a pass's time goes at batch 4 and at the test set's size (359), from torch.profiler: the convolutions
   (forward, and backward to the input) against everything else.
3. `--jobs`: the evaluation of each named job of the default suite (its student trained first), with every call of
   the model counted: calls, images passed, the mean batch, and the share of the cost model's time that is the
   fixed part (calls x fixed over calls x fixed + images x per_image).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

BATCHES = (4, 16, 64, 128, 256, 359)
REPEATS = 9


def folded(arch: str):
    from kdbench.core.gpu import place
    from kdbench.models.fold import fold_batch_norm
    from kdbench.models.registry import ModelInput, build_model

    torch.manual_seed(0)
    model = place(build_model(arch, ModelInput((1, 8, 8), 10, (0.3,), (0.3,))), torch.device("cpu"), None)
    return fold_batch_norm(model.eval().requires_grad_(False))


def step_fn(model, n: int):
    x = torch.rand(n, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (n,))

    def step():
        xa = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xa), y), xa)

    return step


def cost_model(arch: str) -> tuple[float, float, dict]:
    model = folded(arch)
    steps = {n: step_fn(model, n) for n in BATCHES}
    for s in steps.values():
        for _ in range(5):
            s()
    times: dict[int, list[float]] = {n: [] for n in BATCHES}
    for _ in range(REPEATS):
        for n, s in steps.items():
            reps = max(5, 1500 // n)
            t0 = time.thread_time()
            for _ in range(reps):
                s()
            times[n].append((time.thread_time() - t0) / reps)
    med = {n: statistics.median(v) for n, v in times.items()}
    xs, ys = list(med), list(med.values())
    mx, my = statistics.mean(xs), statistics.mean(ys)
    per_image = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
    return my - per_image * mx, per_image, med


def conv_share(arch: str, n: int) -> float:
    from torch.profiler import ProfilerActivity, profile

    step = step_fn(folded(arch), n)
    for _ in range(10):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(max(20, 2000 // n)):
            step()
    rows = prof.key_averages()
    total = sum(r.self_cpu_time_total for r in rows)
    convolutions = ("aten::mkldnn_convolution", "aten::convolution_backward")
    conv = sum(r.self_cpu_time_total for r in rows if r.key in convolutions)
    return conv / total


def job_passes(spec: str, fixed: float, per_image: float) -> None:
    """Count the model calls of the evaluation of the default suite's job `method:seed`."""
    from pathlib import Path
    from tempfile import TemporaryDirectory

    import kdbench.evaluation.evaluate as evaluate_mod
    from kdbench.execution.job import evaluate_job_model, train_student
    from kdbench.execution.run_progress import Progress
    from kdbench.execution.workspace import Workspace
    from kdbench.suite.load import load_suite
    from kdbench.training.teacher_cache import get_teacher

    method, seed = spec.rsplit(":", 1)
    job = next(j for j in load_suite("robustness").jobs() if j.method == method and j.seed == int(seed))
    sizes: list[int] = []
    fold = evaluate_mod.fold_batch_norm

    def counting_fold(model):
        copy = fold(model)
        forward = copy.forward

        def counted(x):
            sizes.append(x.shape[0])
            return forward(x)

        copy.forward = counted
        return copy

    with TemporaryDirectory() as cache:
        ws = Workspace(torch.device("cpu"), Path(cache))
        data = ws.get_data(job.data)
        teachers = [get_teacher(s, job, ws, Progress(1, quiet=True)) for s in job.teacher_specs()]
        model, _ = train_student(job, data, teachers, ws)
        evaluate_mod.fold_batch_norm = counting_fold
        try:
            t0 = time.thread_time()
            evaluate_job_model(job, ws, model, None, job.teacher_specs(), data)  # transfer examples not crafted
            cpu = time.thread_time() - t0
        finally:
            evaluate_mod.fold_batch_norm = fold
    calls, images = len(sizes), sum(sizes)
    fixed_part = calls * fixed / (calls * fixed + images * per_image)
    print(f"{spec:<12} {calls:6d} calls {images:8d} images  mean batch {images / calls:5.0f}  "
          f"{len(set(sizes)):3d} sizes  fixed part {fixed_part:5.1%}  evaluation CPU {cpu:.2f}s "
          f"(model: {calls * fixed + images * per_image:.2f}s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="cnn-small,cnn-large")
    ap.add_argument("--jobs", default="", help="method:seed of the default suite, comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = {}
    for arch in args.archs.split(","):
        fixed, per_image, med = cost_model(arch)
        models[arch] = (fixed, per_image)
        print(f"{arch}: a pass (forward + backward to the input) = {fixed * 1e3:.3f} ms + {per_image * 1e6:.2f} us "
              "x images; " + ", ".join(f"{n}: {t * 1e3:.2f} ms" for n, t in med.items()))
        print(f"{arch}: convolutions' share of a pass: batch 4 {conv_share(arch, 4):.0%}, batch 359 "
              f"{conv_share(arch, 359):.0%}")
    if args.jobs:
        fixed, per_image = models.get("cnn-small", next(iter(models.values())))
        for spec in args.jobs.split(","):
            job_passes(spec, fixed, per_image)


if __name__ == "__main__":
    main()
