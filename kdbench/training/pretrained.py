"""Teachers from elsewhere: loaded, never trained (and never put in the teacher cache).

In a suite's `[[pairs]]`, the teacher may be a table instead of an architecture name, or a list of tables:

    teacher = { checkpoint = "models/wrn.pt", arch = "wrn-34-10", kind = "standard" }     # your state dict
    teacher = { checkpoint = "models/model_cifar_wrn.pt", arch = "wrn-34-10", normalize = "none", kind = "adversarial" }
    teacher = { robustbench = "Carmon2019Unlabeled", kind = "adversarial" }  # pip install 'kdbench[robustbench]'
    teacher = [{ checkpoint = "a.pt", arch = "cnn-large", kind = "standard" },
               { checkpoint = "b.pt", arch = "cnn-large", kind = "standard" }]               # multi-teacher

- `kind` (required): the teacher kind the model was trained as (`standard`, `adversarial`, ...). It stands in
  for a teacher of that kind only, each teacher asked for by one pretrained teacher (`stand_ins`): a method
  run with a pretrained pair must ask for exactly the kinds the pair declares (kd one standard teacher;
  `methods.kd.teacher = "adversarial"` or ard one adversarial teacher; multi-teacher one per member, so a
  list), never a teacher of another architecture or one trained with parameters of its kind (defensive's
  temperature: `defensive` refuses pretrained teachers). Anything else is an error when the suite loads.
- `checkpoint`: a state dict (a file written by `torch.save(model.state_dict())`), or a training checkpoint
  that keeps one under a known key (`WEIGHT_KEYS`: "state_dict", "model", "net", ...) beside optimizer state,
  epoch, accuracy and the like; DataParallel's "module." and torch.compile's "_orig_mod." prefixes are removed.
  Loaded with `weights_only=True`, so a checkpoint can never run code. `arch` is a registered architecture;
  keys or shapes that do not match it are one error listing the missing, unexpected and mismatched keys. A
  relative path is relative to the suite file's folder. The file's SHA-256 is part of the job id: a changed
  checkpoint re-runs its jobs.
- `normalize`: where the model's input normalization comes from. "checkpoint" (default): the state dict holds
  kdbench's `normalize.mean` / `normalize.std`. "none": the model was trained on raw [0, 1] inputs (TRADES,
  ARD and RSLAD checkpoints). "dataset": this dataset's per-channel mean and std.
- `robustbench`: a RobustBench model-zoo entry, loaded by `robustbench.utils.load_model` (optional extra
  `kdbench[robustbench]`; needs network access the first time), for the suite's dataset (or `dataset = ...`)
  and `threat_model` (default "Linf"). RobustBench models take [0, 1] inputs and normalize inside; they
  declare no stages, so layer-wise methods cannot use them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.config import unknown_key_error
from ..core.errors import KdbenchError

NORMALIZE = ("checkpoint", "none", "dataset")
CHECKPOINT_KEYS = {"checkpoint", "arch", "normalize", "kind"}
ROBUSTBENCH_KEYS = {"robustbench", "dataset", "threat_model", "kind"}


@dataclass(frozen=True)
class PretrainedTeacher:
    source: str  # "checkpoint" | "robustbench"
    ref: str  # absolute path of the checkpoint, or the RobustBench model name
    arch: str = ""  # the registered architecture (checkpoints)
    sha256: str = ""  # the checkpoint file's content hash
    normalize: str = "checkpoint"
    dataset: str = ""  # RobustBench only
    threat_model: str = ""  # RobustBench only
    kind: str = ""  # the teacher kind it was trained as: it stands in for teachers of that kind only

    def display_name(self) -> str:
        """The teacher's name in labels and tables."""
        if self.source == "checkpoint":
            return f"{self.arch}@{self.sha256[:8]}"
        return f"robustbench:{self.ref}"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_teacher_table(table: dict, where: str, base_dir: Path, dataset: str) -> PretrainedTeacher:
    """`teacher = { checkpoint = ..., arch = ... }` or `teacher = { robustbench = ... }` -> PretrainedTeacher."""
    from ..models.registry import MODELS

    for key in table:
        if key not in CHECKPOINT_KEYS | ROBUSTBENCH_KEYS:
            raise unknown_key_error(where, key, CHECKPOINT_KEYS | ROBUSTBENCH_KEYS)
    for key, value in table.items():
        if not isinstance(value, str) or not value:
            raise KdbenchError(f"{where}.{key} must be a non-empty string, got {value!r}")
    if ("checkpoint" in table) == ("robustbench" in table):
        raise KdbenchError(f"{where} needs exactly one of 'checkpoint' (with 'arch') or 'robustbench'")
    if "checkpoint" in table:
        extra = sorted(set(table) - CHECKPOINT_KEYS)
        if extra:
            raise KdbenchError(f"{where}: {', '.join(extra)} only apply to robustbench teachers")
        if "arch" not in table:
            raise KdbenchError(f"{where} needs 'arch', the registered architecture of the checkpoint")
        MODELS.check(table["arch"])
        normalize = table.get("normalize", "checkpoint")
        if normalize not in NORMALIZE:
            raise KdbenchError(f"{where}.normalize {normalize!r} is unknown; choose from: {', '.join(NORMALIZE)}")
        path = Path(table["checkpoint"]).expanduser()
        path = (path if path.is_absolute() else base_dir / path).resolve()
        if not path.is_file():
            raise KdbenchError(f"{where}.checkpoint: file {str(path)!r} does not exist")
        return PretrainedTeacher("checkpoint", str(path), table["arch"], file_sha256(path), normalize,
                                 kind=_declared_kind(table, where))
    extra = sorted(set(table) - ROBUSTBENCH_KEYS)
    if extra:
        raise KdbenchError(f"{where}: {', '.join(extra)} only apply to checkpoint teachers")
    ds = table.get("dataset") or {"cifar10": "cifar10", "cifar100": "cifar100"}.get(dataset, "")
    if not ds:
        raise KdbenchError(f"{where}: say which RobustBench dataset the model is for (dataset = \"cifar10\", "
                           f"\"cifar100\" or \"imagenet\")")
    return PretrainedTeacher("robustbench", table["robustbench"], dataset=ds,
                             threat_model=table.get("threat_model", "Linf"), kind=_declared_kind(table, where))


