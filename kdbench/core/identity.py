"""The identity of a computation: a hash of what determines its numbers, and nothing else.

Job ids (suite.Job.job_id), teacher cache keys (teachers.teacher_key), transfer-example cache keys and the
protocol jobs of external models are all `digest(config)`: SHA-256 (first 16 hex digits) of the config's
canonical JSON after `content_only` has removed where things live:

- the data folder and the download flag (`data_dir`, `download`): the same files read from another folder, or
  fetched instead of copied, are the same data;
- the path of a user's dataset (`npz:PATH`, `folder:PATH`): it is identified by its content hash (`sha256`),
  which the suite loader fills in, so the name keeps only its kind (`npz:`);
- the path of a teacher checkpoint (`ref` of a `source = "checkpoint"` teacher): its `sha256` identifies it;
- the name of a plugin file (`file` of an entry of `plugins`, registry.Origin.identity): its `sha256` identifies
  it. A module or package plugin keeps its name (and a package its version) beside the hash of its sources.

So moving a data folder or a checkpoint, or merging results from another machine, keeps every id; changing a
byte of the data or the weights changes them. What the numbers depend on by design (the evaluation protocol,
`jobs.PROTOCOL`) is a field of the config like any other.

A field added to a config after ids were handed out would change every id (and a resume would re-run
everything). NEUTRAL lists such fields with the value that means "not used": a field at that value is left out
of the identity, so jobs that do not use it keep their ids. This table is the only place that decides it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

LOCATION_KEYS = frozenset({"data_dir", "download"})
NEUTRAL = {
    "train_subset": 0, "test_subset": 0, "sha256": "",  # data: the whole splits; not a user dataset
    "pretrained": None, "ensemble": [],  # pair: a teacher trained here, not loaded
    "gpu": None,  # a job on the CPU: no [gpu] settings
    "adv_warmup": 0.0,  # train: the inner attack at adv_eps from the first step (no eps warm-up)
    "teacher_train": None,  # a job whose teachers train with its own [train] (no per-method training settings)
    "plugins": [],  # every entry the job uses is kdbench's own (registry.plugin_ids)
    "eps_l2": [], "headline_eps_l2": None, "certify": None,  # eval: no L2 threat model, no certification
}


def content_only(value: Any) -> Any:
    """`value` (a config: dicts, lists and scalars) without the locations listed in the module docstring."""
    if isinstance(value, dict):
        out = {k: content_only(v) for k, v in value.items()
               if k not in LOCATION_KEYS and not (k in NEUTRAL and _neutral(v, NEUTRAL[k]))}
        if out.get("source") == "checkpoint" and out.get("sha256"):
            out.pop("ref", None)
        if set(out) == {"file", "sha256"} and out["sha256"]:  # a plugin file: its content, not its name
            out.pop("file")
        name = out.get("name")
        if isinstance(name, str) and ":" in name and out.get("sha256"):
            out["name"] = name.split(":", 1)[0] + ":"
        return out
    if isinstance(value, (list, tuple)):
        return [content_only(v) for v in value]
    return value


def _neutral(value: Any, neutral: Any) -> bool:
    return value == neutral or (isinstance(value, tuple) and list(value) == neutral)


def digest(config: dict) -> str:
    """The 16-hex-digit identity of `config` (see the module docstring)."""
    blob = json.dumps(content_only(config), sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
