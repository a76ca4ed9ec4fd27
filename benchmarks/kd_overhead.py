"""A `kd` epoch vs a `ce` epoch on the same student: the teacher's outputs on un-augmented data are computed
once per job and cached, so KD should cost about what CE costs. Target: at most 1.10x.

    python benchmarks/kd_overhead.py [--quick]
The last line printed is the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import default_train_config, paired_ratio, ratio_line  # noqa: E402

from kdbench.data import DataConfig, load_data  # noqa: E402
from kdbench.gpu import place  # noqa: E402
from kdbench.methods import METHODS, Batch, TrainContext  # noqa: E402
from kdbench.models import ModelInput, build_model  # noqa: E402
from kdbench.train import fit, predict_logits  # noqa: E402


CPU = torch.device("cpu")
EPOCHS_PER_SAMPLE = 3  # each timed sample trains 3 epochs: a 0.1 s epoch alone is at the mercy of machine noise

def epoch_runner(method: str, data, teacher, cfg):
    inp = ModelInput(data.shape, 10, data.mean, data.std)
    cls = METHODS.get(method)
    ctx = TrainContext(10, data.shape, 1, cfg.adv_eps, cfg.adv_steps, cfg.step_size())
    x, y = data.x_train, data.y_train
    torch.manual_seed(0)
    d = cls(place(build_model("cnn-small", inp), CPU, None), [teacher] if cls.teacher_kind else [], dict(cls.defaults), ctx)
    cached = [predict_logits(teacher, x)] if cls.uses_teacher_logits else []  # once per job, not per epoch

    def epochs():
        fit(d, d.trainable_parameters(), lambda idx, p: d.losses(Batch(x[idx], y[idx], [c[idx] for c in cached], p)),
            len(x), EPOCHS_PER_SAMPLE, cfg, 0, CPU)

    return epochs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a job's threads in a default run)")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch (default: the default suite's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(DataConfig())
    teacher = place(build_model("cnn-large", ModelInput(data.shape, 10, data.mean, data.std)), CPU, None)
    teacher.eval().requires_grad_(False)
    cfg = default_train_config(args.batch_size)
    r, t_kd, t_ce = paired_ratio(epoch_runner("kd", data, teacher, cfg), epoch_runner("ce", data, teacher, cfg),
                                 3 if args.quick else 9)
    t0 = time.perf_counter()
    predict_logits(teacher, data.x_train)
    once = time.perf_counter() - t0
    print(f"one epoch over {len(data.x_train)} digits, batch {cfg.batch_size}: kd {t_kd / EPOCHS_PER_SAMPLE * 1e3:.1f} ms, ce {t_ce / EPOCHS_PER_SAMPLE * 1e3:.1f} ms (median of 9 samples of 3 epochs); "
          f"the teacher's one pass over the training set per job: {once * 1e3:.1f} ms")
    print(ratio_line("kd epoch / ce epoch", r, 1.10))


if __name__ == "__main__":
    main()
