"""State dicts as bytes and back: the teacher cache's files, transfer examples, teachers sent to workers.

A checkpoint is read with `weights_only=True` only, so reading one never executes code from it."""

from __future__ import annotations

import io

import torch
from torch import nn

from ..core.errors import KdbenchError


def tensors_bytes(tensors: dict) -> bytes:
    """A {name: tensor} dict (moved to the CPU) as the bytes of a `.pt` file."""
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in tensors.items()}, buf)
    return buf.getvalue()


def state_dict_bytes(model: nn.Module) -> bytes:
    """The model's state dict (on the CPU) as the bytes of a teacher-cache file."""
    return tensors_bytes(model.state_dict())


def load_state_dict(source, device, name: str | None = None) -> dict:
    """A state dict from a file path or a file-like object (`name` says which in errors), never executing code
    (`weights_only=True`)."""
    try:
        return torch.load(source, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle safely is a bad checkpoint
        raise KdbenchError(f"cannot load checkpoint {name or str(source)!r} as a plain state dict: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None
