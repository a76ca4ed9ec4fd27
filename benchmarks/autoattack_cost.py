"""Full-strength AutoAttack's cost per 1,000 CIFAR-shaped images (3x32x32), for a ResNet-18.

    python benchmarks/autoattack_cost.py [--arch resnet18] [--device cpu] [--batch 16] [--time-images N]

AutoAttack runs each component (APGD-CE, APGD-T, FAB-T, Square) only on the examples still robust after the
previous ones, so its cost depends on the model; this reports the upper bound, a model that nothing breaks
(every component runs on every image; see _autoattack_cost.py). The attack is whatever kdbench registers as
`autoattack` (built from the registry with robustness-cifar10's `[eval]` table; an entry with `components` runs
each on the survivors); its summary is printed.

On a CPU a full AutoAttack through a ResNet-18 takes minutes per image, so the figure is extrapolated: the
forward passes per image (with and without an input gradient) are counted on a small stand-in model, and
multiplied by the measured time per image of those passes for the architecture at `--batch`.
`--time-images N` also runs the real attack on N images and times it, to check the extrapolation.
On CUDA the attack is timed directly on `--time-images` images (default 100).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _autoattack_cost as aa  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16, help="batch of the timed passes (CPU)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a job's threads in a default run)")
    ap.add_argument("--time-images", type=int, default=0, help="also time the real attack on this many images")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"registered autoattack: {aa.registered_version()}")
    out = {}
    if device.type == "cpu":
        counted = aa.count_passes()
        print(f"passes per image when every image survives every component (counted on {counted['stand_in']}, "
              f"{counted['images']} images, robust fraction after the attack {counted['robust_fraction']:.2f}): "
              f"{counted['grad_passes_per_image']:.0f} with an input gradient, {counted['nograd_passes_per_image']:.0f} "
              f"forward only")
        out["extrapolated"] = e = aa.extrapolate(args.arch, device, args.batch, counted)
        print(f"{args.arch} on the CPU ({args.threads} thread(s)), batch {args.batch}: {e['seconds_per_grad_pass'] * 1e3:.1f} "
              f"ms per image per gradient pass, {e['seconds_per_forward'] * 1e3:.1f} ms per forward")
        print(f"  (CPU time: {e['cpu_seconds_per_grad_pass'] * 1e3:.1f} ms and {e['cpu_seconds_per_forward'] * 1e3:.1f} ms; "
              f"on a machine busy with other work the wall time is longer)")
        print(f"EXTRAPOLATED: {e['per_1000_s']:,.0f} s ({e['per_1000_s'] / 3600:.1f} h) per 1,000 images of wall time; "
              f"{e['per_1000_cpu_s']:,.0f} s ({e['per_1000_cpu_s'] / 3600:.1f} h) of CPU time")
    if args.time_images or device.type == "cuda":
        out["timed"] = t = aa.time_autoattack(args.arch, device, args.time_images or 100)
        print(f"timed on {t['images']} images: {t['seconds']:.1f} s, {t['per_1000_s']:,.0f} s "
              f"({t['per_1000_s'] / 3600:.1f} h) per 1,000 images (robust fraction after the attack "
              f"{t['robust_fraction']:.2f})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
