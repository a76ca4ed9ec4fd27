"""The `ce` epoch (kdbench's training loop: tensors on the device, index-slice batches, no DataLoader
workers) vs the sum of its forward+backward passes on the same batches. Target: at most 1.10x.

    python benchmarks/data_pipeline.py [--quick] [--shape cifar]
`--shape cifar`: synthetic 3x32x32 images (256 training images), a ResNet-20, robustness-cifar10's [train]
table (SGD, batch 128) and its augmentation (random crop and flip, on the batch, as a run does), in samples of
one epoch; the passes it is compared with see un-augmented batches, so the ratio includes the augmentation.
The last line printed is the ratio.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import add_shape_arg, bench_data, default_train_config, paired_ratio, ratio_line  # noqa: E402

from kdbench.data.augment import make_augmenter  # noqa: E402
from kdbench.core.gpu import place  # noqa: E402
from kdbench.models.registry import ModelInput, build_model  # noqa: E402
from kdbench.training.optim import FlatOptimizer  # noqa: E402
from kdbench.training.loop import fit  # noqa: E402


CPU = torch.device("cpu")
EPOCHS_PER_SAMPLE = {"digits": 3, "cifar": 1}  # 3 for digits: a 0.1 s epoch alone is at the mercy of machine noise
ARCH = {"digits": "cnn-small", "cifar": "resnet20"}

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
    x, y = data.x_train, data.y_train
    model = place(build_model(ARCH[args.shape], ModelInput(data.shape, 10, data.mean, data.std)), CPU, None)  # as a run does
    cfg = default_train_config(args.batch_size, args.shape)
    params = list(model.parameters())
    k = EPOCHS_PER_SAMPLE[args.shape]
    augment = make_augmenter(("random_crop", "horizontal_flip") if args.shape == "cifar" else (), 0, CPU)
    batch = (lambda idx: x[idx]) if augment is None else (lambda idx: augment(x[idx]))

    def epoch():
        fit(model, params, lambda idx, p: {"ce": F.cross_entropy(model(batch(idx)), y[idx])}, len(x), k, cfg, 0, CPU)

    bs = cfg.batch_size
    batches = [torch.arange(i, min(i + bs, len(x))) for i in range(0, len(x), bs)]
    assert len(batches) == math.ceil(len(x) / bs)

    def passes():  # only the forward and backward passes of the same batches
        model.train()
        for idx in batches * k:
            for p in params:
                p.grad = None
            F.cross_entropy(model(x[idx]), y[idx]).backward()

    def passes_and_steps():  # the same passes, each followed by the optimizer step the epoch takes
        model.train()
        opt = FlatOptimizer(params, cfg, len(batches) * k)
        for idx in batches * k:
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        opt.release()

    repeats = 3 if args.quick else 9 if args.shape == "digits" else 5
    r_opt, _, t_steps = paired_ratio(epoch, passes_and_steps, repeats)
    r, t_epoch, t_passes = paired_ratio(epoch, passes, repeats)
    print(f"{ARCH[args.shape]} on {data.name} images: ce epoch (batch {bs}) {t_epoch / k * 1e3:.1f} ms vs its {len(batches)} forward+backward passes "
          f"{t_passes / k * 1e3:.1f} ms (the epoch adds shuffling, {'augmentation, ' if augment else ''}the optimizer step and the schedule; median of "
          f"{repeats} samples of {k} epochs)")
    print(f"the same passes with their {cfg.optimizer} steps: {t_steps / k * 1e3:.1f} ms; ce epoch / those: "
          f"{r_opt:.3f} (what the data handling and the loop add beyond the optimizer)")
    print(ratio_line("ce epoch / forward+backward passes", r, 1.10))


if __name__ == "__main__":
    main()
