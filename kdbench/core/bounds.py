"""The range a numeric parameter must lie in, checked when a suite is read (a method's `bounds`), so a value
outside it is one line at load time instead of a NaN loss or a failed job minutes later."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Bound:
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        num = lambda v: "inf" if math.isinf(v) else f"{v:g}"  # noqa: E731
        return f"{'(' if self.low_open else '['}{num(self.low)}, {num(self.high)}{')' if self.high_open else ']'}"


POSITIVE = Bound(0.0, low_open=True, high_open=True)  # temperatures, exponents
NON_NEGATIVE = Bound(0.0, high_open=True)  # loss weights
WEIGHT = Bound(0.0, 1.0)  # a convex-combination weight
FRACTION = Bound(0.0, 1.0, high_open=True)  # a fraction of training (warm-up, a stage's end)
AT_LEAST_ONE = Bound(1.0, high_open=True)  # counts
