"""A short randomized-smoothing certification of saved students: does noise-trained distillation (`noise-kd`,
Gaussian noise of sigma 0.1 in training) certify more than `ce`? (docs/evaluation.md, "Certified robustness").

Certifies every test image of each saved student of the given methods (all their seeds) with kdbench's CERTIFY
(kdbench/evaluation/certify.py; Cohen, Rosenfeld & Kolter 2019) at a few hundred noise samples per image, and
prints per seed and per row the certified accuracy at each radius (per sigma, and the best sigma per radius), the
paired difference of each method to the first one (`ce`) on their common seeds with its test (stats/paired.py:
seeds x examples), and the CPU seconds each job's certification took (process time, one thread).

    python benchmarks/certify_students.py                      # the committed students of results/robustness
    python benchmarks/certify_students.py --results /tmp/run/robustness --out /tmp/certify.json

Defaults: sigma 0.1 (noise-kd's training noise; Cohen et al. certify at the noise a model was trained with) and
0.25 (the paper's smallest CIFAR-10 sigma), n0 = 100 and alpha = 0.001 as the paper, n = 500 estimation samples
(the paper: 100,000): with 500 samples the largest certifiable radius is 2.2 sigma (0.22 and 0.55).
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


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def main(argv=None) -> int:
    from kdbench.core.metric_names import at_eps
    from kdbench.data.load import load_data
    from kdbench.evaluation.certify import certified_metrics, max_radius
    from kdbench.models.fold import fold_batch_norm
    from kdbench.models.registry import ModelInput, build_model
    from kdbench.records.students import verified_weights
    from kdbench.stats.paired import compare, holm
    from kdbench.stats.spread import mean_std
    from kdbench.suite.configs import CertifyConfig
    from kdbench.suite.jobs import job_from_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "robustness")
    ap.add_argument("--methods", default="ce,noise-kd")
    ap.add_argument("--sigma", type=floats, default=(0.1, 0.25))
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--radii", type=floats, default=(0.0, 0.1, 0.2, 0.25, 0.5))
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None, help="write every number as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = CertifyConfig(sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, radii=args.radii,
                        batch_size=args.batch_size)
    methods = args.methods.split(",")
    records = [json.loads(p.read_text()) for p in sorted((args.results / "records").glob("*.json"))]
    records = sorted((r for r in records if r["role"] == "student" and r["method"] in methods),
                     key=lambda r: (methods.index(r["method"]), r["seed"]))
    if not records:
        print(f"no saved students of {args.methods} under {args.results}", file=sys.stderr)
        return 2
    data = load_data(job_from_config(records[0]["config"], records[0]["suite"]).data)
    print(f"certifying {len(data.x_test)} test images per student: sigma {', '.join(map(str, cfg.sigma))}, n0 "
          f"{cfg.n0}, n {cfg.n}, alpha {cfg.alpha}; largest certifiable radius "
          + ", ".join(f"{max_radius(cfg.n, cfg.alpha, s):.3f} (sigma {s:g})" for s in cfg.sigma))
    jobs = []
    for r in records:
        model = build_model(r["student"]["arch"], ModelInput(data.shape, data.num_classes, data.mean, data.std))
        model.load_state_dict(torch.load(verified_weights(args.results, r), weights_only=True))
        model = fold_batch_norm(model.eval()).requires_grad_(False)
        t0 = time.process_time()
        metrics, masks, evidence = certified_metrics(model, data.x_test, data.y_test, data.num_classes, cfg, r["seed"])
        seconds = time.process_time() - t0
        jobs.append({"method": r["method"], "seed": r["seed"], "job_id": r["job_id"], "cpu_seconds": seconds,
                     "metrics": metrics, "evidence": evidence, "masks": {k: v.tolist() for k, v in masks.items()}})
        print(f"  {r['method']:<9} seed {r['seed']}: " + "  ".join(
            f"@{rad:g} {100 * metrics[at_eps('certified-l2', rad)]:.1f}" for rad in cfg.radii)
            + f"   ({seconds:.1f} CPU s)", flush=True)

    names = [at_eps("certified-l2", rad) for rad in cfg.radii]
    names += [at_eps("certified-l2", rad, f"sigma{s:g}") for s in cfg.sigma for rad in cfg.radii]
    rows = {}
    print("\ncertified accuracy (%), mean ± std over seeds (the best sigma per radius):")
    for m in methods:
        mine = [j for j in jobs if j["method"] == m]
        rows[m] = {name: mean_std([j["metrics"][name] for j in mine]) for name in names}
        print(f"  {m:<9} ({len(mine)} seeds) " + "  ".join(
            f"{name}: {100 * rows[m][name][0]:.1f} ± {100 * rows[m][name][1]:.1f}" for name in names[:len(cfg.radii)]))
    base = methods[0]
    diffs = {}
    for m in methods[1:]:
        diffs[m] = {}
        for name in names[:len(cfg.radii)]:
            va = {j["seed"]: j["metrics"][name] for j in jobs if j["method"] == m}
            vb = {j["seed"]: j["metrics"][name] for j in jobs if j["method"] == base}
            ma = {j["seed"]: j["masks"][name] for j in jobs if j["method"] == m and name in j["masks"]}
            mb = {j["seed"]: j["masks"][name] for j in jobs if j["method"] == base and name in j["masks"]}
            p = compare(va, vb, {s: torch.tensor(v).numpy() for s, v in ma.items()},
                        {s: torch.tensor(v).numpy() for s, v in mb.items()})
            if p is not None:
                diffs[m][name] = {"diff": p.diff, "low": p.low, "high": p.high, "p": p.p, "test": p.test,
                                  "seeds": p.seeds}
    keys = [(m, name) for m in diffs for name in diffs[m]]
    for (m, name), significant in zip(keys, holm([diffs[m][name]["p"] for m, name in keys])):
        d = diffs[m][name]
        d["significant_after_holm"] = significant
        print(f"  {m} - {base}, {name}: {100 * d['diff']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] "
              f"points, p = {d['p']:.3g} ({d['test']}, {d['seeds']} seeds)" + (" *" if significant else ""))
    if keys:
        print(f"  (* significant after Holm's correction over these {len(keys)} comparisons)")
    cpu = [j["cpu_seconds"] for j in jobs]
    print(f"\nCPU seconds per job (certification alone): mean {sum(cpu) / len(cpu):.1f}, max {max(cpu):.1f}; "
          f"{len(data.x_test) * len(cfg.sigma) * (cfg.n0 + cfg.n):,} forward passes of the student per job")
    if args.out:
        args.out.write_text(json.dumps({"settings": cfg.__dict__, "jobs": [{k: v for k, v in j.items() if k != "masks"}
                                                                            for j in jobs],
                                        "rows": rows, "differences": diffs}, indent=1, default=list))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
