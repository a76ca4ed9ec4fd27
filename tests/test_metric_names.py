"""Metric names are built and parsed in one module; every name the evaluation writes parses back to itself."""

import pytest

from kdbench.core.metric_names import MetricName, at_eps, in_family, parse, try_parse


@pytest.mark.parametrize("name, expected", [
    ("clean", MetricName("clean")),
    ("mca", MetricName("mca")),
    ("pgd@0.1", MetricName("pgd", eps=0.1)),
    ("apgd-dlr@0.05", MetricName("apgd-dlr", eps=0.05)),
    ("robust@1e-05", MetricName("robust", eps=1e-05)),
    ("autoattack/apgd-t@0.1", MetricName("autoattack", eps=0.1, part="apgd-t")),
    ("corruption/contrast", MetricName("corruption", name="contrast")),
    ("corruption/contrast/5", MetricName("corruption", name="contrast", level="5")),
    ("noise/gaussian/0.25", MetricName("noise", name="gaussian", level="0.25")),
    ("noise-auc/blur", MetricName("noise-auc", name="blur")),
    ("cifar-c/fog/3", MetricName("cifar-c", name="fog", level="3")),
])
def test_parse_and_build_round_trip(name, expected):
    assert parse(name) == expected
    assert str(parse(name)) == name


def test_builders_format_numbers_with_g():
    assert at_eps("robust", 0.10) == "robust@0.1"
    assert at_eps("autoattack", 0.1, "square") == "autoattack/square@0.1"
    assert in_family("noise", "gaussian", 0.250) == "noise/gaussian/0.25"
    assert in_family("corruption", "jpeg", 3) == "corruption/jpeg/3"
    assert in_family("noise-auc", "gaussian") == "noise-auc/gaussian"


@pytest.mark.parametrize("bad", ["", "pgd@", "pgd@x", "@0.1", "a/b/c/d", "a//b", "a/b/c@0.1"])
def test_non_names_are_refused(bad):
    with pytest.raises(ValueError):
        parse(bad)
    assert try_parse(bad) is None


def test_every_metric_of_a_committed_record_round_trips():
    import json
    from pathlib import Path

    record = next((Path(__file__).resolve().parent.parent / "results" / "robustness" / "records").glob("*.json"))
    metrics = json.loads(record.read_text())["metrics"]
    assert len(metrics) > 50
    for m in metrics:
        assert str(parse(m)) == m
