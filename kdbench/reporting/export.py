"""`kdbench export RECORD --to DIR`: a record's model in a folder that needs only PyTorch.

DIR gets:
- `weights.pt`: the saved state dict (students.py), checked against the SHA-256 its record names;
- `model.py`: the architecture's code, written out from kdbench's own source (models.py and, for the
  real-scale architectures, their archs/ module) with kdbench's registry replaced by a plain dict;
- `load.py`: `load()` builds the architecture for the record's input shape and classes and loads the weights
  (`weights_only=True`); `python load.py` prints the logits of one all-zero input;
- `card.json`: the model card of the record's leaderboard row (cards.py).

The folder is written under a temporary name and renamed into place: it is there whole or not at all.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..core.errors import KdbenchError

HEADER = '''"""Architecture {arch!r} of kdbench, standalone: needs only PyTorch. Written by `kdbench export` from
kdbench's source; `build_model({arch!r}, ModelInput(shape, num_classes, mean, std))` builds it."""

{imports}


class _Registry(dict):
    """name -> factory(ModelInput) (kdbench's registry, reduced to a dict)."""

    def register(self, name, summary=""):
        def add(factory):
            self[name] = factory
            return factory

        return add


MODELS = _Registry()
'''

LOADER = '''"""Load the exported model with plain PyTorch (no kdbench needed): `from load import load; model = load()`.
Inputs are float tensors in [0, 1] of shape (N, {c}, {h}, {w}); the model normalizes inside."""

from pathlib import Path

import torch

from model import ModelInput, build_model

HERE = Path(__file__).resolve().parent
ARCH = {arch!r}
INPUT_SHAPE = {shape!r}
NUM_CLASSES = {classes!r}


def load(device="cpu"):
    # mean/std are placeholders: the state dict holds the model's own normalization buffers
    inp = ModelInput(INPUT_SHAPE, NUM_CLASSES, (0.0,) * INPUT_SHAPE[0], (1.0,) * INPUT_SHAPE[0])
    model = build_model(ARCH, inp)
    model.load_state_dict(torch.load(HERE / "weights.pt", map_location=device, weights_only=True))
    return model.to(device).eval()


if __name__ == "__main__":
    print(load()(torch.zeros(1, *INPUT_SHAPE)))
'''


def _split_source(module) -> tuple[list[str], list[str]]:
    """A module's source as (its top-level absolute imports, the rest without any import, registry line or
    `from . import ...` line)."""
    imports, body = [], []
    for line in inspect.getsource(module).splitlines():
        if line.startswith(("import ", "from ")):
            if not line.startswith(("from .", "from __future__")):
                imports.append(line)
            continue
        if line.startswith("MODELS: Registry"):
            continue
        body.append(line)
    return imports, body


def model_source(arch: str) -> str:
    """Standalone source of `arch`: models.py, then the module that registers `arch` after the modules of its
    package that it imports."""
    import importlib

    from ..models import registry as models

    factory = models.MODELS.get(arch)
    modules = [models]

    def add(module):  # a module after the modules of its package it imports (`from .resnet import PreActBlock`)
        if module in modules:
            return
        package = module.__name__.rpartition(".")[0]
        for line in inspect.getsource(module).splitlines():
            if line.startswith("from .") and not line.startswith(("from ..", "from . ")):
                dep = importlib.import_module(f"{package}.{line.split()[1][1:]}")
                add(dep)
        modules.append(module)

    add(importlib.import_module(factory.__module__))
    imports: list[str] = []
    parts = []
    for module in modules:
        found, body = _split_source(module)
        imports += [i for i in found if i not in imports]
        parts.append(f"# ---- from {module.__name__.replace('.', '/')}.py\n" + "\n".join(body).strip("\n"))
    head = HEADER.format(arch=arch, imports="from __future__ import annotations\n\n" + "\n".join(imports))
    return head + "\n\n" + "\n\n\n".join(parts) + "\n"


def _row_card(folder: Path, record: dict) -> dict:
    """The card of the record's row as the record's configuration ran it (current.py: the folder may also hold
    another configuration of the row)."""
    from ..records.store import load_records
    from .cards import build_cards, card_file
    from .current import row_config
    from .rows import group_key

    mine = (group_key(record), row_config(record))
    records = [r for r in load_records(folder)[0] if (group_key(r), row_config(r)) == mine]
    if record["job_id"] not in {r["job_id"] for r in records}:
        records.append(record)
    return build_cards(records, record["suite"])[card_file(group_key(record))]


def export_record(record_path: Path, to: Path) -> list[str]:
    """Write the export folder `to` for the record at `record_path`; returns the file names written."""
    from ..execution.external import read_record
    from ..models.registry import MODELS
    from ..records.students import verified_weights

    record = read_record(record_path)
    folder = Path(record_path).resolve().parent.parent
    weights = verified_weights(folder, record)
    info = record["student"]["weights"]
    arch = record["student"]["arch"]
    if MODELS.origin(arch).is_plugin or (arch not in MODELS and record.get("plugins")):  # the plugin's code
        raise KdbenchError(f"the student's architecture {arch!r} comes from a plugin "
                           f"({', '.join(p['name'] for p in record['plugins'])}): export copies kdbench's own model "
                           f"code only; the weights, a state dict for that architecture, are {str(weights)!r}")
    MODELS.check(arch)
    if "input_shape" not in info or "num_classes" not in info:
        raise KdbenchError(f"record {record['job_id']!r} does not say its input shape and classes: re-run its job")
    to = Path(to)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise KdbenchError(f"--to {str(to)!r} exists and is not an empty folder")
    shape = tuple(info["input_shape"])
    files = {
        "model.py": model_source(arch),
        "load.py": LOADER.format(arch=arch, shape=shape, classes=info["num_classes"], c=shape[0], h=shape[1],
                                 w=shape[2]),
        "card.json": json.dumps(_row_card(folder, record), indent=1, sort_keys=True) + "\n",
    }
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{to.name}.", dir=to.parent))
    os.chmod(tmp, 0o755)  # a folder for others to use, not mkdtemp's private 0700
    try:
        shutil.copyfile(weights, tmp / "weights.pt")
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        if to.exists():
            to.rmdir()
        os.replace(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ["weights.pt", *files]
