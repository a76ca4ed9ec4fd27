"""Metric names: built and parsed here, and nowhere else.

Records, tables, plots, cards and the regression check key every number by a stable string:

    clean, mca                         accuracy on clean test data; mean corruption accuracy
    <kind>@<eps>                       an attack's accuracy (`pgd@0.1`, `apgd-dlr@0.1`), the worst case
                                       (`robust@0.1`), transfer (`transfer@0.1`), the eps sweep (`sweep@0.3`),
                                       uniform noise (`noise@0.1`)
    <kind>/<part>@<eps>                a component of an ensemble attack (`autoattack/apgd-t@0.1`)
    <family>/<name>                    a corruption's mean over severities (`corruption/contrast`,
                                       `cifar-c/fog`), a noise sweep's area under the curve (`noise-auc/gaussian`)
    <family>/<name>/<level>            one severity or level (`corruption/contrast/5`, `noise/gaussian/0.25`)

eps and levels are written with `%g` (0.1, not 0.10), so the same number always gives the same name.
"""

from __future__ import annotations

from dataclasses import dataclass

WHOLE = ("clean", "mca")


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
