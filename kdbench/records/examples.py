"""Per-example correctness in records, compact: one bit per test example, packed and base64-encoded.

A record's `examples` holds {"n": test examples, "masks": {"clean": "<b64>", "robust@0.1": "<b64>", ...}}:
`clean` (classified correctly) and, per eps, `robust@<eps>` (correct clean and under every attack run at that
eps: the per-example worst case). 360 digits examples take 60 characters per mask. Paired tests (paired.py) and
the regression gate's noise model (noise.py) read them back with `masks_of`.
"""

from __future__ import annotations

import base64

import numpy as np


def pack(mask) -> str:
    """A 1-D boolean tensor or array -> base64 of its bits (numpy's packbits order)."""
    arr = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask, dtype=bool).ravel()
    return base64.b64encode(np.packbits(arr).tobytes()).decode("ascii")


def unpack(text: str, n: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))
    if len(bits) < n or bits[n:].any():
        raise ValueError(f"a mask of {len(bits)} bits does not hold {n} examples")
    return bits[:n].astype(bool)


def pack_masks(masks: dict) -> dict | None:
    """{name: bool tensor} (as filled by evaluate's `masks`) -> the record's `examples` entry; None if empty."""
    if not masks:
        return None
    n = {len(m) for m in masks.values()}
    if len(n) != 1:
        raise ValueError(f"masks of different lengths: {sorted(n)}")
    return {"n": n.pop(), "masks": {name: pack(m) for name, m in sorted(masks.items())}}


def masks_of(record: dict) -> dict[str, np.ndarray]:
    """The per-example correctness a record stores, {metric name: bool array}; {} for records without it (made
    before they were kept) or with a damaged entry."""
    ex = record.get("examples")
    if not isinstance(ex, dict) or not isinstance(ex.get("n"), int) or not isinstance(ex.get("masks"), dict):
        return {}
    try:
        return {name: unpack(text, ex["n"]) for name, text in ex["masks"].items()}
    except (ValueError, TypeError):
        return {}


def examples_n(record: dict) -> int | None:
    ex = record.get("examples")
    return ex.get("n") if isinstance(ex, dict) and isinstance(ex.get("n"), int) else None
