"""FlatOptimizer takes the same steps as torch.optim's Adam and SGD (Nesterov) with the same schedule."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kdbench.core.errors import KdbenchError
from kdbench.models.registry import ModelInput, build_model
from kdbench.training.optim import FlatOptimizer
from kdbench.suite.configs import TrainConfig

INP = ModelInput((1, 8, 8), 10, (0.5,), (0.25,))


def _twin_models():
    torch.manual_seed(0)
    a = build_model("cnn-small", INP).to(memory_format=torch.channels_last)
    b = build_model("cnn-small", INP).to(memory_format=torch.channels_last)
    b.load_state_dict(a.state_dict())
    return a, b


def _reference(params, cfg, total):
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    lam = (lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))) if cfg.schedule == "cosine" else (lambda s: 1.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lam)


@pytest.mark.parametrize("optimizer,schedule,weight_decay", [("adam", "cosine", 0.0), ("adam", "constant", 5e-4),
                                                             ("sgd", "cosine", 5e-4), ("sgd", "constant", 0.0)])
def test_flat_optimizer_matches_torch_optim_step_by_step(optimizer, schedule, weight_decay):
    cfg = replace(TrainConfig(), optimizer=optimizer, schedule=schedule, weight_decay=weight_decay,
                  lr=3e-3 if optimizer == "adam" else 0.05)
    mine, ref = _twin_models()
    total = 12
    flat = FlatOptimizer(list(mine.parameters()), cfg, total)
    opt, sched = _reference(list(ref.parameters()), cfg, total)
    g = torch.Generator().manual_seed(1)
    for _ in range(total):
        x = torch.rand(32, 1, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (32,), generator=g)
        flat.zero_grad()
        F.cross_entropy(mine(x), y).backward()
        flat.step()
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        opt.step()
        sched.step()
    moved = max((p - q).abs().max().item() for p, q in zip(ref.parameters(), _twin_models()[1].parameters()))
    assert moved > 1e-3  # the reference did train
    for (name, p), q in zip(mine.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=2e-6, msg=name)


def test_parameters_become_views_of_one_buffer_and_keep_their_layout():
    model, _ = _twin_models()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    conv = next(p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    opt = FlatOptimizer(list(model.parameters()) + [conv], TrainConfig(), 10)  # a duplicate is stepped once
    assert opt.flat.numel() == sum(p.numel() for p in model.parameters())
    assert all(p.data_ptr() >= opt.flat.data_ptr() for p in model.parameters())
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # same values
    opt.flat.zero_()
    assert all((p == 0).all() for p in model.parameters())  # the parameters are the buffer
    opt.release()
    assert all(p.grad is None for p in model.parameters())


def test_a_step_whose_scaled_gradients_overflow_is_skipped_but_advances_the_schedule():
    w = torch.nn.Parameter(torch.ones(3))
    opt = FlatOptimizer([w], replace(TrainConfig(), lr=0.1, schedule="cosine"), total_steps=4)
    opt.zero_grad()
    (w.sum() * float("inf")).backward()
    assert opt.step(loss_scale=1024.0) is False
    assert torch.equal(w.detach(), torch.ones(3)) and opt.calls == 1 and opt.t == 0
    opt.zero_grad()
    (w.sum() * 1024.0).backward()
    assert opt.step(loss_scale=1024.0) is True
    # Adam's first step moves each weight by lr_t (the gradient, unscaled to 1, is normalised away); step 2 of 4
    # of the cosine schedule has lr * (1 + cos(pi / 4)) / 2
    torch.testing.assert_close(w.detach(), torch.ones(3) - 0.1 * (1 + math.cos(math.pi / 4)) / 2)


def test_unknown_optimizer_and_schedule_name_the_choices():
    w = [torch.nn.Parameter(torch.ones(1))]
    with pytest.raises(KdbenchError, match=r"unknown optimizer 'lion'; choose from: adam, sgd"):
        FlatOptimizer(w, replace(TrainConfig(), optimizer="lion"), 1)
    with pytest.raises(KdbenchError, match=r"unknown schedule 'step'; choose from: cosine, constant"):
        FlatOptimizer(w, replace(TrainConfig(), schedule="step"), 1)
