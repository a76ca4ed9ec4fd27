"""kdbench vs the straightforward way, end to end, back to back: one small grid (ce, kd, pointwise x 2 seeds on
digits: train the teacher, distil, evaluate clean / FGSM / PGD-20 at eps 0.1) run by kdbench as `kdbench run`
runs it (one worker process per core) and by a plain reference loop written the usual way (a torch DataLoader
over a TensorDataset, the teacher's forward on every batch, torchattacks called batch by batch). Target:
kdbench at least 2x faster, with the same metrics within seed noise.

    python benchmarks/compare_naive.py [--quick]
The last line printed is the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchattacks
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import ratio_line  # noqa: E402

from kdbench.execution.resources import local_workers  # noqa: E402
from kdbench.data.load import load_data  # noqa: E402
from kdbench.data.registry import DataConfig  # noqa: E402
from kdbench.models.registry import ModelInput, build_model  # noqa: E402
from kdbench.records.store import load_records  # noqa: E402
from kdbench.execution.driver import run_suite  # noqa: E402
from kdbench.suite.load import parse_suite  # noqa: E402

METHODS = ("ce", "kd", "pointwise")
SEEDS = (1, 2)
EPS = 0.1


def grid(epochs: int) -> dict:
    return {"name": "naive-compare", "dataset": "digits", "seeds": list(SEEDS), "headline_eps": EPS,
            "train": {"epochs": epochs, "teacher_epochs": epochs, "batch_size": 64, "lr": 0.002,
                      "schedule": "constant"},
            "methods": {"ce": {}, "kd": {"temperature": 4.0, "alpha": 0.9}, "pointwise": {"alpha": 0.5}},
            "eval": {"attacks": ["fgsm", "pgd"], "eps": [EPS], "pgd_steps": 20, "sweep_eps": [], "corruptions": [],
                     "sanity": False, "transfer": False}}


def run_kdbench(epochs: int, workers: int) -> dict:
    """The grid as `kdbench run` runs it by default: `workers` processes (one per core), 1 thread each."""
    suite = parse_suite(grid(epochs))
    with tempfile.TemporaryDirectory() as tmp:
        run_suite(suite, Path(tmp) / "out", torch.device("cpu"), cache_dir=Path(tmp) / "cache", quiet=True,
                  workers=workers, threads=1)
        records, _ = load_records(Path(tmp) / "out")
    return {(r["method"], r["seed"]): r["metrics"] for r in records if r["role"] == "student"}


# ---- the plain reference loop ------------------------------------------------------------------------------

def naive_train(model, loader, epochs, loss_fn, teacher=None):
    opt = torch.optim.Adam(model.parameters(), lr=0.002)
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            t = None
            if teacher is not None:
                with torch.no_grad():
                    t = teacher(xb)
            loss = loss_fn(model(xb), yb, t)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def naive_eval(model, x, y):
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    fgsm = torchattacks.FGSM(model, eps=EPS)
    pgd = torchattacks.PGD(model, eps=EPS, alpha=EPS / 4, steps=20, random_start=True)
    hits = {"clean": 0, f"fgsm@{EPS:g}": 0, f"pgd@{EPS:g}": 0}
    for xb, yb in loader:
        with torch.no_grad():
            hits["clean"] += (model(xb).argmax(1) == yb).sum().item()
        for name, atk in ((f"fgsm@{EPS:g}", fgsm), (f"pgd@{EPS:g}", pgd)):
            xa = atk(xb, yb)
            with torch.no_grad():
                hits[name] += (model(xa).argmax(1) == yb).sum().item()
    return {k: v / len(x) for k, v in hits.items()}


def kd_loss(s, y, t, T=4.0, a=0.9):
    return a * T * T * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") + \
        (1 - a) * F.cross_entropy(s, y)


LOSSES = {
    "ce": lambda s, y, t: F.cross_entropy(s, y),
    "kd": kd_loss,
    "pointwise": lambda s, y, t: 0.5 * F.mse_loss(s, t) + 0.5 * F.cross_entropy(s, y),
}


def run_naive(epochs: int) -> dict:
    data = load_data(DataConfig())
    inp = ModelInput(data.shape, 10, data.mean, data.std)
    out = {}
    for seed in SEEDS:
        torch.manual_seed(seed)
        loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=64, shuffle=True)
        teacher = build_model("cnn-large", inp)
        naive_train(teacher, loader, epochs, LOSSES["ce"])
        for method in METHODS:
            torch.manual_seed(seed)
            student = build_model("cnn-small", inp)
            naive_train(student, loader, epochs, LOSSES[method], None if method == "ce" else teacher)
            out[(method, seed)] = naive_eval(student, data.x_test, data.y_test)
    return out


def table(results: dict) -> dict:
    rows = {}
    for method in METHODS:
        for metric in ("clean", f"fgsm@{EPS:g}", f"pgd@{EPS:g}"):
            vals = [results[(method, s)][metric] for s in SEEDS]
            rows[(method, metric)] = (statistics.mean(vals), statistics.stdev(vals))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=30, help="teacher and student epochs (default: the default suite's 30)")
    args = ap.parse_args()
    epochs = 3 if args.quick else args.epochs
    workers = local_workers(None, torch.device("cpu"), 1)
    t0 = time.perf_counter()
    ours = run_kdbench(epochs, workers)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = run_naive(epochs)
    t_naive = time.perf_counter() - t0
    a, b = table(ours), table(theirs)
    print(f"{'method':<10} {'metric':<9} {'kdbench':>15} {'plain loop':>15}  agree")
    agree = True
    for key in a:
        (ma, sa), (mb, sb) = a[key], b[key]
        ok = abs(ma - mb) <= 2 * max(sa, sb) + 0.03  # within seed noise
        agree &= ok
        print(f"{key[0]:<10} {key[1]:<9} {100 * ma:7.1f} ± {100 * sa:4.1f} {100 * mb:7.1f} ± {100 * sb:4.1f}  "
              f"{'yes' if ok else 'NO'}")
    print(f"end to end ({len(METHODS)} methods x {len(SEEDS)} seeds, {epochs} epochs, teacher included): kdbench "
          f"{t_ours:.1f}s ({workers} worker processes, 1 thread each: its default), plain loop {t_naive:.1f}s "
          f"(one process, {torch.get_num_threads()} threads); metrics {'agree' if agree else 'DISAGREE'} within "
          "seed noise")
    print(ratio_line("speed-up (plain loop time / kdbench time)", t_naive / t_ours, 2.0, above_is_bad=False))


if __name__ == "__main__":
    main()
