"""Teachers from elsewhere: ordinary training checkpoints load (weights found by their key, whatever else the
file holds); a pretrained teacher stands in only for the teacher kind it is declared as."""

import argparse

import numpy as np
import pytest
import torch

from kdbench.errors import KdbenchError
from kdbench.models import ModelInput, build_model
from kdbench.pretrained import PretrainedTeacher, file_sha256, load_pretrained

INP = ModelInput((1, 8, 8), 10, (0.5,), (0.25,))


def _teacher():
    torch.manual_seed(5)
    return build_model("cnn-large", INP).eval()


def _training_checkpoint(model, weight_key: str, prefix: str = "module.") -> dict:
    """What a training script saves: weights under `weight_key` (DataParallel-prefixed), optimizer and
    scheduler state, epoch, accuracies (a Python and a numpy float) and the run's arguments."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(4, *INP.shape)).sum().backward()
    opt.step()
    opt.zero_grad()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [75, 90])
    return {"epoch": 120, "arch": "cnn-large", weight_key: {prefix + k: v for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "best_acc": 93.4,
            "best_robust_acc": np.float64(51.2), "args": argparse.Namespace(lr=0.1, epochs=120)}


def _load(path):
    pre = PretrainedTeacher("checkpoint", str(path), "cnn-large", file_sha256(path))
    return load_pretrained(pre, INP, "cpu", path.parent)


@pytest.mark.parametrize("weight_key", ["state_dict", "model", "net", "model_state_dict"])
def test_a_typical_training_checkpoint_loads(tmp_path, weight_key):
    model = _teacher()
    ckpt = _training_checkpoint(model, weight_key)
    torch.save(ckpt, tmp_path / "ckpt.pt")
    loaded = _load(tmp_path / "ckpt.pt")
    x = torch.rand(8, *INP.shape)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_weights_nested_one_level_deeper_and_compiled_prefixes(tmp_path):
    model = _teacher()
    torch.save({"epoch": 3, "model": {"state_dict": {f"_orig_mod.{k}": v for k, v in model.state_dict().items()},
                                      "ema_decay": 0.999}}, tmp_path / "ckpt.pt")
    x = torch.rand(8, *INP.shape)
    torch.testing.assert_close(_load(tmp_path / "ckpt.pt")(x), model(x), rtol=0, atol=0)


def test_checkpoints_without_one_clear_set_of_weights_are_one_line_errors(tmp_path):
    sd = _teacher().state_dict()
    torch.save({"epoch": 3, "weights_ema": sd, "optimizer": {}}, tmp_path / "none.pt")
    with pytest.raises(KdbenchError, match=r"keeps none under a known key .*its keys: epoch, weights_ema, optim"):
        _load(tmp_path / "none.pt")
    torch.save({"model": sd, "net": sd}, tmp_path / "two.pt")
    with pytest.raises(KdbenchError, match=r"holds weights under 'model' and 'net'"):
        _load(tmp_path / "two.pt")


def test_a_pickled_object_is_still_refused_and_named(tmp_path):
    torch.save({"state_dict": _teacher().state_dict(), "net": torch.nn.Linear(2, 2)}, tmp_path / "obj.pt")
    with pytest.raises(KdbenchError) as e:
        _load(tmp_path / "obj.pt")
    msg = str(e.value)
    assert msg.startswith("cannot load checkpoint") and "torch.nn.modules.linear.Linear" in msg
    assert "weights_only=True" in msg and "\n" not in msg
