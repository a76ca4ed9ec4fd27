"""Metric names: built and parsed here, and nowhere else.

Records, tables, plots, cards and the regression check key every number by a stable string:

    clean, mca                         accuracy on clean test data; mean corruption accuracy
    ece, nll, brier                    calibration on clean test data (lower is better); `corruption-ece`,
                                       `corruption-nll`, `corruption-brier`: their mean over every corruption and
                                       severity (as `mca`)
    <kind>@<eps>                       an attack's accuracy (`pgd@0.1`, `apgd-dlr@0.1`), the worst case
                                       (`robust@0.1`), transfer (`transfer@0.1`), the eps sweep (`sweep@0.3`),
                                       uniform noise (`noise@0.1`)
    <kind>/<part>@<eps>                a component of an ensemble attack (`autoattack/apgd-t@0.1`)
    <family>/<name>                    a corruption's mean over severities (`corruption/contrast`,
                                       `cifar-c/fog`, `ece/contrast`), a noise sweep's area under the curve
                                       (`noise-auc/gaussian`)
    <family>/<name>/<level>            one severity or level (`corruption/contrast/5`, `noise/gaussian/0.25`)

eps and levels are written with `%g` (0.1, not 0.10), so the same number always gives the same name.

The threat model is part of the kind: L-inf names carry no suffix (`pgd@0.1`, `robust@0.1`), every other norm
its own (`pgd-l2@0.5`, `apgd-dlr-l2@0.5`, `autoattack-l2/apgd-t@0.5`, `robust-l2@0.5`, and the certified accuracy
of randomized smoothing, `certified-l2@0.5`, `certified-l2/sigma0.25@0.5` per noise level); eps is then a radius in
that norm. A kind ending in another norm (`robust-l1@0.5`) is not a metric name.

Units: every metric is a fraction, shown x100 as points (accuracies, areas under accuracy curves, ECE), except
the calibration scores NLL (nats) and Brier (0 to 2), shown as they are (`score_unit`, `shown`).

Direction: every metric is better higher (accuracies, areas under accuracy curves) except the calibration errors
(`lower_is_better`); tables, differences and the regression gate ask this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WHOLE = ("clean", "mca")

NORMS = {"linf": "", "l2": "-l2"}  # kdbench's name of a norm -> the suffix it adds to a metric's kind
_NORM_SUFFIX = re.compile(r"-(l\d+|linf|l-inf)$")
CALIBRATION = ("ece", "nll", "brier")  # lower is better; on clean data, and per corruption as `<kind>/<name>`
LOWER_IS_BETTER = CALIBRATION + tuple(f"corruption-{k}" for k in CALIBRATION)


def with_norm(kind: str, norm: str) -> str:
    """The kind of a metric under `norm` (`robust`, "l2" -> `robust-l2`); L-inf kinds are unchanged."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose from: {', '.join(NORMS)}")
    return kind + NORMS[norm]


def norm_of(kind: str) -> str:
    """The norm a metric's kind is measured in ("linf" when it carries no norm suffix); ValueError for a suffix
    that names a norm kdbench does not have (`robust-l1`)."""
    m = _NORM_SUFFIX.search(kind)
    if m is None:
        return "linf"
    for norm, suffix in NORMS.items():
        if suffix and kind.endswith(suffix):
            return norm
    raise ValueError(f"unknown norm {m.group(1)!r} in metric kind {kind!r}; choose from: "
                     + ", ".join(n for n, s in NORMS.items() if s) + " (L-inf names carry no norm suffix)")


def check_norm(metric: str) -> None:
    """ValueError when `metric` (a metric name, or a glob over names) names a norm kdbench does not have."""
    head = metric.split("@", 1)[0].split("/", 1)[0]
    norm_of(head)


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of `metric` (a metric name) is better: the calibration errors."""
    name = try_parse(metric)
    return name is not None and name.kind in LOWER_IS_BETTER


SCORE_UNITS = {"nll": "nats", "brier": "Brier"}  # the metrics that are scores, not fractions, and their units


def score_unit(metric: str) -> str | None:
    """The unit of `metric` when it is a score rather than a fraction (`nll`, `corruption-nll`, `nll/<name>`: nats;
    the Brier score's own scale), else None: a fraction, which tables show x100 as points."""
    name = try_parse(metric)
    return None if name is None else SCORE_UNITS.get(name.kind.removeprefix("corruption-"))


def shown(metric: str, value: float, signed: bool = False) -> str:
    """`value` of `metric` as kdbench prints it: a fraction x100 in points with one decimal (two for a signed
    difference), a score (`score_unit`) as it is with three decimals."""
    if score_unit(metric) is not None:
        return f"{value:+.3f}" if signed else f"{value:.3f}"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.1f}"


def fmt_number(value: float) -> str:
    """An eps or a level as it appears in a metric name (`%g`)."""
    return f"{value:g}"


def at_eps(kind: str, eps: float | str, part: str | None = None) -> str:
    """`<kind>@<eps>`, or `<kind>/<part>@<eps>` for a component of an ensemble attack."""
    eps = eps if isinstance(eps, str) else fmt_number(eps)
    return f"{kind}/{part}@{eps}" if part else f"{kind}@{eps}"


def in_family(family: str, name: str, level: float | int | str | None = None) -> str:
    """`<family>/<name>`, or `<family>/<name>/<level>` for one severity or level."""
    if level is None:
        return f"{family}/{name}"
    return f"{family}/{name}/{level if isinstance(level, (str, int)) else fmt_number(level)}"


@dataclass(frozen=True)
class MetricName:
    """A parsed metric name: exactly one of the three shapes of the module docstring.

    `kind` is the attack or measure (`pgd`, `robust`, `corruption`, `noise-auc`, `clean`); `eps` is set for
    `<kind>@<eps>` names, `part` for ensemble components, `name` / `level` for per-family names."""

    kind: str
    eps: float | None = None
    part: str | None = None
    name: str | None = None
    level: str | None = None

    @property
    def norm(self) -> str:
        """The threat model of a `<kind>@<eps>` name ("linf" or "l2"); "linf" for names without eps."""
        return norm_of(self.kind)

    def __str__(self) -> str:
        if self.eps is not None:
            return at_eps(self.kind, self.eps, self.part)
        if self.name is not None:
            return in_family(self.kind, self.name, self.level)
        return self.kind


def parse(metric: str) -> MetricName:
    """The inverse of `at_eps` / `in_family` (and of the whole-test names). A column suffix such as `:mean`
    must be removed first. Raises ValueError on a string that is none of the shapes."""
    if "@" in metric:
        head, _, eps = metric.rpartition("@")
        kind, _, part = head.partition("/")
        try:
            value = float(eps)
        except ValueError:
            raise ValueError(f"not a metric name: {metric!r} (eps {eps!r} is not a number)") from None
        if not kind or "/" in part:
            raise ValueError(f"not a metric name: {metric!r}")
        norm_of(kind)  # a kind in an unknown norm is no metric name
        return MetricName(kind, eps=value, part=part or None)
    parts = metric.split("/")
    if len(parts) == 1 and parts[0]:
        return MetricName(parts[0])
    if len(parts) in (2, 3) and all(parts):
        return MetricName(parts[0], name=parts[1], level=parts[2] if len(parts) == 3 else None)
    raise ValueError(f"not a metric name: {metric!r}")


def try_parse(metric: str) -> MetricName | None:
    """`parse`, or None for a string that is not a metric name (a summary table's other columns)."""
    try:
        return parse(metric)
    except ValueError:
        return None