def _declared_kind(table: dict, where: str) -> str:
    """The teacher table's `kind`: required, a registered teacher kind."""
    from ..core.errors import choices_error
    from .teachers import TEACHER_KINDS

    if "kind" not in table:
        raise KdbenchError(f"{where} needs 'kind', the teacher kind the model was trained as (it stands in for "
                           f"teachers of that kind only); choose from: {', '.join(TEACHER_KINDS.names())}")
    if table["kind"] not in TEACHER_KINDS:
        raise choices_error(f"teacher kind in {where}.kind", table["kind"], TEACHER_KINDS.names())
    return table["kind"]


# ---- what a pretrained teacher stands in for ----------------------------------------------------------------

def _count(kinds) -> str:
    return " and ".join(f"{n} {kind} teacher{'s' if n > 1 else ''}" for kind, n in sorted(kinds.items()))


def stand_ins(method: str, specs: list, pair_teacher: str, pretrained: tuple, where: str) -> list:
    """The pretrained teacher that stands in for each teacher a method asks for (`specs`, TeacherSpecs of the
    pair whose teacher is named `pair_teacher`): one declared as that spec's kind, in the order given. Every
    other combination is one error: a method that refuses pretrained teachers (`Distiller.pretrained_refused`),
    a teacher of another architecture or trained with parameters of its kind (a temperature, ...), or not
    exactly as many teachers of each kind as the pair declares (a pretrained teacher is never used twice)."""
    from collections import Counter

    from ..methods import METHODS

    if not specs:
        return []
    refused = METHODS.get(method).pretrained_refused
    if refused:
        raise KdbenchError(f"{where}: {method} cannot use a pretrained teacher: {refused}")
    for spec in specs:
        if spec.arch != pair_teacher:
            raise KdbenchError(f"{where}: {method} asks for a teacher of architecture {spec.arch!r}, which the "
                               f"pair's pretrained teacher cannot stand in for")
        if spec.params:
            params = ", ".join(f"{k} = {v!r}" for k, v in spec.params)
            raise KdbenchError(f"{where}: {method} asks for a {spec.kind} teacher trained with {params}, which a "
                               f"pretrained teacher cannot stand in for")
    asked, declared = Counter(s.kind for s in specs), Counter(p.kind for p in pretrained)
    if asked != declared:
        raise KdbenchError(f"{where}: {method} asks for {_count(asked)}, the pair declares {_count(declared)} "
                           f"(pretrained): give the pair one pretrained teacher per teacher asked for (a list for "
                           f"several) of the kinds asked, or pick the method's kind (methods.{method}.teacher)")
    left = list(pretrained)
    return [left.pop(next(i for i, p in enumerate(left) if p.kind == spec.kind)) for spec in specs]


# ---- loading -----------------------------------------------------------------------------------------------

# where training scripts keep the weights in a checkpoint dict, beside optimizer state, epoch, accuracy, ...
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network", "state_dict_model",
               "weights", "params")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile


def _training_script_globals() -> list:
    """What training scripts pickle beside the weights that builds no code, so that loading them stays
    `weights_only=True`: the run's arguments (argparse.Namespace) and numpy numbers (an accuracy, a loss)."""
    import argparse

    import numpy as np

    scalar = (getattr(np, "_core", None) or np.core).multiarray.scalar
    return [argparse.Namespace, np.dtype, scalar, (scalar, "numpy.core.multiarray.scalar"),
            *{type(np.dtype(code)) for code in "?bhilqBHILQefdFD"}]


