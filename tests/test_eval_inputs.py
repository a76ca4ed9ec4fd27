"""Model-independent evaluation inputs are made once per process and reused for the same images (eval_inputs.py)."""

import torch

from kdbench.evaluation import inputs as eval_inputs
from kdbench.data.corruptions import corrupt
from kdbench.evaluation.inputs import reuse


def _counting(value):
    calls = []

    def make():
        calls.append(1)
        return value

    return make, calls


def test_same_images_same_key_made_once():
    eval_inputs.forget()
    x = torch.rand(8, 1, 8, 8)
    make, calls = _counting(torch.zeros(3))
    first = reuse(x, ("a",), make)
    assert reuse(x, ("a",), make) is first and len(calls) == 1
    make_b, calls_b = _counting(torch.ones(3))
    assert torch.equal(reuse(x, ("b",), make_b), torch.ones(3)) and len(calls_b) == 1


def test_other_or_changed_images_are_not_served_old_inputs():
    eval_inputs.forget()
    x = torch.rand(8, 1, 8, 8)
    reuse(x, ("a",), lambda: torch.zeros(3))
    other = x.clone()  # equal values, another tensor: made again
    make, calls = _counting(torch.ones(3))
    assert torch.equal(reuse(other, ("a",), make), torch.ones(3)) and len(calls) == 1
    other.add_(1.0)  # changed in place: made again
    make, calls = _counting(torch.full((3,), 2.0))
    assert torch.equal(reuse(other, ("a",), make), torch.full((3,), 2.0)) and len(calls) == 1


def test_large_images_are_never_kept():
    eval_inputs.forget()
    x = torch.zeros(eval_inputs.BUDGET // 4 // 32)  # BUDGET / 8 bytes: more than BUDGET / 64
    make, calls = _counting(torch.zeros(1))
    reuse(x, ("a",), make)
    reuse(x, ("a",), make)
    assert len(calls) == 2


def test_kept_corruptions_equal_fresh_ones():
    eval_inputs.forget()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for name in ("gaussian_noise", "jpeg", "impulse_noise"):
        kept = reuse(x, ("corruption", name, 3, 7), lambda: corrupt(name, x, 3, 7))
        again = reuse(x, ("corruption", name, 3, 7), lambda: corrupt(name, x, 3, 7))
        assert again is kept and torch.equal(kept, corrupt(name, x, 3, 7))
