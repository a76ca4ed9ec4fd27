"""The collapse of adversarial training at a large eps, and the eps warm-up (`train.adv_warmup`) against it.

    python benchmarks/adv_warmup.py [method] [eps] [epochs] [warm-ups] [seeds] [attack modes]
    python benchmarks/adv_warmup.py at 0.3 8 0,0.25,0.5 1,2,3 train,eval      (the defaults)

Trains the digits student (cnn-small, the default suite's Adam at lr 0.004, batch 128, PGD-5 inner attack) with
`method` at `eps` for `epochs`, for each warm-up fraction, seed and attack mode, on one torch thread, and prints its
clean test accuracy, its PGD-20 accuracy at `eps` and at 0.1 (torchattacks, step eps / 4, random start, eval
mode) and its last epoch's training loss. A collapsed student predicts one class: clean accuracy near 1/10,
adversarial CE at ln 10 = 2.303.
Methods with a teacher train their teachers first (10 epochs, the default suite's; cached in a temporary folder).
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchattacks

from kdbench.execution.job import train_student
from kdbench.execution.workspace import Workspace, torch_threads
from kdbench.methods import METHODS
from kdbench.suite.load import parse_suite
from kdbench.training.teacher_cache import get_teacher


class _Quiet:
    def say(self, *args, **kwargs):
        pass


def run(method: str, eps: float, epochs: int, warmup: float, seed: int, mode: str, ws: Workspace) -> dict:
    doc = {"name": "adv-warmup", "dataset": "digits", "seeds": [seed], "headline_eps": eps,
           "pairs": [{"teacher": "cnn-large", "student": "cnn-small"}],
           "train": {"epochs": epochs, "teacher_epochs": 10, "batch_size": 128, "lr": 0.004, "adv_eps": eps,
                     "adv_steps": 5, "adv_warmup": warmup},
           "methods": {method: {"attack_mode": mode} if "attack_mode" in METHODS.get(method).defaults else {}},
           "eval": {"attacks": ["pgd"], "eps": [eps]}}
    (job,) = [j for j in parse_suite(doc).jobs() if j.method == method]
    data = ws.get_data(job.data)
    t0 = time.process_time()
    with torch_threads(1):
        teachers = [get_teacher(s, job, ws, _Quiet()) for s in job.teacher_specs()]
        model, history = train_student(job, data, teachers, ws)
        x, y = data.x_test, data.y_test
        clean = (model(x).argmax(1) == y).float().mean().item()
        robust = {}
        for e in (eps, 0.1):
            pgd = torchattacks.PGD(model, eps=e, alpha=e / 4, steps=20, random_start=True)
            torch.manual_seed(0)
            robust[e] = (model(pgd(x, y)).argmax(1) == y).float().mean().item()
    return {"clean": clean, "robust": robust[eps], "robust_01": robust[0.1], "loss": sum(history[-1].values()),
            "cpu_s": time.process_time() - t0}


def main(argv: list[str]) -> None:
    args = argv + ["at", "0.3", "8", "0,0.25,0.5", "1,2,3", "train,eval"][len(argv):]
    method, eps, epochs = args[0], float(args[1]), int(args[2])
    warmups, seeds, modes = ([float(v) for v in args[3].split(",")], [int(v) for v in args[4].split(",")],
                             args[5].split(","))
    with tempfile.TemporaryDirectory() as cache:
        ws = Workspace(torch.device("cpu"), Path(cache))
        print(f"{method} on digits, eps {eps}, {epochs} epochs, Adam 0.004, PGD-5 inner attack")
        print(f"warm-up  mode   seed  clean   PGD-20@{eps:g}  PGD-20@0.1  last loss  CPU s")
        for warmup, mode, seed in itertools.product(warmups, modes, seeds):
            r = run(method, eps, epochs, warmup, seed, mode, ws)
            print(f"{warmup:7.2f}  {mode:5}  {seed:4d}  {r['clean']:.3f}   {r['robust']:10.3f}  "
                  f"{r['robust_01']:10.3f}  {r['loss']:9.3f}  {r['cpu_s']:5.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
