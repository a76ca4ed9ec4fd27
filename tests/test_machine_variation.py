"""The cross-machine model of the regression gate on simulated suites: measured variances moderated across rows,
the false-alarm rate it promises, and the drop it says it detects."""

import math

import numpy as np
import pytest

from kdbench.stats.machine_variation import (
    Variation,
    detectable,
    fit_prior,
    measured_s2,
    moderate,
    quantile,
    tolerance,
)


def _suite(rng, rows, seeds, scale, spread):
    """Per-row true sd of a metric's cross-machine difference: log-normal around `scale`, `spread` wide."""
    return scale * np.exp(spread * rng.standard_normal(rows))


def test_prior_recovers_a_common_variance_and_how_alike_the_rows_are():
    rng = np.random.default_rng(0)
    k = 3
    alike = [measured_s2(list(0.01 * rng.standard_normal(k)), None) for _ in range(400)]
    prior = fit_prior(alike, [k] * 400)
    assert prior.s2 == pytest.approx(1e-4, rel=0.15) and prior.df > 20  # one variance: the rows pool
    tau = _suite(rng, 400, k, 0.01, 1.0)
    unlike = [measured_s2(list(t * rng.standard_normal(k)), None) for t in tau]
    assert fit_prior(unlike, [k] * 400).df < 5  # very different rows keep mostly their own estimate
    assert fit_prior([1e-4], [3]) is None


def test_moderation_shrinks_towards_the_prior_and_adds_its_degrees_of_freedom():
    prior = fit_prior([1e-4, 4e-4, 2e-4, 1e-4, 3e-4], [3] * 5)
    v = moderate(1e-4, 3, prior)
    assert 0.01 < v.sd < math.sqrt(prior.s2) and v.df == pytest.approx(prior.df + 3)  # pulled up to the others
    assert moderate(9e-4, 3, prior).sd == pytest.approx(0.03)  # a row that measured more keeps what it measured
    assert moderate(None, 0, prior) == Variation(math.sqrt(prior.s2), prior.df)  # a row never re-run: the prior
    assert moderate(4e-4, 3, None) == Variation(0.02, 3)
    assert quantile(0.025, math.inf) == pytest.approx(1.96, abs=1e-3) and quantile(0.025, 2) > 4


def test_measured_variance_keeps_one_example_when_nothing_moved():
    assert measured_s2([0.0, 0.0, 0.0], 100) == pytest.approx(1e-4 / 3)
    assert measured_s2([0.02, -0.02], None) == pytest.approx(4e-4)


def _alarms(rng, suites, rows, metrics, k, spread):
    """How many of `suites` simulated unchanged suites a check on another machine fails: per (metric, row) a true
    sd log-normal around 1 point, the baseline's measured re-run and the check's re-run both drawn from it."""
    level = 0.05 / (rows * metrics)
    alarms = 0
    for _ in range(suites):
        tau = 0.01 * np.exp(spread * rng.standard_normal((metrics, rows)))
        s2 = (tau[..., None] * rng.standard_normal((metrics, rows, k))) ** 2
        d = (tau[..., None] * rng.standard_normal((metrics, rows, k))).mean(-1)
        failed = False
        for m in range(metrics):
            prior = fit_prior(list(s2[m].mean(-1)), [k] * rows)
            failed |= any(d[m, r] < -tolerance(moderate(s2[m, r].mean(), k, prior), k, level) for r in range(rows))
        alarms += failed
    return alarms


def test_the_gate_keeps_its_false_alarm_rate_on_suites_that_did_not_change():
    rng = np.random.default_rng(1)
    for k, spread in ((3, 0.0), (3, 0.5), (5, 0.5)):  # rows alike, rows that differ by a factor of 2-3
        alarms = _alarms(rng, 100, rows=20, metrics=10, k=k, spread=spread)
        assert alarms <= 10, (k, spread, alarms)  # 5% of unchanged suites expected; 10% allowed for 100 draws


def test_a_drop_at_the_detectable_size_is_found_about_as_often_as_promised():
    rng = np.random.default_rng(2)
    rows, k = 20, 5
    tau = 0.01
    found = 0
    s2 = [measured_s2(list(tau * rng.standard_normal(k)), 360) for _ in range(rows)]
    prior = fit_prior(s2, [k] * rows)
    v = moderate(s2[0], k, prior)
    level = 0.05 / 200
    det = detectable(v, k, level)
    for _ in range(400):
        d = tau * rng.standard_normal(k) - det
        found += d.mean() < -tolerance(v, k, level)
    assert 0.6 < found / 400 < 0.97  # 80% with the true sd; the row's estimate of it is close
    assert det < 0.05  # a 1-point sd over 5 seeds detects a 5-point drop


# --- the gate on synthetic records: baseline, its measured variation, a check on a third machine ---------------

