"""Layer-wise distillation works for every registered architecture pair: every model declares its stages,
and the layer-wise methods (stage hints, FitNets, attention transfer) build and give a finite loss with
gradients for each (teacher, student) pair that takes the same input size."""

import itertools

import pytest
import torch

from kdbench.methods import METHODS, Batch, TrainContext
from kdbench.models.registry import MODELS, ModelInput, build_model, count_params

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
LAYERWISE = ["hierarchical", "attention", "fitnets"]
# In the every-pair test WRN-34-10 (46M parameters) is stood in for by WRN-16-4: the same blocks and the same
# stage layout (32, 16 and 8 pixels), narrower. The methods' adapters follow a pair's stage shapes whatever the
# widths; the pairs of the published suite, with WRN-34-10 itself, are tested on their own below.
STAND_IN = {"wrn-34-10": "wrn-16-4"}
PUBLISHED = [("wrn-34-10", "resnet18"), ("wrn-34-10", "mobilenetv2")]  # robustness-cifar10's pairs


def _inp(shape):
    return ModelInput(shape, 10, (0.5,) * shape[0], (0.25,) * shape[0])


def native(arch):
    """The first of SHAPES the model accepts (models are built for a data shape), with the model built for it."""
    for shape in SHAPES:
        try:
            model = build_model(arch, _inp(shape)).eval()
            with torch.no_grad():
                model.forward_stages(torch.rand(2, *shape))
            return shape, model
        except (RuntimeError, ValueError):
            continue
    raise AssertionError(f"{arch} accepts none of {SHAPES}")


@pytest.fixture(scope="module")
def built():
    return {arch: native(arch) for arch in MODELS.names()}


def test_every_model_declares_stages(built):
    for arch, (shape, model) in built.items():
        x = torch.rand(2, *shape)
        with torch.no_grad():
            logits, feats = model.forward_stages(x)
            torch.testing.assert_close(logits, model(x))  # the taps do not change the forward pass
        assert logits.shape == (2, 10) and len(feats) >= 2, arch
        assert all(f.dim() == 4 and f.shape[0] == 2 for f in feats), arch


def test_a_stand_in_has_the_stage_layout_of_the_model_it_stands_in_for(built):
    for arch, other in STAND_IN.items():
        x = torch.rand(2, *built[arch][0])
        with torch.no_grad():
            a, b = built[arch][1].forward_stages(x)[1], built[other][1].forward_stages(x)[1]
        assert [f.shape[2:] for f in a] == [f.shape[2:] for f in b], (arch, other)


def _check_pair(method, teacher_arch, student_arch, shape, teacher=None):
    inp = _inp(shape)
    torch.manual_seed(0)
    student, teacher = build_model(student_arch, inp), teacher or build_model(teacher_arch, inp)
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


# Models of a million parameters and more (ResNet-18 and its kin) are tested on 32x32 images, with the slow tests;
# the smaller ones (8x8 and 28x28 CNNs, ResNet-20) at the first shape they accept, in the fast loop.
BIG = 1_000_000


@pytest.mark.parametrize("images", ["small", pytest.param("cifar", marks=pytest.mark.slow)])
@pytest.mark.parametrize("method", LAYERWISE)
def test_layerwise_methods_on_every_pair(built, method, images):
    big = {a for a, (_, model) in built.items() if count_params(model) >= BIG}
    archs = [a for a in built if a not in STAND_IN and (a in big) == (images == "cifar")]
    shape = {a: (3, 32, 32) if images == "cifar" else built[a][0] for a in archs}
    pairs = [(t, s) for t, s in itertools.product(archs, archs) if shape[t] == shape[s]]
    assert len(pairs) > len(archs)
    for teacher_arch, student_arch in pairs:
        _check_pair(method, teacher_arch, student_arch, shape[teacher_arch])


@pytest.mark.slow  # WRN-34-10, 46M parameters
def test_layerwise_methods_on_the_published_pairs():
    from kdbench.suite.load import load_suite

    assert [(p.teacher, p.student) for p in load_suite("robustness-cifar10").pairs] == PUBLISHED
    shape = (3, 32, 32)
    torch.manual_seed(0)
    teachers = {t: build_model(t, _inp(shape)) for t in dict(PUBLISHED)}  # built once: frozen by every method
    for method in LAYERWISE:
        for teacher_arch, student_arch in PUBLISHED:
            _check_pair(method, teacher_arch, student_arch, shape, teachers[teacher_arch])
