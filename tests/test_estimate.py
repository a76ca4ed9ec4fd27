"""`run --dry-run`'s estimate: a pass is timed as its fastest repeat (another process taking the core now and
then does not count); attack steps are counted between the bounds of what the evaluation can run."""

import dataclasses
import time

import torch

from kdbench.execution import estimate
from kdbench.suite.load import load_suite


def test_a_pass_is_timed_as_its_fastest_repeat():
    delays = iter([0.0, 0.3, 0.01, 0.3, 0.01, 0.01, 0.01, 0.01, 0.01])  # warm-up, then two preempted repeats

    def fn():
        time.sleep(next(delays))

    per_example = estimate._per_example(fn, 10, torch.device("cpu"))
    assert 0.001 <= per_example < 0.003  # 0.01 s over 10 examples, not the mean with the 0.3 s repeats


def test_attack_steps_lie_between_their_bounds():
    ev = load_suite("robustness").eval  # 3 eps, a sweep beyond them, sanity checks
    upper, lower = estimate.eval_grad_steps(ev), estimate.eval_grad_steps(ev, broken_at_first=True)
    per_eps = 1 + ev.pgd_steps + 2 * ev.apgd_steps  # fgsm, pgd, apgd-ce, apgd-dlr
    assert upper - lower == 2 * per_eps + 3 * (ev.pgd_steps + ev.apgd_steps)  # 2 more eps, 3 sweep-only eps
    one = dataclasses.replace(ev, eps=(0.1,), sweep_eps=(0.1,))  # one eps, no sweep beyond it: the bounds meet
    assert estimate.eval_grad_steps(one) == estimate.eval_grad_steps(one, broken_at_first=True)
