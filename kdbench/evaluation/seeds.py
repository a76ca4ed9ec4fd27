"""The evaluation's seeds: every attack, transfer set and noise draw is seeded by the job's seed
and what it is (its name and eps as metric names write it), so its numbers never depend on what ran before."""

from __future__ import annotations

import zlib


def derived_seed(seed: int, *parts) -> int:
    """The seed of one random draw of the evaluation: the job's `seed` and the draw's name `parts`."""
    return (seed * 7919 + zlib.crc32("/".join(map(str, parts)).encode())) % 2**31
