"""PGD-k (torchattacks) vs the floor any gradient attack pays: k forward+backward passes w.r.t. the input of
the same model on the same batch. Target: at most 1.15x. Also the adversarial-training inner loop (the
`adversarial` teacher kind's PGD on a training batch, model in train mode).

    python benchmarks/attack_efficiency.py [--quick] [--shape cifar] [--steps K]
`--shape cifar`: synthetic 3x32x32 images, ResNet-20 and ResNet-18 at batch 128 (evaluation and training
batches alike), PGD-K with K = 3 unless `--steps` says otherwise (the ratio is per step; a ResNet-18 pass over
128 images takes seconds on a CPU), and robustness-cifar10's eps 8/255 and step 2/255.
The last line printed is the ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import add_shape_arg, bench_data, paired_ratio, ratio_line  # noqa: E402

from kdbench.evaluation.attacks import build_attack  # noqa: E402
from kdbench.core.gpu import place  # noqa: E402
from kdbench.models.registry import ModelInput, build_model  # noqa: E402
from kdbench.suite.configs import EvalConfig, TrainConfig  # noqa: E402
from kdbench.training.teachers import TEACHER_KINDS  # noqa: E402


def floor_passes(model, x, y, k):
    """k forward+backward passes for the input gradient: what every k-step gradient attack must pay."""
    for _ in range(k):
        xr = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(xr), y)
        torch.autograd.grad(loss, xr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="PGD steps (default: 20; 3 with --shape cifar)")
    ap.add_argument("--archs", default=None, help="comma-separated architectures (default: both of the shape's)")
    ap.add_argument("--batch", type=int, default=None, help="batch (--shape cifar only; default 128)")
    ap.add_argument("--no-inner", action="store_true", help="leave out the adversarial-training inner loop")
    add_shape_arg(ap)
    args = ap.parse_args()
    cifar = args.shape == "cifar"
    repeats = 3 if args.quick or cifar else 7
    k = args.steps or (3 if cifar else 20)
    warmup = 1 if cifar else 2
    eps, step = (8 / 255, 2 / 255) if cifar else (0.1, None)
    batch = args.batch or 128
    data = bench_data(args.shape, batch, batch).to(args.device)
    inp = ModelInput(data.shape, 10, data.mean, data.std)
    ratios = []
    archs = args.archs.split(",") if args.archs else ("resnet20", "resnet18") if cifar else ("cnn-small", "cnn-large")
    for arch in archs:
        torch.manual_seed(0)
        model = place(build_model(arch, inp), torch.device(args.device), None).eval()  # as a CPU run places it
        x, y = data.x_test, data.y_test
        ev = EvalConfig(pgd_steps=k)
        atk = build_attack("pgd", model, eps, ev, 0, 10)
        r, t_attack, t_floor = paired_ratio(lambda: atk(x, y), lambda: floor_passes(model, x, y, k), repeats, warmup)
        ratios.append(r)
        print(f"evaluation PGD-{k}, {arch}, batch {len(x)}: attack {t_attack * 1e3:.1f} ms, "
              f"{k} fwd+bwd {t_floor * 1e3:.1f} ms, ratio {r:.3f}")

        if args.no_inner:
            continue
        # the adversarial-training inner loop: PGD on a training batch of a model in train mode
        cfg = TrainConfig(adv_eps=eps, adv_steps=k if cifar else 10, adv_step_size=step)
        model.train()
        inner = TEACHER_KINDS.get("adversarial").objective(model, {}, cfg)
        xb, yb = data.x_train[:batch if cifar else 64], data.y_train[:batch if cifar else 64]

        def floor_inner():  # the attack's passes (eval mode, as torchattacks runs it) + the training forward
            model.eval()
            floor_passes(model, xb, yb, cfg.adv_steps)
            model.train()
            F.cross_entropy(model(xb), yb)

        r, t_inner, t_inner_floor = paired_ratio(lambda: inner(xb, yb, 0.0), floor_inner, repeats, warmup)
        ratios.append(r)
        print(f"training inner PGD-{cfg.adv_steps} + loss, {arch}, batch {len(xb)}: {t_inner * 1e3:.1f} ms, floor "
              f"{t_inner_floor * 1e3:.1f} ms, ratio {r:.3f}")
    print(ratio_line("attack efficiency (worst case over models and loops)", max(ratios), 1.15))


if __name__ == "__main__":
    main()
