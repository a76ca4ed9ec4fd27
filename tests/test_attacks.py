"""Every registered attack stays within eps (in its norm) and [0, 1], and lowers the accuracy of an undefended toy
model."""

import pytest
import torch

from kdbench.evaluation.attacks import ATTACKS, build_attack, run_attack
from kdbench.suite.configs import EvalConfig
from kdbench.training.loop import predict_logits

EPS = 0.1
EPS_OF_NORM = {"linf": EPS, "l2": 1.0}  # an L2 radius at which the undefended digits CNN falls to near chance
FAST = EvalConfig(pgd_steps=10, apgd_steps=10, square_queries=200)


def distance(x_adv, x, norm):
    d = (x_adv - x).flatten(1)
    return (d.abs().amax(1) if norm == "linf" else d.norm(dim=1)).max().item()


@pytest.fixture(scope="module")
def toy(trained_digits_model):
    """The undefended digits CNN and 128 test images it mostly gets right."""
    model, data = trained_digits_model
    return model, data.x_test[:128], data.y_test[:128]


def accuracy(model, x, y):
    return (predict_logits(model, x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("name", [n for n in ATTACKS.names() if not ATTACKS.get(n).components])
def test_attack_is_bounded_and_effective(toy, name):
    model, x, y = toy
    clean = accuracy(model, x, y)
    assert clean > 0.85
    norm = ATTACKS.get(name).norm
    eps = EPS_OF_NORM[norm]
    atk = build_attack(name, model, eps, FAST, seed=1, num_classes=10)
    x_adv = run_attack(atk, x, y, 64, seed=1)
    assert x_adv.shape == x.shape
    assert distance(x_adv, x, norm) <= eps * (1 + 1e-5)
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert accuracy(model, x_adv, y) < clean - 0.05
    assert not model.training  # attacks leave the model in eval mode


# fra31/auto-attack, autoattack.py: AutoAttack.__init__ builds APGD (rho .75, eot_iter 1), FAB, Square (p_init .8,
# resc_schedule=False) and APGD-T; set_version('standard') then sets, for norm 'Linf' and 'L2' alike: attacks
# apgd-ce, apgd-t, fab-t, square; apgd.n_restarts 1, apgd_targeted.n_target_classes 9 and n_restarts 1,
# fab.n_restarts 1 and n_target_classes 9, square.n_queries 5000; n_iter 100 everywhere (FAB's alpha_max 0.1,
# eta 1.05, beta 0.9: fab_base.py's defaults).
REFERENCE_STANDARD = {
    "apgd-ce": {"steps": 100, "n_restarts": 1, "thr_decr": 0.75, "eot_iter": 1, "loss": "ce"},  # thr_decr: rho
    "apgd-t": {"steps": 100, "n_restarts": 1, "thr_decr": 0.75, "eot_iter": 1},
    "fab-t": {"steps": 100, "n_restarts": 1, "multi_targeted": True, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9},
    "square": {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "loss": "margin", "rescale_schedule": False},
}


@pytest.mark.parametrize("attack,norm,eps", [("autoattack", "Linf", 8 / 255), ("autoattack-l2", "L2", 0.5)])
@pytest.mark.parametrize("num_classes,targets", [(10, 9), (100, 9), (5, 4)])
def test_autoattack_components_are_the_references(toy, attack, norm, eps, num_classes, targets):
    """fra31/auto-attack, version "standard", in L-inf and in L2 (the same components and settings): APGD-CE
    (100 steps, 1 restart), APGD-T (targeted DLR, 100 steps, 1 restart, 9 targets), FAB-T (100 steps, 1 restart,
    9 targets), Square (5000 queries, 1 restart, the reference's unrescaled p schedule), in that order;
    n_classes - 1 targets when there are fewer than 10 classes."""
    import torchattacks

    model = toy[0]
    comps = ATTACKS.get(attack).components
    assert ATTACKS.get(attack).norm == norm.lower()
    assert [c.name for c in comps] == list(REFERENCE_STANDARD)
    built = dict(zip(REFERENCE_STANDARD, (c.build(model, eps, 0, num_classes) for c in comps)))
    classes = {"apgd-ce": torchattacks.APGD, "apgd-t": torchattacks.APGDT, "fab-t": torchattacks.FAB,
               "square": torchattacks.Square}
    for name, settings in REFERENCE_STANDARD.items():
        atk = built[name]
        assert type(atk) is classes[name], name
        assert {k: getattr(atk, k) for k in settings} == settings, name
        assert atk.eps == eps and atk.norm == norm, name
    assert built["apgd-t"].n_target_classes == targets and built["fab-t"].n_target_classes == targets
    assert [c.min_classes for c in comps] == [2, 4, 2, 2]


@pytest.mark.slow  # torchattacks' standard AutoAttack (100-step APGD and FAB over 9 targets, Square) as reference
def test_autoattack_is_bounded_and_at_least_as_strong_as_torchattacks_default(toy):
    """Each component runs on the survivors of the previous ones; the ensemble is at least as strong as
    torchattacks' `AutoAttack(version="standard")` (10-step components), on the same examples."""
    import torchattacks

    from kdbench.evaluation.attacks import attack_correct

    model, x, y = toy
    x, y, eps = x[:48], y[:48], 0.04
    predict = lambda xa: predict_logits(model, xa).argmax(1)  # noqa: E731
    ok, parts, notes = attack_correct("autoattack", model, x, y, eps, FAST, 1, 10, predict)
    assert list(parts) == ["apgd-ce", "apgd-t", "fab-t", "square"] and not notes
    accs = [m.float().mean().item() for m in parts.values()]
    assert accs == sorted(accs, reverse=True) and torch.equal(parts["square"], ok)  # cumulative, last = ensemble
    theirs = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=1)
    x_theirs = run_attack(theirs, x, y, 48, 1)
    assert (x_theirs - x).abs().max() <= eps + 1e-6
    assert ok.float().mean().item() <= accuracy(model, x_theirs, y)
    assert ok.float().mean().item() < accuracy(model, x, y)


def test_attacks_restore_training_mode(toy):
    model, x, y = toy
    model.train()
    try:
        run_attack(build_attack("pgd", model, EPS, FAST, 1, 10), x[:8], y[:8], 8, 1)
        assert model.training
    finally:
        model.eval()


def test_attack_is_deterministic_for_a_seed(toy):
    model, x, y = toy
    a = run_attack(build_attack("pgd", model, EPS, FAST, 3, 10), x, y, 64, seed=3)
    b = run_attack(build_attack("pgd", model, EPS, FAST, 3, 10), x, y, 64, seed=3)
    assert torch.equal(a, b)


def test_stronger_eps_is_not_weaker(toy):
    model, x, y = toy
    accs = [accuracy(model, run_attack(build_attack("pgd", model, e, FAST, 1, 10), x, y, 128, 1), y)
            for e in (0.02, 0.1, 0.3)]
    assert accs[0] >= accs[1] >= accs[2]
    assert accs[2] < 0.1


def test_evaluation_attacks_each_eps_only_on_the_examples_that_survived_the_smaller_ones(toy, monkeypatch):
    """`<attack>@<eps>`: eps run in increasing order (whatever the suite's order); an attack runs only on the
    examples it has not broken yet (clean-correct, and robust to it at every smaller eps), so per-attack
    accuracy never rises with eps and never exceeds clean accuracy."""
    import kdbench.evaluation.attacks as attacks_mod
    import kdbench.evaluation.evaluate as ev_mod

    model, x, y = toy
    attacked = []  # (attack class, examples) per call
    real = attacks_mod.run_attack

    def counting(atk, xs, ys, bs, seed):
        attacked.append((type(atk).__name__, len(xs)))
        return real(atk, xs, ys, bs, seed)

    monkeypatch.setattr(attacks_mod, "run_attack", counting)  # every evaluation attack runs through it
    cfg = EvalConfig(attacks=("fgsm", "pgd"), eps=(0.2, 0.03, 0.08), pgd_steps=10, sweep_eps=(), corruptions=(),
                     sanity=False, transfer=False)
    metrics, _, _ = ev_mod.evaluate(model, x, y, 10, cfg, seed=1, headline_eps=0.08)
    n = len(x)
    for name, cls in (("fgsm", "FGSM"), ("pgd", "PGD")):
        accs = [metrics[f"{name}@{e}"] for e in ("0.03", "0.08", "0.2")]
        assert metrics["clean"] >= accs[0] >= accs[1] >= accs[2]
        sizes = [k for c, k in attacked if c == cls]
        # each call attacks exactly the survivors of the previous eps (clean-correct ones first)
        assert sizes == [round(metrics["clean"] * n), round(accs[0] * n), round(accs[1] * n)]
    assert metrics["pgd@0.03"] < metrics["clean"]  # and the attacks still break examples


def test_a_new_attack_is_checked_and_costed_from_its_entry():
    """Whether `check` compares an attack's metrics is a fact of its registry entry: a newly registered attack is
    checked with no other edit, and one registered with checked=False is not."""
    from kdbench.evaluation.attacks import AttackDef
    from kdbench.reporting.check import is_checked

    from kdbench.execution.estimate import eval_grad_steps

    pgd = ATTACKS.get("pgd")
    ev = EvalConfig(attacks=("pgd",), eps=(0.1,), sweep_eps=(), sanity=False)
    ATTACKS.add("throwaway-pgd", AttackDef("PGD again, for a test", pgd.build, grad_steps=lambda e: 7 * e.pgd_steps))
    ATTACKS.add("throwaway-unchecked", AttackDef("PGD again, unchecked", pgd.build, checked=False))
    try:
        assert is_checked("throwaway-pgd@0.1") and is_checked("throwaway-pgd/part@0.1")
        assert not is_checked("throwaway-unchecked@0.1")
        # and the dry run costs it from its entry
        costed = EvalConfig(attacks=("pgd", "throwaway-pgd"), eps=(0.1,), sweep_eps=(), sanity=False)
        assert eval_grad_steps(costed) - eval_grad_steps(ev) == 7 * ev.pgd_steps
    finally:
        del ATTACKS._entries["throwaway-pgd"], ATTACKS._entries["throwaway-unchecked"]
    assert not is_checked("throwaway-pgd@0.1")  # unknown names are not metrics of an attack
    for name in ("clean", "mca", "robust@0.1", "transfer@0.1", "noise-auc/gaussian", "pgd@0.1", "apgd-t@0.1",
                 "autoattack/apgd-ce@0.1"):
        assert is_checked(name), name
    for name in ("corruption/jpeg/3", "sweep@0.5", "noise/gaussian/0.5", "relative_mca"):
        assert not is_checked(name), name


def test_a_subclassed_method_has_its_own_summary():
    from kdbench.methods import METHODS

    summaries = {e.name: e.summary for e in METHODS.entries()}
    assert summaries["ard-kl"] != summaries["ard"]
