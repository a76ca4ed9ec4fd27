"""`run --dry-run`'s estimate: a pass is timed as its fastest repeat (another process taking the core now and
then does not count); attack steps are counted between the bounds of what the evaluation can run, and a real
evaluation runs no more than the upper bound the estimate uses."""

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
    ev = load_suite("robustness").eval  # 3 eps, a sweep beyond them, sanity checks; 2 L2 radii
    upper, lower = estimate.eval_grad_steps(ev), estimate.eval_grad_steps(ev, broken_at_first=True)
    per_eps = 1 + ev.pgd_steps + 2 * ev.apgd_steps  # fgsm, pgd, apgd-ce, apgd-dlr
    convergence = 2 * 2 * ev.apgd_steps  # the costliest single attack again, 2x its steps, 2 restarts
    # L2: apgd-ce-l2 and apgd-dlr-l2 at 1 more radius, their convergence check, the unbounded check (apgd-dlr-l2)
    assert ev.eps_l2 == (0.5, 1.0)
    l2 = 2 * ev.apgd_steps + convergence + ev.apgd_steps
    assert upper - lower == 2 * per_eps + 3 * (ev.pgd_steps + ev.apgd_steps) + convergence + l2  # 2 more eps, 3 sweep-only
    one = dataclasses.replace(ev, eps=(0.1,), sweep_eps=(0.1,), eps_l2=(0.5,), sanity=False)  # one eps and radius
    assert estimate.eval_grad_steps(one) == estimate.eval_grad_steps(one, broken_at_first=True)


def test_a_real_evaluation_runs_between_the_bounds(trained_digits_model, monkeypatch):
    """Every example the evaluation attacks, counted as the gradient passes its model makes (the attacks, the
    sweep, the convergence check, the input gradients), lies between the dry run's bounds; the estimate charges
    the upper one."""
    from torch import nn

    import kdbench.evaluation.evaluate as evaluation
    from kdbench.suite.configs import EvalConfig

    class Counted(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.examples = model, 0

        def forward(self, x):
            if torch.is_grad_enabled() and x.requires_grad:
                self.examples += len(x)
            return self.model(x)

    made = []
    monkeypatch.setattr(evaluation, "fold_batch_norm", lambda m: made.append(Counted(m)) or made[-1])
    model, data = trained_digits_model
    # eps so small that almost nothing breaks: nearly every example is attacked at every eps (the tight case)
    ev = EvalConfig(attacks=("fgsm", "pgd", "apgd-ce", "apgd-dlr"), eps=(0.001, 0.002, 0.004), pgd_steps=5,
                    apgd_steps=8, sweep_eps=(0.001, 0.002, 0.008), corruptions=(), noise_families=(), transfer=False)
    evaluation.evaluate(model, data.x_test, data.y_test, 10, ev, seed=1, headline_eps=0.002)
    per_example = made[0].examples / len(data.x_test)
    assert estimate.eval_grad_steps(ev, broken_at_first=True) < per_example <= estimate.eval_grad_steps(ev)