CPU = {"model": "Some CPU", "capability": "AVX2", "flags": ["avx", "avx2", "fma"]}
METHODS = ("ce", "kd", "at", "trades", "ard", "rslad", "dtkd", "pointwise")


def _records(values, cpu_model, seeds=(1, 2, 3, 4, 5)):
    env = {"device": "cpu", "threads": 1, "torch": "2.x", "torchattacks": "3.x", "gpu": None,
           "cpu": {**CPU, "model": cpu_model}}
    return [{"job_id": f"{method}-{seed}", "dataset": "digits", "pair": "a->b", "method": method, "teacher_kind": None,
             "role": "student", "seed": seed, "flags": [], "method_params": {}, "env": env, "examples": None,
             "metrics": {m: float(v) for m, v in values[method, seed].items()}} for method in METHODS for seed in seeds]


def _values(rng, base, tau, moved=True):
    """{(method, seed): {metric: value}}: `base` moved by N(0, tau[metric]) per seed when `moved`."""
    return {key: {m: v + (tau[m] * rng.standard_normal() if moved else 0.0) for m, v in metrics.items()}
            for key, metrics in base.items()}


@pytest.fixture
def gate(tmp_path):
    """A suite of 8 rows x 5 seeds: clean moves by 0.3 points across machines, robust@0.1 by 1, transfer@0.2 by 8
    (too unstable to detect a 5-point drop); the baseline with a measured variation, and a check's re-run."""
    from kdbench.reporting.check import baseline_from_records

    rng = np.random.default_rng(3)
    tau = {"clean": 0.003, "robust@0.1": 0.01, "transfer@0.2": 0.08}
    base = {(m, s): {"clean": 0.9 + 0.02 * rng.standard_normal(), "robust@0.1": 0.5 + 0.1 * rng.standard_normal(),
                     "transfer@0.2": 0.3 + 0.1 * rng.standard_normal()} for m in METHODS for s in range(1, 6)}
    measured = _values(rng, base, tau)
    baseline = baseline_from_records(_records(base, "CPU A"), "s", 0.1, rerun=_records(measured, "CPU B"))
    return baseline, base, tau, rng


def test_an_unchanged_rerun_on_another_machine_passes_and_a_detectable_drop_fails(gate):
    from kdbench.reporting.check import baseline_from_records, compare
    from kdbench.suite.configs import CheckConfig

    baseline, base, tau, rng = gate
    again = _values(rng, base, tau)
    table = compare(baseline, baseline_from_records(_records(again, "CPU C"), "s", 0.1), CheckConfig())
    assert set(table["machine"]) == {"other machine"} and set(table["model"]) == {"measured"}
    assert (table["status"] == "ok").all(), table[table["status"] != "ok"]
    at = table[(table["row"].str.endswith("| at")) & (table["metric"] == "robust@0.1")].iloc[0]
    assert at["detectable"] < 0.05  # robust@0.1 moves by 1 point per seed: a 5-point drop is caught
    drop = at["detectable"] + 0.005
    for s in range(1, 6):
        again["at", s]["robust@0.1"] -= drop
    table = compare(baseline, baseline_from_records(_records(again, "CPU C"), "s", 0.1), CheckConfig())
    bad = table[table["status"] == "regressed"]
    assert list(zip(bad["row"], bad["metric"])) == [("digits | a->b | at", "robust@0.1")]


def test_a_metric_too_unstable_to_check_is_reported_as_such(gate):
    from kdbench.reporting.check import compare, elsewhere
    from kdbench.reporting.check_summary import power_lines
    from kdbench.suite.configs import CheckConfig

    baseline = gate[0]
    table = compare(baseline, elsewhere(baseline), CheckConfig())
    weak = table[table["detectable"] > 0.05]
    assert set(weak["metric"]) == {"transfer@0.2"} and len(weak) == len(METHODS)
    lines = power_lines(table, 0.1, 0.05)
    assert f"{2 * len(METHODS)} of {3 * len(METHODS)} metrics detect a 5.0-point drop; {len(METHODS)} cannot" \
           in "\n".join(lines)
    assert any(line.strip().startswith("at: transfer@0.2 (") for line in lines)
    assert baseline["rows"]["digits | a->b | at"]["detectable"]["transfer@0.2"] > 0.05  # written in the baseline


def test_the_same_machine_stays_exact(gate):
    from kdbench.reporting.check import baseline_from_records, compare
    from kdbench.suite.configs import CheckConfig

    baseline, base, tau, rng = gate
    same = _values(rng, base, tau, moved=False)
    same["kd", 2]["clean"] -= 1 / 359  # one example
    table = compare(baseline, baseline_from_records(_records(same, "CPU A"), "s", 0.1), CheckConfig())
    assert set(table["machine"]) == {"same machine"} and set(table["model"]) == {"exact"}
    bad = table[table["status"] == "regressed"]
    assert list(zip(bad["row"], bad["metric"], bad["seed"])) == [("digits | a->b | kd", "clean", "2")]
