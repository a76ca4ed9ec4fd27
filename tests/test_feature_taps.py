"""Layer-wise distillation works for every registered architecture pair: every model declares its stages,
and the layer-wise methods (stage hints, FitNets, attention transfer) build and give a finite loss with
gradients for each (teacher, student) pair that takes the same input size."""

import itertools

import pytest
import torch

from kdbench.methods import METHODS, Batch, TrainContext
from kdbench.models import MODELS, ModelInput, build_model

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def native_shape(arch):
    """The first of SHAPES the model accepts (models are built for a data shape)."""
    for shape in SHAPES:
        try:
            model = build_model(arch, ModelInput(shape, 10, (0.5,) * shape[0], (0.25,) * shape[0])).eval()
            with torch.no_grad():
                model.forward_stages(torch.rand(2, *shape))
            return shape
        except (RuntimeError, ValueError):
            continue
    raise AssertionError(f"{arch} accepts none of {SHAPES}")


@pytest.fixture(scope="module")
def shapes():
    return {arch: native_shape(arch) for arch in MODELS.names()}


def test_every_model_declares_stages(shapes):
    for arch, shape in shapes.items():
        model = build_model(arch, ModelInput(shape, 10, (0.5,) * shape[0], (0.25,) * shape[0])).eval()
        x = torch.rand(2, *shape)
        with torch.no_grad():
            logits, feats = model.forward_stages(x)
            torch.testing.assert_close(logits, model(x))  # the taps do not change the forward pass
        assert logits.shape == (2, 10) and len(feats) >= 2, arch
        assert all(f.dim() == 4 and f.shape[0] == 2 for f in feats), arch


@pytest.mark.parametrize("method", ["hierarchical", "attention", "fitnets"])
def test_layerwise_methods_on_every_pair(shapes, method):
    pairs = [(t, s) for t, s in itertools.product(shapes, shapes) if shapes[t] == shapes[s]]
    assert pairs
    for teacher_arch, student_arch in pairs:
        shape = shapes[teacher_arch]
        inp = ModelInput(shape, 10, (0.5,) * shape[0], (0.25,) * shape[0])
        torch.manual_seed(0)
        student, teacher = build_model(student_arch, inp), build_model(teacher_arch, inp)
        cls = METHODS.get(method)
        ctx = TrainContext(10, shape, 1, 0.1, 1, 0.1)
        d = cls(student, [teacher], dict(cls.defaults), ctx)
        d.train()
        x, y = torch.rand(2, *shape), torch.tensor([1, 2])
        with torch.no_grad():
            logits = [teacher(x)] if cls.uses_teacher_logits else []
        if method == "fitnets":  # its hint stage first: the regressor fits this pair's middle stages
            hint = d.losses(Batch(x, y, logits, 0.0))["hint"]
            assert torch.isfinite(hint) and hint > 0, (teacher_arch, student_arch)
            hint.backward()
            assert d.regressor.weight.grad is not None, (teacher_arch, student_arch)
            student.zero_grad()
        loss = sum(d.losses(Batch(x, y, logits, 0.5)).values())
        assert torch.isfinite(loss), (teacher_arch, student_arch)
        loss.backward()
        assert all(p.grad is not None for p in student.parameters()), (teacher_arch, student_arch)
