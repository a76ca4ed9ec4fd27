"""How close the default suite's L2 worst case is to a much stronger attack, on its committed students.

For each saved student of results/<suite> (seed 1 by default): `robust-l2@<headline radius>` as its record has it
(the suite's L2 attacks, and the see-through attacks where masking showed), against an L2 attack written from
plain torch in tests/independent_attack.py (200 steps, 10 random restarts, each of three losses: margin, CE and
CE on rescaled logits; an example counts only if it survives them all). Prints a markdown table (accuracy in %,
gap = the suite's minus the independent attack's) and the CPU time it took.

    python benchmarks/l2_trust.py [--results results] [--suite robustness] [--seed 1] [--methods at,ce]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main(argv=None) -> int:
    from independent_attack import strong_robust_l2

    from kdbench.core.gpu import place
    from kdbench.data.load import load_data
    from kdbench.models.registry import ModelInput, build_model
    from kdbench.records.students import verified_weights
    from kdbench.suite.jobs import job_from_config
    from kdbench.suite.load import load_suite

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--suite", default="robustness")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--methods", help="comma-separated (default: every student row)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    radius = load_suite(a.suite).eval.headline_eps_l2
    folder = a.results / a.suite
    records = [json.loads(p.read_text()) for p in sorted((folder / "records").glob("*.json"))]
    chosen = sorted((r for r in records if r["role"] == "student" and r["seed"] == a.seed and "student" in r
                     and (not a.methods or r["method"] in a.methods.split(","))), key=lambda r: r["method"])
    key = f"robust-l2@{radius:g}"
    print(f"| student | clean | {key} (the suite's) | independent (200 x 10 x 3) | gap | flags |")
    print("|---|---|---|---|---|---|")
    gaps, cpu0 = {}, time.process_time()
    for record in chosen:
        data = load_data(job_from_config(record["config"], record["suite"]).data)
        model = build_model(record["student"]["arch"], ModelInput(data.shape, data.num_classes, data.mean, data.std))
        model.load_state_dict(torch.load(verified_weights(folder, record), weights_only=True))
        model = place(model, torch.device("cpu"), None).eval().requires_grad_(False)
        strong = strong_robust_l2(model, data.x_test, data.y_test, radius, steps=200, restarts=10, seed=0)
        ours, theirs = record["metrics"][key], strong.float().mean().item()
        gaps[record["method"]] = ours - theirs
        print(f"| {record['method']} | {100 * record['metrics']['clean']:.1f} | {100 * ours:.1f} | {100 * theirs:.1f} "
              f"| {100 * (ours - theirs):+.1f} | {' '.join(record['flags'])} |", flush=True)
    print(f"\n{len(gaps)} students, seed {a.seed}; largest gap {100 * max(gaps.values()):+.1f} points "
          f"({max(gaps, key=gaps.get)}); {time.process_time() - cpu0:.0f} CPU s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
