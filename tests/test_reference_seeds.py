"""`reference_seeds = N`: teacher reference jobs at the suite's first N seeds only; students at every seed."""

import pytest

from kdbench.core.errors import KdbenchError
from kdbench.suite.load import load_suite, parse_suite, with_overrides

DOC = {"name": "t", "dataset": "digits", "seeds": [1, 2, 3], "methods": {"kd": {}, "ce": {}}}


def _teacher_seeds(suite):
    return sorted(j.seed for j in suite.jobs() if j.is_teacher)


def test_every_seed_by_default():
    suite = parse_suite(dict(DOC))
    assert _teacher_seeds(suite) == [1, 2, 3]
    assert sum(not j.is_teacher for j in suite.jobs()) == 6


def test_first_seeds_only():
    suite = parse_suite({**DOC, "reference_seeds": 1})
    assert _teacher_seeds(suite) == [1]
    assert sorted(j.seed for j in suite.jobs() if not j.is_teacher) == [1, 1, 2, 2, 3, 3]
    # a --seeds override keeps the rule: the first N of the seeds run
    assert _teacher_seeds(with_overrides(suite, seeds=[3, 2])) == [3]


@pytest.mark.parametrize("bad", [0, -1, True, "1", 1.5])
def test_bad_value_is_one_clear_error(bad):
    with pytest.raises(KdbenchError, match="reference_seeds must be an integer >= 1"):
        parse_suite({**DOC, "reference_seeds": bad})


def test_default_suite_has_first_seed_references():
    suite = load_suite("robustness")
    teachers = [j for j in suite.jobs() if j.is_teacher]
    assert {j.seed for j in teachers} == {suite.seeds[0]}
    assert {j.teacher_kind for j in teachers} == {"standard", "adversarial", "defensive"}
