"""The evaluation copy with batch norms folded (fold.py): the same function and input gradients as the model, on
every registered architecture, with the model itself untouched."""

import pytest
import torch
from torch import nn

from kdbench.models.fold import fold_batch_norm
from kdbench.core.gpu import place
from kdbench.models.registry import MODELS, ModelInput, build_model

SHAPES = {"cnn-small": (1, 8, 8), "cnn-large": (1, 8, 8), "lenet-small": (1, 28, 28), "lenet-large": (1, 28, 28)}
SKIP = {"wrn-34-10"}  # 46M parameters: too slow for a unit test; wrn-16-4 has the same blocks


def batch_norms(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def trained_looking(arch: str) -> tuple[nn.Module, torch.Tensor]:
    """`arch` in the CPU layout, with batch-norm statistics and affine weights far from their initial values
    (so a wrong fold could not pass), and a batch of inputs."""
    shape = SHAPES.get(arch, (3, 32, 32))
    torch.manual_seed(0)
    model = place(build_model(arch, ModelInput(shape, 10, (0.5,) * shape[0], (0.25,) * shape[0])),
                  torch.device("cpu"), None)
    for bn in batch_norms(model):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model.eval().requires_grad_(False), torch.rand(4, *shape)


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), y, reduction="sum"), x)
    return g


@pytest.mark.parametrize("arch", sorted(set(MODELS.names()) - SKIP))
def test_folded_copy_computes_the_same_logits_and_input_gradients(arch):
    model, x = trained_looking(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batch_norm(model)
    y = torch.arange(len(x)) % 10
    with torch.no_grad():
        ref, out = model(x), folded(x)
    scale = ref.abs().max()
    torch.testing.assert_close(out, ref, atol=1e-5 * scale, rtol=1e-5)
    g_ref, g = input_gradient(model, x, y), input_gradient(folded, x, y)
    torch.testing.assert_close(g, g_ref, atol=1e-5 * g_ref.abs().max(), rtol=1e-4)
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    # the model itself is unchanged: same weights, statistics, mode
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and not model.training
    if batch_norms(model):
        assert folded is not model and len(batch_norms(folded)) < len(batch_norms(model))


def test_post_activation_cnns_lose_every_batch_norm():
    for arch in ("cnn-small", "cnn-large", "resnet20"):
        model, _ = trained_looking(arch)
        assert batch_norms(model) and not batch_norms(fold_batch_norm(model))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        h = self.bn(self.conv(x))
        return h.flatten(1) if h.sum() > 0 else -h.flatten(1)


def test_a_model_fx_cannot_trace_is_evaluated_as_it_is():
    model = Untraceable().train()
    assert fold_batch_norm(model) is model and model.training  # its mode is left as it was


def test_a_model_without_batch_norm_is_returned_as_it_is():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert fold_batch_norm(model) is model
