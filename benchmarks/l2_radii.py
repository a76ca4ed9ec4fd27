"""How a dataset's L2 radii are chosen, once, from an undefended model (docs/evaluation.md, "The L2 threat model").

The rule: on a doubling grid of radii starting at 1/64 of the image diagonal sqrt(C*H*W), find the first radius at
which the undefended model's worst case (APGD-CE and APGD-DLR in L2, `apgd_steps` steps each, kdbench's attacks)
is at or below chance (1/C); the radii are that one and the two before it (the model falls from about its clean
accuracy to chance across them), the headline the middle one. The undefended model is the suite's `ce` student of
seed 1, its saved weights in the results folder; the images are the first 500 of the training split (no test
image is looked at).

    python benchmarks/l2_radii.py --suite robustness             # digits: prints the grid and the radii

Digits (cnn-small `ce` student, seed 1 of results/robustness, APGD 30 steps): the grid 0.125, 0.25, 0.5, 1, 2 gave
the radii 0.25, 0.5, 1.0 (docs/evaluation.md has the accuracies).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from kdbench.data.load import load_data
    from kdbench.evaluation.attacks import attack_correct
    from kdbench.models.registry import ModelInput, build_model
    from kdbench.records.students import verified_weights
    from kdbench.suite.load import load_suite
    from kdbench.training.loop import predict_logits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="robustness")
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--examples", type=int, default=500)
    ap.add_argument("--steps", type=int, default=6, help="radii on the grid (doublings)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    suite = load_suite(args.suite)
    folder = args.results / suite.name
    records = [json.loads(p.read_text()) for p in sorted((folder / "records").glob("*.json"))]
    found = [r for r in records if r["role"] == "student" and r["method"] == "ce" and r["seed"] == 1]
    if not found:
        print(f"no `ce` student of seed 1 under {folder}: run `python -m kdbench run --suite {suite.name} "
              "--methods ce --seeds 1` first", file=sys.stderr)
        return 2
    record = found[0]
    data = load_data(suite.data)
    model = build_model(record["student"]["arch"], ModelInput(data.shape, data.num_classes, data.mean, data.std))
    model.load_state_dict(torch.load(verified_weights(folder, record), weights_only=True))
    model.eval().requires_grad_(False)
    x, y = data.x_train[:args.examples], data.y_train[:args.examples]
    diagonal = math.sqrt(math.prod(data.shape))
    chance = 1.0 / data.num_classes
    predict = lambda xa: predict_logits(model, xa, 1024).argmax(1)  # noqa: E731
    clean = (predict(x) == y).float().mean().item()
    print(f"{suite.data.name}: images {'x'.join(map(str, data.shape))}, diagonal {diagonal:g}; undefended model: "
          f"ce seed 1 ({record['job_id']}), clean accuracy on {len(x)} training images {clean:.3f}")
    grid, rows = [diagonal / 64 * 2 ** k for k in range(args.steps)], []
    for r in grid:
        t0 = time.process_time()
        ok = predict(x) == y
        for name in ("apgd-ce-l2", "apgd-dlr-l2"):
            idx = torch.nonzero(ok).flatten()
            if len(idx):
                sub, _, _ = attack_correct(name, model, x[idx], y[idx], r, suite.eval, 0, data.num_classes, predict)
                ok[idx] = sub
        acc = ok.float().mean().item()
        rows.append((r, acc))
        print(f"  radius {r:g}: worst case {acc:.3f}  ({time.process_time() - t0:.1f} CPU s)")
    first = next((i for i, (_, acc) in enumerate(rows) if acc <= chance), None)
    if first is None or first < 2:
        print("the rule needs the model at chance on the grid's third radius or later: widen the grid", file=sys.stderr)
        return 1
    radii = [rows[i][0] for i in range(first - 2, first + 1)]
    print(f"radii: {', '.join(f'{r:g}' for r in radii)}; headline {radii[1]:g} (chance {chance:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
