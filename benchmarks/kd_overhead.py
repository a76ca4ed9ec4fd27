"""A `kd` epoch vs a `ce` epoch on the same student: the teacher's outputs on un-augmented data are computed
once per job and cached, so KD should cost about what CE costs. Target: at most 1.10x.

    python benchmarks/kd_overhead.py [--quick] [--shape cifar]
`--shape cifar`: synthetic 3x32x32 images (256 training images), a ResNet-20 student and a ResNet-18 teacher,
robustness-cifar10's [train] table (SGD, batch 128), samples of one epoch (a ResNet-20 step on the CPU takes seconds, not milliseconds).
The last line printed is the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import add_shape_arg, bench_data, default_train_config, paired_ratio, ratio_line  # noqa: E402

from kdbench.core.gpu import place  # noqa: E402
from kdbench.methods import METHODS, Batch, TrainContext  # noqa: E402
from kdbench.models.registry import ModelInput, build_model  # noqa: E402
from kdbench.training.loop import fit, predict_logits  # noqa: E402


CPU = torch.device("cpu")
EPOCHS_PER_SAMPLE = {"digits": 3, "cifar": 1}  # 3 for digits: a 0.1 s epoch alone is at the mercy of machine noise
ARCHS = {"digits": ("cnn-small", "cnn-large"), "cifar": ("resnet20", "resnet18")}  # (student, teacher)


def epoch_runner(method: str, data, teacher, cfg, student: str, n_epochs: int):
    inp = ModelInput(data.shape, 10, data.mean, data.std)
    cls = METHODS.get(method)
    ctx = TrainContext(10, data.shape, 1, cfg.adv_eps, cfg.adv_steps, cfg.step_size())
    x, y = data.x_train, data.y_train
    torch.manual_seed(0)
    d = cls(place(build_model(student, inp), CPU, None), [teacher] if cls.teacher_kind else [], dict(cls.defaults), ctx)
    cached = [predict_logits(teacher, x)] if cls.uses_teacher_logits else []  # once per job, not per epoch

    def epochs():
        fit(d, d.trainable_parameters(), lambda idx, p: d.losses(Batch(x[idx], y[idx], [c[idx] for c in cached], p)),
            len(x), n_epochs, cfg, 0, CPU)

    return epochs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a job's threads in a default run)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="training batch (default: the suite's, robustness or robustness-cifar10)")
    add_shape_arg(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = bench_data(args.shape)
    student, teacher_arch = ARCHS[args.shape]
    teacher = place(build_model(teacher_arch, ModelInput(data.shape, 10, data.mean, data.std)), CPU, None)
    teacher.eval().requires_grad_(False)
    cfg = default_train_config(args.batch_size, args.shape)
    k = EPOCHS_PER_SAMPLE[args.shape]
    repeats = 3 if args.quick else 9 if args.shape == "digits" else 5
    r, t_kd, t_ce = paired_ratio(epoch_runner("kd", data, teacher, cfg, student, k),
                                 epoch_runner("ce", data, teacher, cfg, student, k), repeats)
    t0 = time.perf_counter()
    predict_logits(teacher, data.x_train)
    once = time.perf_counter() - t0
    print(f"one epoch over {len(data.x_train)} {data.name} images, {student} student, {teacher_arch} teacher, batch "
          f"{cfg.batch_size}: kd {t_kd / k * 1e3:.1f} ms, ce {t_ce / k * 1e3:.1f} ms (median of {repeats} samples of "
          f"{k} epochs); the teacher's one pass over the training set per job: {once * 1e3:.1f} ms")
    print(ratio_line("kd epoch / ce epoch", r, 1.10))


if __name__ == "__main__":
    main()
