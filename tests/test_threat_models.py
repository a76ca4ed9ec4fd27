"""The L2 threat model beside L-inf: attacks at their own radii, a worst case and sanity flags per norm, the dry
run's cost, bad input, and job ids of suites that do not ask for L2."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from conftest import run_main
from kdbench.evaluation.evaluate import evaluate
from kdbench.suite.configs import EvalConfig, parse_eval

L2 = EvalConfig(attacks=("fgsm", "apgd-ce-l2", "apgd-dlr-l2"), eps=(0.1,), eps_l2=(0.25, 0.75), headline_eps_l2=0.25,
                pgd_steps=5, apgd_steps=10, sweep_eps=(), corruptions=(), noise_families=(), transfer=False)


@pytest.fixture(scope="module")
def trained(trained_digits_model):
    model, data = trained_digits_model
    return model, data.x_test[:120], data.y_test[:120]


def test_l2_attacks_run_at_their_radii_with_a_worst_case_per_norm(trained, monkeypatch):
    """L2 attacks run at eval.eps_l2 (never at the L-inf eps), in increasing order, each only on the examples it
    has not broken at a smaller radius; robust-l2 is the per-example worst case, kept as a mask."""
    import kdbench.evaluation.attacks as attacks_mod

    model, x, y = trained
    calls = []
    real = attacks_mod.run_attack

    def spy(atk, xs, ys, bs, seed):
        calls.append((type(atk).__name__, getattr(atk, "norm", "Linf"), float(atk.eps), len(xs)))
        return real(atk, xs, ys, bs, seed)

    monkeypatch.setattr(attacks_mod, "run_attack", spy)
    per_example: dict = {}
    metrics, flags, details = evaluate(model, x, y, 10, L2, seed=1, headline_eps=0.1, per_example=per_example)
    main = [c for c in calls if c[1] == "L2" and c[2] in (0.25, 0.75)]
    assert {c[2] for c in calls if c[1] == "L2"} >= {0.25, 0.75} and all(c[2] != 0.1 for c in calls if c[1] == "L2")
    n = len(x)
    for name in ("apgd-ce-l2", "apgd-dlr-l2"):
        a, b = metrics[f"{name}@0.25"], metrics[f"{name}@0.75"]
        assert metrics["clean"] >= a >= b
    first_ce = next(c for c in main if c[2] == 0.75)  # the larger radius attacks the smaller one's survivors
    assert first_ce[3] == round(metrics["apgd-ce-l2@0.25"] * n)
    for e in ("0.25", "0.75"):
        worst = metrics[f"robust-l2@{e}"]
        assert worst <= min(metrics[f"apgd-ce-l2@{e}"], metrics[f"apgd-dlr-l2@{e}"]) + 1e-9
        assert per_example[f"robust-l2@{e}"].float().mean().item() == pytest.approx(worst)
    assert metrics["robust-l2@0.75"] < metrics["robust-l2@0.25"] < metrics["clean"]
    assert "fgsm@0.1" in metrics and "robust@0.1" in metrics and "fgsm@0.25" not in metrics
    # the L2 part's own evidence: which attack broke what, the convergence check at the L2 headline, random noise
    assert set(details["worst_case_l2"]) == {"0.25", "0.75"}
    assert details["convergence_l2"]["eps"] == "0.25" and details["convergence_l2"]["attack"] in L2.attacks
    assert "noise-l2@0.25" in metrics and metrics["noise-l2@0.25"] >= metrics["robust-l2@0.25"]
    assert not [f for f in flags if f.endswith("-l2")]  # an undefended model: no L2 flag


class Saturated(nn.Module):
    """Logits x 1000: CE gradients vanish (a defensively distilled model's softmax), the decision is unchanged."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) * 1000.0


def test_l2_masking_is_caught_and_seen_through(trained):
    """On a saturated model the CE-loss L2 attack fails where the margin one does not: ce-above-margin-l2 fires and
    the L2 see-through attacks (pgd-rescaled-l2, apgd-t-l2) join the L2 worst case."""
    model, x, y = trained
    cfg = dataclasses.replace(L2, attacks=("pgd-l2", "apgd-dlr-l2"), eps_l2=(0.5,), headline_eps_l2=0.5, sanity=True)
    metrics, flags, details = evaluate(Saturated(model).eval(), x[:80], y[:80], 10, cfg, seed=1, headline_eps=0.1)
    assert "ce-above-margin-l2" in flags and "zero-gradients" in flags
    assert metrics["pgd-l2@0.5"] > metrics["apgd-dlr-l2@0.5"] + 0.1
    made = details["worst_case_l2"]["0.5"]
    assert {"pgd-rescaled-l2", "apgd-t-l2"} <= set(made)
    assert metrics["robust-l2@0.5"] <= metrics["apgd-dlr-l2@0.5"]


def test_unbounded_l2_check_breaks_everything_at_half_the_diagonal(trained):
    model, x, y = trained
    from kdbench.evaluation.sanity import compute_flags  # noqa: F401  (the flag reads this evidence)

    metrics, flags, details = evaluate(model, x[:60], y[:60], 10, L2, seed=1, headline_eps=0.1)
    assert "unbounded-not-broken-l2" not in flags


def test_a_suite_without_l2_keeps_its_job_ids(tiny_suite):
    """The new eval fields at their 'not used' values are left out of the identity (core/identity.py NEUTRAL), so
    suites that do not ask for L2 or certification keep every job id."""
    from kdbench.core.identity import digest

    ev = dataclasses.asdict(EvalConfig())
    assert ev["eps_l2"] == () and ev["headline_eps_l2"] is None and ev["certify"] is None
    without = {k: v for k, v in ev.items() if k not in ("eps_l2", "headline_eps_l2", "certify")}
    assert digest({"eval": ev, "seed": 1}) == digest({"eval": without, "seed": 1})
    assert digest({"eval": ev, "seed": 1}) != digest({"eval": {**ev, "eps_l2": (0.5,)}, "seed": 1})


def test_parse_fills_the_l2_headline_and_certified_radii():
    ev = parse_eval({"attacks": ["pgd", "apgd-ce-l2"], "eps": [0.1], "eps_l2": [0.25, 0.5, 1.0],
                     "certify": {"sigma": [0.25]}})
    assert ev.headline_eps_l2 == 0.5 and ev.certify.radii == (0.0, 0.25, 0.5, 1.0)
    assert parse_eval({"attacks": ["apgd-ce-l2"], "eps_l2": [0.3, 0.9]}).headline_eps_l2 == 0.9  # the middle


BAD_EVAL = {
    "negative radius": ({"eps_l2": [-0.5]}, "radius -0.5 must be > 0"),
    "radius beyond the diagonal": ({"eps_l2": [0.5, 8.5]}, "larger than the image diagonal sqrt(C*H*W) = 8"),
    "L2 attack without radii": ({"eps_l2": []}, "names L2 attacks (apgd-ce-l2) but eval.eps_l2 names no radius"),
    "headline not a radius": ({"headline_eps_l2": 0.3}, "must be one of eval.eps_l2"),
    "sigma 0": ({"certify": {"sigma": [0.0]}}, "every noise level must be > 0"),
    "negative sigma": ({"certify": {"sigma": [0.25, -1.0]}}, "every noise level must be > 0"),
    "n0 0": ({"certify": {"n0": 0}}, "eval.certify.n0 must be >= 1, got 0"),
    "n 0": ({"certify": {"n": 0}}, "eval.certify.n must be >= 1, got 0"),
    "alpha 0": ({"certify": {"alpha": 0.0}}, "eval.certify.alpha 0.0 is outside (0, 1)"),
    "alpha 1": ({"certify": {"alpha": 1.0}}, "eval.certify.alpha 1.0 is outside (0, 1)"),
    "certified radius beyond the diagonal": ({"certify": {"radii": [0.0, 9.0]}}, "eval.certify.radii: radius 9.0 is"),
    "certify key mistyped": ({"certify": {"sigmas": [0.25]}}, "unknown key 'sigmas' in eval.certify"),
}


@pytest.mark.parametrize("case", sorted(BAD_EVAL))
def test_bad_l2_and_certify_settings_exit_2_and_write_nothing(tmp_path, case):
    table, message = BAD_EVAL[case]
    ev = {"attacks": ["fgsm", "apgd-ce-l2"], "eps": [0.1], "eps_l2": [0.5], **table}
    lines = [f"{k} = {json.dumps(v)}" for k, v in ev.items() if k != "certify"]
    if "certify" in ev:
        lines += ["[eval.certify]"] + [f"{k} = {json.dumps(v)}" for k, v in ev["certify"].items()]
    suite = tmp_path / "bad.toml"
    suite.write_text('name = "bad"\ndataset = "digits"\n[methods]\nce = {}\n[eval]\n' + "\n".join(lines) + "\n")
    out = tmp_path / "out"
    proc = run_main("run", "--suite", suite, "--out", out, "--dry-run")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("where", ["cli", "suite"])
def test_check_refuses_an_unknown_norm_in_a_metric_name(tmp_path, where):
    results = tmp_path / "results"
    if where == "cli":
        proc = run_main("check", "--suite", "robustness", "--results", results, "--tolerance", "robust-l1@0.5=0.1")
    else:
        suite = tmp_path / "s.toml"
        suite.write_text('name = "s"\ndataset = "digits"\n[methods]\nce = {}\n[check]\ntolerance = '
                         '{ "pgd-linf@0.1" = 0.05 }\n')
        proc = run_main("check", "--suite", suite, "--results", results)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "unknown norm" in proc.stderr and "choose from: l2" in proc.stderr
    assert not results.exists()


def test_the_dry_run_costs_the_l2_attacks_and_certification():
    """Each L2 attack at each L2 radius, its convergence check and the unbounded check; and the noisy copies of
    certification (every skip-th example, per sigma): the CIFAR-10 suite's paper settings cost 2 x 100,100 / 20
    forward passes per test image."""
    from kdbench.evaluation.threat_model import NOISE_DRAWS
    from kdbench.execution.estimate import eval_forward_passes, eval_grad_steps
    from kdbench.suite.load import load_suite

    linf = EvalConfig(attacks=("pgd",), eps=(0.1,), sweep_eps=(), pgd_steps=10, apgd_steps=20)
    both = dataclasses.replace(linf, attacks=("pgd", "apgd-ce-l2", "apgd-dlr-l2"), eps_l2=(0.5, 1.0),
                               headline_eps_l2=0.5)
    # 2 attacks x 20 steps x 2 radii, the strongest again at 2x steps with 2 restarts, the unbounded check (20)
    assert eval_grad_steps(both) - eval_grad_steps(linf) == 2 * 20 * 2 + 2 * 2 * 20 + 20
    assert eval_forward_passes(both) - eval_forward_passes(linf) == NOISE_DRAWS
    cifar = load_suite("robustness-cifar10").eval
    no_cert = dataclasses.replace(cifar, certify=None)
    assert eval_forward_passes(cifar) - eval_forward_passes(no_cert) == 2 * (100 + 100_000) // 20
    assert cifar.certify.sigma == (0.25, 0.5) and cifar.certify.n == 100_000 and cifar.certify.alpha == 0.001
    assert cifar.eps_l2 == (0.5,) and cifar.headline_eps_l2 == 0.5


def test_the_default_suite_reports_l2_for_every_row_and_keeps_certification_opt_in():
    from kdbench.suite.load import load_suite

    ev = load_suite("robustness").eval
    assert ev.headline_eps_l2 == 0.5 and {"apgd-ce-l2", "apgd-dlr-l2"} <= set(ev.attacks) and ev.certify is None


def test_at_l2_perturbs_within_its_l2_ball():
    from kdbench.methods import METHODS, TrainContext
    from kdbench.models.registry import ModelInput, build_model

    torch.manual_seed(0)
    student = build_model("cnn-small", ModelInput((1, 8, 8), 10, (0.5,), (0.25,)))
    d = METHODS.get("at-l2")(student, [], {"eps": 0.5}, TrainContext(10, (1, 8, 8), 1, 0.1, 5, 0.025))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    x_adv = d.pgd(x, y)
    assert ((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all() and (x_adv - x).abs().max() > 0.1
    assert d.pgd.steps == 5 and d.pgd.alpha == pytest.approx(2.5 * 0.5 / 5)


# --- the session's tiny run (its suite has an L2 radius and certification): reports, gate, cards -------------------


def _records(folder):
    return {p: json.loads(p.read_text()) for p in (folder / "records").glob("*.json")}


def _shift(folder, method, seeds, metric, delta):
    for p, doc in _records(folder).items():
        if doc["method"] == method and doc["seed"] in seeds:
            doc["metrics"][metric] += delta
            p.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def tiny_l2(tiny_run, tmp_path_factory):
    """The tiny run's records with their baseline, in a folder of this module's own."""
    root = tmp_path_factory.mktemp("l2")
    results = root / "results"
    tiny_run.copy_to(results / "tiny")
    assert run_main("check", "--suite", tiny_run.suite, "--results", results, "--update-baseline").returncode == 0
    return tiny_run.suite, results, root


def _copy_results(tiny_l2, name):
    import shutil

    _, results, root = tiny_l2
    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(results / "tiny", out)
    return out


@pytest.mark.parametrize("metric", ["robust-l2@0.25", "certified-l2@0.25", "apgd-ce-l2@0.25"])
@pytest.mark.parametrize("machine", ["same", "other"])
def test_check_catches_a_5_point_drop_in_an_l2_or_certified_metric(tiny_l2, metric, machine):
    """kd's `metric` 5 points lower on both seeds: a regression on the same machine (exact) and on another one
    (within the per-example noise model, which the records' masks make tight)."""
    suite, results, _ = tiny_l2
    out = _copy_results(tiny_l2, f"{machine}-{metric}")
    if machine == "other":
        for p, doc in _records(out).items():
            doc["env"]["cpu"] = {**(doc["env"].get("cpu") or {}), "model": "another CPU"}
            p.write_text(json.dumps(doc))
        ok = run_main("check", "--suite", suite, "--results", results, "--out", out)
        assert ok.returncode == 0 and "other machine" in ok.stdout, ok.stdout + ok.stderr
    base = {d["seed"]: d["metrics"][metric] for d in _records(out).values() if d["method"] == "kd"}
    assert base and min(base.values()) >= 0.05, base  # there are 5 points to lose
    _shift(out, "kd", (1, 2), metric, -0.05)
    bad = run_main("check", "--suite", suite, "--results", results, "--out", out)
    assert bad.returncode == 1 and f"kd: {metric}" in bad.stderr, bad.stdout + bad.stderr


def test_check_knows_a_calibration_error_is_better_lower(tiny_l2):
    suite, results, _ = tiny_l2
    out = _copy_results(tiny_l2, "ece")
    _shift(out, "ce", (1,), "ece", -0.01)  # better calibrated: reported, not a regression
    better = run_main("check", "--suite", suite, "--results", results, "--out", out)
    assert better.returncode == 0 and "1 improved" in better.stdout, better.stdout + better.stderr
    _shift(out, "ce", (1,), "ece", +0.03)  # worse: a regression
    worse = run_main("check", "--suite", suite, "--results", results, "--out", out)
    assert worse.returncode == 1 and "ce: ece (seed 1)" in worse.stderr


def test_leaderboard_cards_and_plots_carry_l2_certified_and_calibration(tiny_l2):
    _, results, _ = tiny_l2
    proc = run_main("leaderboard", "--suite", "tiny", "--results", results)
    assert proc.returncode == 0, proc.stderr
    folder = results / "tiny"
    md = (folder / "leaderboard.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| rank"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    for c in ("robust@0.1", "Δ vs ce", "robust-l2@0.25", "Δ l2 vs ce", "certified-l2@0.25", "Δ cert vs ce", "ece",
              "Δ ece vs ce"):
        assert c in cols, (c, cols)
    assert cols.index("robust-l2@0.25") == cols.index("Δ vs ce") + 1 and cols.index("ece") > cols.index("mca")
    kd = next(line for line in md.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")
              if "| kd |" in line)
    assert kd.count("[") >= 4  # a paired interval in every difference column of the kd row
    assert "Holm's correction over the 4 comparison(s)" in md and "lower is better" in md
    assert "ECE" in md or "ece" in md
    card = json.loads(next((folder / "cards").glob("*_kd_*.json")).read_text())
    assert card["threat_models"] == {"Linf": 0.1, "L2": 0.25}
    assert card["l2_worst_case_acc"] == pytest.approx(card["metrics"]["robust-l2@0.25"]["mean"])
    assert {"ece", "nll", "brier", "corruption-ece", "ece/contrast"} <= set(card["calibration"])
    assert {"certified-l2@0", "certified-l2@0.25", "certified-l2/sigma0.25@0.25"} <= set(card["certified"])
    assert card["certify"]["n"] == 64 and "robust-l2@0.25" in card["worst_case"]
    assert "robust-l2@0.25" not in card["per_attack"] and "apgd-ce-l2@0.25" in card["per_attack"]
    assert (folder / "plots" / "accuracy_vs_l2.png").stat().st_size > 1000
    assert (folder / "plots" / "reliability.png").stat().st_size > 1000


def test_l2_attacks_and_at_l2_run_on_a_channels_last_colour_model():
    """kdbench's CPU layout is channels-last; on images of 3 channels the input gradient then comes back in
    channels-last strides, which torchattacks' PGDL2 cannot `.view` (models/input_grad.py gives it a contiguous one)."""
    from kdbench.core.gpu import place
    from kdbench.evaluation.attacks import ATTACKS, build_attack, run_attack
    from kdbench.methods import METHODS, Batch, TrainContext
    from kdbench.models.registry import ModelInput, build_model

    torch.manual_seed(0)
    model = place(build_model("cnn-small", ModelInput((3, 8, 8), 10, (0.5,) * 3, (0.25,) * 3)), torch.device("cpu"),
                  None)
    assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    ev = EvalConfig(pgd_steps=2, apgd_steps=2, square_queries=4)
    for name in (n for n in ATTACKS.names() if ATTACKS.get(n).norm == "l2" and not ATTACKS.get(n).components):
        x_adv = run_attack(build_attack(name, model.eval(), 0.5, ev, 0, 10), x, y, 8, 0)
        assert (x_adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5, name
    d = METHODS.get("at-l2")(model, [], {"eps": 0.5}, TrainContext(10, (3, 8, 8), 1, 0.1, 2, 0.05))
    d.train()
    sum(d.losses(Batch(x, y)).values()).backward()  # a training step of the L2-trained baseline