def read_checkpoint(path: Path, device="cpu"):
    """What torch.load(path, weights_only=True) returns, with the few plain objects of `_training_script_globals`
    allowed; anything else that would need code to build is one error naming it."""
    try:
        with torch.serialization.safe_globals(_training_script_globals()):
            return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle safely is a bad checkpoint
        text = str(e)
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text) or re.search(r"but got <class '([^']+)'>",
                                                                                   text)
        why = (f"it holds a {unsafe.group(1)} object, which loading without running code (weights_only=True) "
               f"refuses: save the state dict alone, torch.save(model.state_dict(), path)" if unsafe else
               f"{type(e).__name__}: {text.splitlines()[0] if text else ''}")
        raise KdbenchError(f"cannot load checkpoint {str(path)!r}: {why}") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj, path: str) -> dict:
    """A plain {name: tensor} dict from what torch.load returned: a state dict itself, or a training checkpoint
    that keeps one under a known weight key (`WEIGHT_KEYS`, nested at most twice), whatever else it holds."""
    for _ in range(3):
        if not isinstance(obj, dict) or _is_state_dict(obj):
            break
        inner = [k for k in WEIGHT_KEYS if isinstance(obj.get(k), dict)]
        weights = [k for k in inner if _is_state_dict(obj[k])]
        if len(weights) > 1:
            raise KdbenchError(f"checkpoint {path!r} holds weights under {' and '.join(map(repr, weights))}: "
                               f"save the teacher's state dict alone")
        if not inner:
            break
        obj = obj[(weights or inner)[0]]
    if not _is_state_dict(obj):
        keys = f"; its keys: {_names([str(k) for k in obj])}" if isinstance(obj, dict) else ""
        raise KdbenchError(f"checkpoint {path!r} is not a state dict (a mapping of parameter names to tensors) "
                           f"and keeps none under a known key ({', '.join(WEIGHT_KEYS)}){keys}")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_checkpoint_into(model: nn.Module, pre: PretrainedTeacher, device, mean, std) -> nn.Module:
    """Load `pre`'s state dict into `model` (built for its arch), or raise one error listing every mismatch."""
    state = _unwrap(read_checkpoint(Path(pre.ref), device), pre.ref)
    ignore = tuple(getattr(model, "checkpoint_ignore", ()))
    state = {k: v for k, v in state.items() if not k.startswith(ignore) or not ignore}
    own = model.state_dict()
    norm_keys = [k for k in own if k.startswith("normalize.")]
    if pre.normalize != "checkpoint":
        values = ((0.0,) * len(mean), (1.0,) * len(std)) if pre.normalize == "none" else (mean, std)
        for key, vals in zip(("normalize.mean", "normalize.std"), values):
            if key in own:
                state[key] = torch.tensor(vals, dtype=own[key].dtype).view_as(own[key])
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_names(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches (checkpoint vs model): {_names(mismatched)}")
        hint = ""
        if set(missing) and set(missing) <= set(norm_keys):
            hint = ("; the checkpoint has no input normalization: add normalize = \"none\" (trained on [0, 1] "
                    "inputs) or \"dataset\" to the teacher table")
        raise KdbenchError(f"checkpoint {pre.ref!r} does not fit architecture {pre.arch!r}: "
                           f"{'; '.join(parts)}{hint}")
    model.load_state_dict(state)
    return model


class ExternalTeacher(nn.Module):
    """A model from elsewhere (RobustBench): forward only; no declared stages."""

    def __init__(self, net: nn.Module, name: str):
        super().__init__()
        self.net = net
        self.name = name

    def forward(self, x):
        return self.net(x)

    def forward_stages(self, x):
        raise KdbenchError(f"teacher {self.name} declares no stages: layer-wise methods (hierarchical, attention) "
                           f"need a kdbench architecture as teacher")


def load_robustbench_model(pre: PretrainedTeacher, model_dir: Path) -> nn.Module:
    try:
        from robustbench.utils import load_model
    except ImportError as e:
        if (e.name or "").split(".")[0] != "robustbench":  # installed, but something it imports is missing
            hint = (" (RobustBench imports pkg_resources, which setuptools 82 removed: pip install 'setuptools<82')"
                    if e.name == "pkg_resources" else "")
            raise KdbenchError(f"teacher robustbench:{pre.ref}: the RobustBench package is installed but cannot be "
                               f"imported: {e}{hint}") from None
        raise KdbenchError(f"teacher robustbench:{pre.ref} needs the optional RobustBench package: "
                           f"pip install 'kdbench[robustbench]'") from None
    try:
        net = load_model(model_name=pre.ref, dataset=pre.dataset, threat_model=pre.threat_model,
                         model_dir=str(model_dir))
    except Exception as e:  # noqa: BLE001 - unknown name, no network, ...
        raise KdbenchError(f"RobustBench could not load {pre.ref!r} ({pre.dataset}, {pre.threat_model}): "
                           f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return ExternalTeacher(net, pre.display_name())


def load_pretrained(pre: PretrainedTeacher, inp, device, cache_dir: Path) -> nn.Module:
    """The teacher `pre`, on `device`, in eval mode and frozen."""
    from ..models.registry import build_model

    if pre.source == "checkpoint":
        model = build_model(pre.arch, inp)
        model = load_checkpoint_into(model, pre, "cpu", inp.mean, inp.std)
    else:
        model = load_robustbench_model(pre, cache_dir / "robustbench")
    return model.to(device).eval().requires_grad_(False)
