"""Models from a user's own code, for `kdbench evaluate --model` and `kdbench.evaluate(model)` (external.py puts
them through a suite's evaluation protocol like a checkpoint of a registered architecture):

- an `nn.Module` in memory (`kdbench.evaluate`): any architecture, no registration;
- `--model FILE.py:FACTORY` or `--model module:factory`: the file is imported like a plugin file (its SHA-256 is
  part of the record's id) and `FACTORY()` is called with no arguments; it must return an `nn.Module`;
- `--model FILE.pt2`: a program saved by `torch.export.save`, which needs no code (export it in eval mode, with a
  dynamic batch dimension: evaluation runs batches of every size).

`--checkpoint F` loads a state dict into the model (`weights_only=True`, as every checkpoint; keys and shapes must
match, one error listing every mismatch). Every model takes images in [0, 1] (normalization inside) and returns
logits; external.load_model checks that on the dataset's inputs before anything is written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import KdbenchError


@dataclass(frozen=True, eq=False)
class UserModel:
    module: nn.Module
    source: str  # "python" (in memory), "factory" (FILE.py:FACTORY, module:factory) or "export" (a .pt2 program)
    ref: str  # the class, the factory as given, or the .pt2 file
    arch: str  # the architecture's name in the record: the class's, the factory's or the program file's
    code_sha256: str = ""  # the factory file's or module's source hash, the .pt2 file's; "" in memory


def tensors_sha256(module: nn.Module) -> str:
    """SHA-256 of `module`'s state dict: every name, dtype, shape and value, in name order (the weights' identity,
    whatever their device or memory layout)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def from_module(model) -> UserModel:
    """An `nn.Module` in memory (`kdbench.evaluate`)."""
    if not isinstance(model, nn.Module):
        raise KdbenchError(f"kdbench.evaluate takes a torch.nn.Module, got a {type(model).__name__}")
    cls = type(model)
    return UserModel(model, "python", f"{cls.__module__}.{cls.__qualname__}", cls.__qualname__)


def from_spec(spec: str, checkpoint: Path | None = None) -> UserModel:
    """The model of `--model SPEC` (FILE.py:FACTORY, module:factory or FILE.pt2), with `checkpoint`'s weights."""
    if spec.endswith(".pt2"):
        user = _exported(spec)
    else:
        where, sep, factory = spec.rpartition(":")
        if not sep or not where or not factory.isidentifier():
            raise KdbenchError(f"--model {spec!r} must be FILE.py:FACTORY, module:factory or FILE.pt2")
        user = _factory(spec, where, factory)
    if checkpoint is not None:
        _load_weights(user, Path(checkpoint))
    return user


def _factory(spec: str, where: str, factory: str) -> UserModel:
    from ..core.plugins import load_plugin

    try:
        plugin = load_plugin(where)
    except KdbenchError as e:
        raise KdbenchError(f"--model {spec!r}: {e}") from None
    import sys

    module = sys.modules[plugin.module]
    build = getattr(module, factory, None)
    if not callable(build):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        raise KdbenchError(f"--model {spec!r}: {where} defines no function {factory!r}; it defines: "
                           f"{', '.join(defined) or 'none'}")
    try:
        model = build()
    except Exception as e:  # noqa: BLE001 - the user's factory: whatever it raises, one line
        text = str(e).strip().splitlines()
        raise KdbenchError(f"--model {spec!r}: {factory}() raised {type(e).__name__}: {text[0] if text else ''}") \
            from None
    if not isinstance(model, nn.Module):
        raise KdbenchError(f"--model {spec!r}: {factory}() returned a {type(model).__name__}, not a torch.nn.Module")
    return UserModel(model, "factory", spec, f"{Path(where).name}:{factory}", plugin.origin.sha256)


def _exported(spec: str) -> UserModel:
    from ..training.pretrained import file_sha256

    path = Path(spec).expanduser().resolve()
    if not path.is_file():
        raise KdbenchError(f"--model: file {str(path)!r} does not exist")
    import logging
    import zipfile

    quiet = logging.getLogger("torch.export")  # it logs a traceback of a failed load before raising
    level = quiet.level
    try:
        if not zipfile.is_zipfile(path):
            raise ValueError("it is not a zip archive")
        quiet.setLevel(logging.CRITICAL)
        program = torch.export.load(str(path))
        model = program.module()
    except Exception as e:  # noqa: BLE001 - not a torch.export program, or a damaged one
        text = str(e).strip().splitlines()
        raise KdbenchError(f"--model {spec!r} is not a program saved by torch.export.save: {type(e).__name__}: "
                           f"{text[0] if text else ''}") from None
    finally:
        quiet.setLevel(level)
    return UserModel(model, "export", str(path), path.name, file_sha256(path))


def _load_weights(user: UserModel, path: Path) -> None:
    """`path`'s state dict into `user.module` (weights_only=True; every key and shape must match)."""
    from ..training.pretrained import PretrainedTeacher, load_checkpoint_into

    path = path.expanduser().resolve()
    if not path.is_file():
        raise KdbenchError(f"--checkpoint: file {str(path)!r} does not exist")
    load_checkpoint_into(user.module, PretrainedTeacher("checkpoint", str(path), user.arch), "cpu", (), ())
