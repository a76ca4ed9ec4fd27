"""CPU time of one training step of each distillation method, on the default suite's shapes (8x8 digits-shaped
batches of 128, cnn-large teachers -> cnn-small student, adv_eps 0.1, 5 PGD steps), one torch thread.

    python benchmarks/method_cost.py [method,method,...]
Process time (not wall time), best of 2 rounds of 10 steps: less sensitive to a busy machine than a suite run.
A job's training costs about epochs x steps per epoch (20 x 12 on digits) of these steps, plus its evaluation.
"""

from __future__ import annotations

import sys
import time

import torch

from kdbench.methods import METHODS, Batch, TrainContext
from kdbench.models.registry import ModelInput, build_model

INP = ModelInput((1, 8, 8), 10, (0.3,), (0.37,))
CTX = TrainContext(10, (1, 8, 8), 20, 0.1, 5, 0.05)


def step_seconds(name: str, x: torch.Tensor, y: torch.Tensor, steps: int = 10) -> float:
    torch.manual_seed(0)
    cls = METHODS.get(name)
    specs = cls.teacher_specs(dict(cls.defaults), "cnn-large", cls.teacher_kind, 1)
    teachers = [build_model(s.arch, INP).eval() for s in specs]
    d = cls(build_model("cnn-small", INP), teachers, dict(cls.defaults), CTX)
    d.train()
    opt = torch.optim.Adam(d.trainable_parameters(), 1e-3)
    with torch.no_grad():
        logits = [t(x) for t in teachers] if cls.uses_teacher_logits else []

    def step(progress: float) -> None:
        loss = sum(d.losses(Batch(x, y, logits, progress)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(0.5)  # untimed: allocations
    t0 = time.process_time()
    for i in range(steps):
        step(i / steps)
    return (time.process_time() - t0) / steps


def main() -> None:
    torch.set_num_threads(1)
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else METHODS.names()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(128, 1, 8, 8, generator=g), torch.randint(0, 10, (128,), generator=g)
    best = {n: min(step_seconds(n, x, y) for _ in range(2)) for n in names}
    ce = best.get("ce")
    for n, s in best.items():
        print(f"{n:<14} {s * 1000:7.1f} ms/step" + (f"  {s / ce:5.1f}x ce" if ce else ""))


if __name__ == "__main__":
    main()
