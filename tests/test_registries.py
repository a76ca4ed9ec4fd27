"""Every registry entry carries every fact about itself, and adding an attack or a corruption is one entry: a
throw-away one is costed by the dry run, checked by the regression gate and run by the evaluation with no other
edit."""

import dataclasses

import pytest

from kdbench.evaluation.attacks import ATTACKS, AttackDef
from kdbench.data.corruptions import CORRUPTIONS, Corruption
import kdbench.data.load  # noqa: F401 - registers the datasets
from kdbench.data.registry import DATASETS
from kdbench.methods import METHODS
from kdbench.models.registry import MODELS
from kdbench.evaluation.noise_sweep import NOISE_FAMILIES
from kdbench.suite.configs import EvalConfig, TrainConfig
from kdbench.training.teachers import TEACHER_KINDS

REGISTRIES = [ATTACKS, CORRUPTIONS, DATASETS, METHODS, MODELS, NOISE_FAMILIES, TEACHER_KINDS]


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.kind)
def test_every_entry_has_a_summary(registry):
    assert registry.names()
    for entry in registry.entries():
        assert entry.summary.strip(), f"{registry.kind} {entry.name} has no summary"


def test_every_attack_says_its_cost_whether_it_is_checked_and_how_it_is_built():
    ev = EvalConfig()
    for entry in ATTACKS.entries():
        attack = entry.obj
        assert isinstance(attack, AttackDef), entry.name
        assert isinstance(attack.checked, bool), entry.name
        steps = attack.grad_steps(ev)
        assert isinstance(steps, int) and steps >= 1, (entry.name, steps)
        assert attack.min_classes >= 2, entry.name
        assert callable(attack.build) or attack.components, f"attack {entry.name} can neither be built nor run"


def test_every_corruption_has_its_own_random_stream_and_five_levels():
    streams = {}
    for entry in CORRUPTIONS.entries():
        c = entry.obj
        assert isinstance(c, Corruption) and len(c.levels) == 5, entry.name
        assert isinstance(c.stream, int) and c.stream >= 0, entry.name
        assert c.stream not in streams, f"{entry.name} shares its random stream with {streams.get(c.stream)}"
        streams[c.stream] = entry.name


def test_every_teacher_kind_names_its_cache_fields():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for entry in TEACHER_KINDS.entries():
        kind = entry.obj
        assert isinstance(kind.defaults, dict) and callable(kind.objective), entry.name
        assert set(kind.train_fields) <= fields, (entry.name, set(kind.train_fields) - fields)


def test_every_methods_baselines_are_registered_methods():
    for entry in METHODS.entries():
        assert set(entry.obj.baselines) <= set(METHODS.names()), entry.name


def test_a_throwaway_attack_and_corruption_are_costed_checked_and_run(trained_digits_model):
    """Registering is the whole of adding one: nothing else is edited."""
    from kdbench.reporting.check import is_checked
    from kdbench.execution.estimate import eval_grad_steps
    from kdbench.evaluation.evaluate import evaluate

    pgd = ATTACKS.get("pgd")
    model, data = trained_digits_model
    ev = EvalConfig(attacks=("pgd",), eps=(0.1,), pgd_steps=3, sweep_eps=(), corruptions=("contrast",),
                    severities=(1,), noise_families=(), sanity=False, transfer=False)
    with_new = dataclasses.replace(ev, attacks=("pgd", "throwaway"), corruptions=("contrast", "throwaway"))
    used = {s.stream for s in (e.obj for e in CORRUPTIONS.entries())}
    ATTACKS.add("throwaway", AttackDef("PGD with 5x the steps, for a test",
                                       lambda m, e, cfg, seed, k: pgd.build(m, e, cfg, seed, k),
                                       grad_steps=lambda cfg: 5 * cfg.pgd_steps))
    CORRUPTIONS.add("throwaway", Corruption("x inverted, for a test", (1, 1, 1, 1, 1), lambda x, c, g: 1 - x,
                                            stream=max(used) + 1))
    try:
        assert eval_grad_steps(with_new) - eval_grad_steps(ev) == 5 * ev.pgd_steps
        assert is_checked("throwaway@0.1")
        x, y = data.x_test[:64], data.y_test[:64]
        metrics, _, _ = evaluate(model, x, y, 10, with_new, seed=1, headline_eps=0.1)
        assert 0.0 <= metrics["throwaway@0.1"] <= metrics["clean"]
        assert metrics["corruption/throwaway/1"] < metrics["clean"]  # inverted digits are mostly misread
        assert "corruption/throwaway" in metrics
    finally:
        del ATTACKS._entries["throwaway"], CORRUPTIONS._entries["throwaway"]


def test_every_numeric_method_parameter_carries_its_range():
    """A method's numeric parameters each have a range on the entry (checked when a suite is read), and the
    defaults lie in it."""
    from kdbench.methods import METHODS

    for entry in METHODS.entries():
        cls = entry.obj
        numeric = {k for k, v in cls.defaults.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert set(cls.bounds) == numeric, (entry.name, numeric ^ set(cls.bounds))
        for key, bound in cls.bounds.items():
            assert bound.holds(cls.defaults[key]), (entry.name, key, cls.defaults[key], str(bound))

