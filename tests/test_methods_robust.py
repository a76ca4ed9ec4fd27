"""The robust-distillation methods and their teacher-free baselines (at, trades, iad, adaad, mtard), DKD and FitNets
as published: each loss against an independent float64 computation from elementary ops (the helpers of
test_methods.py, never kdbench's own kl_soft / kd_loss / kl_rows), their attacks, schedules and teachers. The
registry-driven contract tests of test_methods.py cover them too (finite loss, gradients to the student only,
teachers frozen and in eval mode)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from test_methods import (CTX, INP, FixedLogits, HandStages, Recorder, approx, ce, fixed_pair,
                          hinton_kd, kl, kl_rows, log_softmax, make, pool_to, softmax)

from kdbench.methods import METHODS, Batch, TrainContext
from kdbench.models.registry import build_model


def x_adv_of(x, seed=3, step=0.05):
    g = torch.Generator().manual_seed(seed)
    return (x + step * torch.sign(torch.randn(x.shape, generator=g))).clamp(0, 1)


# ---- teacher-free baselines: at, trades ------------------------------------------------------------------------

def test_at_is_ce_on_the_students_pgd_example(monkeypatch):
    x, y, student, _ = fixed_pair()
    d = make("at", student, [])
    rec = Recorder(x_adv_of(x))
    monkeypatch.setattr(d, "perturb", rec)
    out = d.losses(Batch(x, y))
    assert set(out) == {"adv_ce"}
    ((x_in, target),) = rec.calls
    assert x_in is x and torch.equal(target, y)  # hard labels: CE inner maximisation
    assert out["adv_ce"].item() == approx(ce(student(rec.x_adv), y))
    cls = METHODS.get("at")
    assert cls.teacher_kind is None and cls.baselines == ("ce",)


@pytest.mark.parametrize("beta", [6.0, 1.0])
def test_trades_loss_on_a_given_adversarial_example(beta):
    x, y, student, _ = fixed_pair()
    d = make("trades", student, [], beta=beta)
    x_adv = x_adv_of(x)
    calls = []
    d.attack = lambda xb: calls.append(xb) or x_adv  # stands in for TPGD
    out = d.losses(Batch(x, y))
    assert set(out) == {"ce", "kl_adv"} and calls[0] is x
    s, s_adv = student(x), student(x_adv)
    assert out["ce"].item() == approx(ce(s, y))
    assert out["kl_adv"].item() == approx(beta * kl(softmax(s), log_softmax(s_adv)))
    # the gradient of the KL term flows through s(x) as well (TRADES's objective, not a fixed target)
    out["kl_adv"].backward()
    g_both = student.fc.weight.grad.clone()
    student.zero_grad()
    (beta * F.kl_div(F.log_softmax(student(x_adv), 1), F.softmax(student(x), 1).detach(), reduction="batchmean")
     ).backward()
    assert not torch.allclose(g_both, student.fc.weight.grad)
    assert METHODS.get("trades").defaults["beta"] == 6.0 and METHODS.get("trades").teacher_kind is None


def test_trades_attack_is_tpgd_bounded_and_raises_self_kl():
    torch.manual_seed(0)
    student = build_model("cnn-small", INP)
    d = make("trades", student, [])
    d.train()
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x_adv = d.attack(x)
    assert (x_adv - x).abs().max().item() <= CTX.adv_eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert student.training  # restored after the attack
    student.eval()
    with torch.no_grad():
        gain = kl_rows(softmax(student(x)), log_softmax(student(x_adv)))
    assert (gain > 1e-6).float().mean() > 0.5  # x + 0.001 N(0, I) alone would leave the KL near 0


def test_trades_teacher_kind_and_its_cache_key():
    from kdbench.suite.configs import TrainConfig
    from kdbench.training.teachers import TEACHER_KINDS, cache_settings

    kind = TEACHER_KINDS.get("trades")
    assert kind.defaults == {"beta": 6.0}
    t = TrainConfig(adv_eps=0.2, adv_steps=4)
    params, train = cache_settings("trades", {}, t)
    assert params == {"beta": 6.0}
    assert train == {"adv_eps": 0.2, "adv_steps": 4, "adv_step_size": 2.5 * 0.2 / 4, "adv_warmup": 0.0}
    assert cache_settings("adversarial", {}, t) == ({}, train)  # the same fields as before they were declared
    assert cache_settings("standard", {}, t) == ({}, {})
    assert cache_settings("defensive", {"temperature": 5.0}, t) == ({"temperature": 5.0}, {})
    assert cache_settings("pretrained", {}, t) == ({}, {})
    # the objective: CE on x plus beta * KL(f(x) || f(x')), with TRADES's attack on the model itself
    x, y, model, _ = fixed_pair()
    objective = kind.objective(model, {"beta": 2.0}, t)
    torch.manual_seed(5)
    out = objective(x, y, 0.5)
    torch.manual_seed(5)
    from kdbench.methods.trades import trades_attack

    x_adv = trades_attack(model, 0.2, t.step_size(), 4)(x)
    assert out["ce"].item() == approx(ce(model(x), y))
    assert out["kl_adv"].item() == approx(2.0 * kl(softmax(model(x)), log_softmax(model(x_adv))))


def test_any_method_picks_the_trades_teacher_and_list_shows_it(capsys):
    from kdbench.__main__ import main
    from kdbench.suite.load import parse_methods

    (run,) = parse_methods({"rslad": {"teacher": "trades"}})
    assert run.teacher_kind == "trades"
    assert main(["list", "teacher-kinds"]) == 0
    assert "trades" in capsys.readouterr().out


# ---- IAD ------------------------------------------------------------------------------------------------------

def iad_reference(s_adv, s, t_clean, t_adv, y, T, alpha, beta, on):
    trust = softmax(t_adv)[torch.arange(len(y)), y] ** beta
    intro = ((1 - trust) * kl_rows(softmax(s), log_softmax(s_adv))).mean() if on else torch.tensor(0.0)
    return {"kd_adv": alpha * hinton_kd(s_adv, t_clean, T), "introspect": alpha * intro, "ce": (1 - alpha) * ce(s, y)}


@pytest.mark.parametrize("T,alpha,beta", [(1.0, 1.0, 0.1), (2.0, 0.7, 0.5)])
def test_iad_loss_before_and_after_the_warm_up(monkeypatch, T, alpha, beta):
    x, y, student, teacher = fixed_pair(n=6)
    d = make("iad", student, [teacher], temperature=T, alpha=alpha, beta=beta, begin=0.4)
    rec = Recorder(x_adv_of(x))
    monkeypatch.setattr(d, "perturb", rec)
    t = teacher(x)
    for progress, on in ((0.1, False), (0.4, True), (0.9, True)):
        out = d.losses(Batch(x, y, [t], progress))
        want = iad_reference(student(rec.x_adv), student(x), t, teacher(rec.x_adv), y, T, alpha, beta, on)
        assert set(out) == {k for k in want if k != "ce" or alpha < 1}
        for k in out:
            # 1 - P^0.1 with P near 1 loses ~1e-5 relative to float32 cancellation: rel 1e-4 for that term
            tol = 1e-4 if k == "introspect" else 1e-5
            assert out[k].item() == pytest.approx(want[k].item(), rel=tol, abs=1e-9), (k, progress)
    assert torch.equal(rec.calls[0][1], y)  # CE inner maximisation, as ARD's reference code
    on = iad_reference(student(rec.x_adv), student(x), t, teacher(rec.x_adv), y, T, alpha, beta, True)
    assert on["introspect"] > 1e-4  # the fixture makes the introspection term visible
    assert METHODS.get("iad").defaults == {"temperature": 1.0, "alpha": 1.0, "beta": 0.1, "begin": 0.3,
                                           "kl_reduction": "batchmean", "attack_mode": "train"}


def iad_ii_reference(s_adv, s, t_rob_adv, t_std_adv, y, T, a1, a2, beta, on):
    """IAD-II.py's loss, term by term: CE on x', the trust-weighted robust teacher's KD and the introspection
    (both times a1 T^2), the standard teacher's KD (a2 T^2); both teachers on x'; w = 1 before `begin`."""
    w = softmax(t_rob_adv)[torch.arange(len(y)), y] ** beta if on else torch.ones(len(y), dtype=torch.float64)
    rob = kl_rows(softmax(t_rob_adv / T), log_softmax(s_adv / T))
    std = kl_rows(softmax(t_std_adv / T), log_softmax(s_adv / T))
    agree = kl_rows(softmax(s), log_softmax(s_adv))
    return {"ce_adv": (1 - a1 - a2) * ce(s_adv, y), "kd_robust": a1 * T * T * (w * rob).mean(),
            "introspect": a1 * T * T * ((1 - w) * agree).mean(), "kd_standard": a2 * T * T * std.mean()}


@pytest.mark.parametrize("T,a1,a2,beta", [(1.0, 0.5, 0.25, 0.1), (3.0, 0.3, 0.6, 0.7)])
def test_iad_ii_loss_before_and_after_begin(monkeypatch, T, a1, a2, beta):
    x, y, student, t_rob = fixed_pair(n=6)
    _, _, _, t_std = fixed_pair(n=6, seed=7)
    d = make("iad-ii", student, [t_rob, t_std], temperature=T, robust_weight=a1, standard_weight=a2, beta=beta,
             begin=0.4)
    rec = Recorder(x_adv_of(x))
    monkeypatch.setattr(d, "perturb", rec)
    for progress, on in ((0.1, False), (0.4, True), (0.9, True)):
        out = d.losses(Batch(x, y, [], progress))  # no cached logits: both teachers are run on x'
        want = iad_ii_reference(student(rec.x_adv), student(x), t_rob(rec.x_adv), t_std(rec.x_adv), y, T, a1, a2,
                                beta, on)
        assert set(out) == set(want)
        for k in out:
            tol = 1e-4 if k == "introspect" else 1e-5  # 1 - P^beta near P = 1: float32 cancellation
            assert out[k].item() == pytest.approx(want[k].item(), rel=tol, abs=1e-9), (k, progress)
        assert rec.progress == progress  # the eps warm-up sees the step's progress
    assert torch.equal(rec.calls[0][1], y)  # CE inner maximisation
    on = iad_ii_reference(student(rec.x_adv), student(x), t_rob(rec.x_adv), t_std(rec.x_adv), y, T, a1, a2, beta,
                          True)
    assert on["introspect"] > 1e-4 and on["kd_robust"] < a1 * T * T * kl_rows(
        softmax(t_rob(rec.x_adv) / T), log_softmax(student(rec.x_adv) / T)).mean()  # the trust weights bite here
    # the introspection's gradient runs through s(x) as well as s(x') (the reference does not detach s(x))
    student.zero_grad()
    d.losses(Batch(x, y, [], 0.9))["introspect"].backward()
    g_both = student.fc.weight.grad.clone()
    student.zero_grad()
    w = F.softmax(t_rob(rec.x_adv), 1).gather(1, y[:, None])[:, 0].pow(beta).detach()
    rows = F.kl_div(F.log_softmax(student(rec.x_adv), 1), F.softmax(student(x), 1).detach(), reduction="none").sum(1)
    (a1 * T * T * ((1 - w) * rows).mean()).backward()
    assert not torch.allclose(g_both, student.fc.weight.grad)


def test_iad_ii_defaults_teachers_and_weights_checked_at_load():
    from kdbench.core.errors import KdbenchError
    from kdbench.suite.load import parse_methods

    cls = METHODS.get("iad-ii")
    assert cls.defaults == {"temperature": 1.0, "robust_weight": 0.5, "standard_weight": 0.25, "beta": 0.1,
                            "begin": 0.2, "kl_reduction": "batchmean", "attack_mode": "train"}
    specs = cls.teacher_specs(dict(cls.defaults), "cnn-large", "adversarial", 3)
    assert [(s.arch, s.kind, s.seed) for s in specs] == [("cnn-large", "adversarial", 3), ("cnn-large", "standard", 3)]
    assert not cls.uses_teacher_logits and cls.baselines == ("ce", "at")
    assert parse_methods({"iad-ii": {"robust_weight": 0.6, "standard_weight": 0.4}})  # CE weight 0: allowed
    with pytest.raises(KdbenchError, match=r"^methods.iad-ii: robust_weight \+ standard_weight = 1.2 exceeds 1"):
        parse_methods({"iad-ii": {"robust_weight": 0.7, "standard_weight": 0.5}})


# ---- AdaAD ----------------------------------------------------------------------------------------------------

def test_adaad_disagreement_logits_are_the_per_example_kl():
    from kdbench.methods.adaad import Disagreement

    x, _, student, teacher = fixed_pair(n=5)
    z = Disagreement(student, teacher)(x)
    want = kl_rows(softmax(teacher(x)), log_softmax(student(x)))
    torch.testing.assert_close(z[:, 0].double(), want, rtol=1e-5, atol=1e-7)
    assert torch.equal(z[:, 1], torch.zeros(5))
    # its input gradient runs through the teacher as well as the student (float64 autograd on copies)
    xg = x.clone().requires_grad_(True)
    Disagreement(student, teacher)(xg)[:, 0].sum().backward()
    s64, t64 = copy.deepcopy(student).double(), copy.deepcopy(teacher).double()
    x64 = x.double().requires_grad_(True)
    p_t = torch.softmax(t64(x64), 1)
    (p_t * (torch.log(p_t) - torch.log_softmax(s64(x64), 1))).sum().backward()
    torch.testing.assert_close(xg.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
    gap = Disagreement(student, teacher.eval())
    assert all(m is not teacher for m in gap.modules())  # the teacher is not a sub-module: train() never reaches it
    gap.train()
    assert student.training and not teacher.training


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_adaad_loss_on_a_given_adversarial_example(monkeypatch, alpha):
    x, y, student, teacher = fixed_pair()
    d = make("adaad", student, [teacher], alpha=alpha)
    x_adv = x_adv_of(x)
    monkeypatch.setattr(d, "perturb", lambda xb, progress=1.0: x_adv)
    t = teacher(x)
    out = d.losses(Batch(x, y, [t]))
    assert out["kl_adv"].item() == approx(alpha * kl(softmax(teacher(x_adv)), log_softmax(student(x_adv))))
    if alpha < 1:
        assert out["kl_clean"].item() == approx((1 - alpha) * kl(softmax(t), log_softmax(student(x))))
    else:
        assert set(out) == {"kl_adv"}


def test_adaad_attack_runs_through_the_teacher_in_eval_mode():
    gains = []
    for seed in range(2):
        torch.manual_seed(seed)
        student, teacher = build_model("cnn-small", INP), build_model("cnn-large", INP)
        d = make("adaad", student, [teacher])
        d.train()
        modes = []
        teacher.register_forward_hook(lambda m, i, o: modes.append(m.training))
        x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(10 + seed))
        x_adv = d.perturb(x)
        assert modes and not any(modes)  # the teacher took part in every step, always in eval mode
        assert student.training and not teacher.training
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
        assert (x_adv - x).abs().max().item() <= CTX.adv_eps + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
        student.eval()
        with torch.no_grad():
            k_adv = kl_rows(softmax(teacher(x_adv)), log_softmax(student(x_adv)))
            k_clean = kl_rows(softmax(teacher(x)), log_softmax(student(x)))
        gains.append((k_adv - k_clean).mean().item())
        assert (k_adv > k_clean).float().mean() > 0.5
    assert all(g > 0 for g in gains)


def test_adaad_attack_uses_the_teacher_at_x_adv_not_a_fixed_target():
    # with the teacher's output depending on x, the disagreement it maximises differs from KL(t(x) || s(x'))
    torch.manual_seed(0)
    student, teacher = build_model("cnn-small", INP), build_model("cnn-large", INP)
    d = make("adaad", student, [teacher])
    d.train()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(1)
    x_adv = d.perturb(x)
    ard = make("rslad", student, [teacher])  # PGD on KL(t(x) || s(x')) with the same start
    torch.manual_seed(1)
    with torch.no_grad():
        p_fixed = F.softmax(teacher(x), 1)
    x_fixed = ard.perturb(x, p_fixed)
    assert (x_adv - x_fixed).abs().max() > 1e-3


# ---- MTARD ----------------------------------------------------------------------------------------------------

def test_mtard_teachers_and_adaptive_weights(monkeypatch):
    cls = METHODS.get("mtard")
    specs = cls.teacher_specs(dict(cls.defaults), "cnn-large", "trades", 2)
    assert [(s.arch, s.kind, s.seed) for s in specs] == [("cnn-large", "trades", 2), ("cnn-large", "standard", 2)]
    assert cls.teacher_specs(dict(cls.defaults), "cnn-large", None, 2) == []
    assert cls.baselines == ("ce", "at")

    x, y, student, t_rob = fixed_pair(n=5, seed=0)
    _, _, _, t_nat = fixed_pair(n=5, seed=7)
    eta, bert = 0.3, 2.0  # large enough to see the weights move
    d = make("mtard", student, [t_rob, t_nat], eta=eta, bert=bert)
    w_nat, start = 0.5, None
    g = torch.Generator().manual_seed(9)
    for step in range(3):
        x_adv = x_adv_of(x, seed=step)
        rec = Recorder(x_adv)
        monkeypatch.setattr(d, "perturb", rec)
        out = d.losses(Batch(x, y, [t_rob(x), t_nat(x)]))
        assert torch.equal(rec.calls[0][1], y)  # CE inner maximisation
        l_adv = kl(softmax(t_rob(x_adv)), log_softmax(student(x_adv)))
        l_nat = kl(softmax(t_nat(x)), log_softmax(student(x)))
        start = start or (l_adv.item(), l_nat.item())
        r_adv, r_nat = (l_adv.item() / start[0]) ** bert, (l_nat.item() / start[1]) ** bert
        w_nat = w_nat - eta * (w_nat - r_nat / (r_adv + r_nat))
        assert out["kl_adv"].item() == approx((1 - w_nat) * l_adv)
        assert out["kl_nat"].item() == approx(w_nat * l_nat)
        assert d.weights[1] == pytest.approx(w_nat, rel=1e-6)
        with torch.no_grad():  # move the student so the relative losses change between steps
            student.fc.weight.add_(0.3 * torch.randn(student.fc.weight.shape, generator=g))
    assert abs(w_nat - 0.5) > 1e-3  # the weights did adapt on this fixture


# ---- DKD ------------------------------------------------------------------------------------------------------

def dkd_reference(s, t, y, T):
    """(TCKD, NCKD) from probabilities: b = [p_y, 1 - p_y]; p^ renormalised over the classes other than y."""
    ps, pt = softmax(s / T), softmax(t / T)
    rows = torch.arange(len(y))
    bs = torch.stack([ps[rows, y], 1 - ps[rows, y]], 1)
    bt = torch.stack([pt[rows, y], 1 - pt[rows, y]], 1)
    tckd = kl(bt, torch.log(bs))
    keep = torch.ones_like(ps, dtype=torch.bool)
    keep[rows, y] = False
    hs, ht = ps[keep].view(len(y), -1), pt[keep].view(len(y), -1)
    hs, ht = hs / hs.sum(1, keepdim=True), ht / ht.sum(1, keepdim=True)
    return T * T * tckd, T * T * kl(ht, torch.log(hs)), pt[rows, y]


@pytest.mark.parametrize("T,a,b", [(4.0, 1.0, 8.0), (1.0, 2.0, 0.5)])
def test_dkd_terms_and_warm_up(T, a, b):
    x, y, student, teacher = fixed_pair(n=6, c=5)
    s, t = student(x), teacher(x)
    d = make("dkd", student, [teacher], temperature=T, alpha=a, beta=b, warmup=0.5, ce_weight=0.7)
    tckd, nckd, _ = dkd_reference(s, t, y, T)
    for progress, w in ((0.25, 0.5), (0.8, 1.0)):
        out = d.losses(Batch(x, y, [t], progress))
        assert out["ce"].item() == approx(0.7 * ce(s, y))
        assert out["tckd"].item() == approx(w * a * tckd)
        assert out["nckd"].item() == approx(w * b * nckd)


def test_dkd_decomposes_vanilla_kd():
    # KD = TCKD + (1 - p_t,y) NCKD per example (Zhao et al. 2022, Eq. 3); on one example the batch means agree
    for seed in range(3):
        x, y, student, teacher = fixed_pair(n=1, c=5, seed=seed)
        s, t = student(x), teacher(x)
        tckd, nckd, pty = dkd_reference(s, t, y, 3.0)
        assert (tckd + (1 - pty[0]) * nckd).item() == pytest.approx(hinton_kd(s, t, 3.0).item(), rel=1e-9)
        out = make("dkd", student, [teacher], temperature=3.0, alpha=1.0, beta=1.0).losses(Batch(x, y, [t], 1.0))
        assert (out["tckd"] + (1 - pty[0].item()) * out["nckd"]).item() == approx(hinton_kd(s, t, 3.0))


def test_dkd_stays_finite_for_a_confident_teacher():
    z_t = torch.tensor([[60.0, 0.0, -5.0], [0.0, 80.0, 1.0]])  # p_t,y = 1 in float32
    z_s = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    student = FixedLogits(z_s)
    out = make("dkd", student, [], temperature=1.0).losses(Batch(torch.zeros(2, 1, 1, 1), torch.tensor([0, 1]),
                                                                 [z_t], 1.0))
    assert all(torch.isfinite(v) for v in out.values())
    sum(out.values()).backward()
    assert torch.isfinite(student.logits.grad).all()


# ---- FitNets --------------------------------------------------------------------------------------------------

def fitnets_pair():
    """Student: 3 stages (4x4, 4x4, 2x2); teacher: 5 stages (4x4, 4x4, 2x2, 2x2, 2x2). Guided layer = the student's
    stage 1 (4x4, 3 channels), hint layer = the teacher's stage 2 (2x2, 5 channels): a 3x3 valid regressor."""
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 2, 1])
    student = HandStages((2, 3, 4), (False, False, True), 1.0)
    teacher = HandStages((3, 4, 5, 5, 4), (False, False, True, False, False), 2.0)
    return x, y, student, teacher


CTX4 = TrainContext(num_classes=3, input_shape=(1, 4, 4), epochs=10, adv_eps=0.1, adv_steps=3, adv_step_size=0.05)


def make4(student, teacher, **params):
    cls = METHODS.get("fitnets")
    return cls(student, [teacher], {**cls.defaults, **params}, CTX4)


def test_fitnets_hint_stage_value_and_regressor():
    x, y, student, teacher = fitnets_pair()
    d = make4(student, teacher, hint_stage=0.3)
    assert (d.guided, d.hint) == (1, 2)
    assert tuple(d.regressor.weight.shape) == (5, 3, 3, 3) and d.regressor.padding == (0, 0)
    _, t_feats = teacher.forward_stages(x)
    assert not d.relu and (t_feats[2] < 0).any()  # the teacher's hint is not a ReLU output here
    w = torch.linspace(-0.5, 0.6, d.regressor.weight.numel()).view(d.regressor.weight.shape)
    bias = torch.linspace(0.2, -0.1, 5)
    with torch.no_grad():
        d.regressor.weight.copy_(w)
        d.regressor.bias.copy_(bias)
    v = student.forward_stages(x)[1][1].detach().double()
    u = t_feats[2].detach().double()
    r = torch.stack([torch.stack([torch.einsum("ocij,ncij->no", w.double(), v[:, :, a:a + 3, b:b + 3])
                                  for b in range(2)], -1) for a in range(2)], -2) + bias.double()[None, :, None, None]
    want = 0.5 * ((r - u) ** 2).sum((1, 2, 3)).mean()
    out = d.losses(Batch(x, y, [teacher(x)], progress=0.1))
    assert set(out) == {"hint", "kd", "ce"} and out["kd"].item() == 0 and out["ce"].item() == 0
    assert out["hint"].item() == approx(want)
    sum(out.values()).backward()
    # stage 1 trains the student up to the guided layer (and the regressor) only
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.convs[:2].parameters())
    assert all(p.grad is None for p in list(student.convs[2].parameters()) + list(student.head.parameters()))
    assert d.regressor.weight.grad.abs().sum() > 0


def test_fitnets_kd_stage_with_decaying_lambda():
    x, y, student, teacher = fitnets_pair()
    T, h = 3.0, 0.2
    d = make4(student, teacher, hint_stage=h, temperature=T, lambda_start=4.0, lambda_end=1.0)
    s, t = student(x), teacher(x)
    for progress in (0.2, 0.6, 1.0):
        lam = 4.0 - 3.0 * (progress - h) / (1 - h)
        out = d.losses(Batch(x, y, [t], progress))
        assert out["hint"].item() == 0
        assert out["ce"].item() == approx(ce(s, y))
        soft_ce = -(softmax(t / T) * log_softmax(s / T)).sum(1).mean()  # cross-entropy, no T^2 factor
        assert out["kd"].item() == approx(lam * soft_ce)


def test_fitnets_regressor_relu_and_smaller_student_map():
    # cnn-small -> cnn-large on 8x8: both middles are 4x4 ReLU outputs -> a 1x1 valid conv, with ReLU
    torch.manual_seed(0)
    d = make("fitnets", build_model("cnn-small", INP), [build_model("cnn-large", INP)])
    assert d.relu and d.regressor.kernel_size == (1, 1) and d.regressor.out_channels == 32
    # a student map smaller than the teacher's: the hint is pooled to the student's size, 1x1 regressor
    student = HandStages((2, 3, 4), (True, False, False), 1.0)  # middle 2x2
    teacher = HandStages((3, 4, 5), (False, False, False), 2.0)  # middle 4x4
    x, y = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1])
    d = make4(student, teacher)
    assert d.regressor.kernel_size == (1, 1)
    with torch.no_grad():
        d.regressor.weight.fill_(0.1)
        d.regressor.bias.zero_()
    v = student.forward_stages(x)[1][1].detach().double()
    u = pool_to(teacher.forward_stages(x)[1][1].detach().double(), (2, 2))
    r = 0.1 * v.sum(1, keepdim=True).expand(-1, 4, -1, -1)
    out = d.losses(Batch(x, y, [teacher(x)], 0.0))
    assert out["hint"].item() == approx(0.5 * ((r - u) ** 2).sum((1, 2, 3)).mean())


def test_fitnets_rejects_a_hint_stage_outside_0_1_when_the_suite_is_read():
    from kdbench.core.errors import KdbenchError
    from kdbench.suite.load import parse_methods

    assert parse_methods({"fitnets": {"hint_stage": 0.0}})[0].params[0] == ("hint_stage", 0.0)
    for bad in (1.0, -0.1):
        with pytest.raises(KdbenchError, match=r"methods.fitnets.hint_stage .* outside its range \[0, 1\)"):
            parse_methods({"fitnets": {"hint_stage": bad}})


# ---- leaderboard baselines ------------------------------------------------------------------------------------

def test_leaderboard_baselines():
    for name in METHODS.names():
        cls = METHODS.get(name)
        adversarial_distillation = name in ("iad", "iad-ii", "adaad", "mtard", "ard", "ard-kl", "rslad")
        want = ("ce", "at") if adversarial_distillation else ("ce",)
        assert cls.baselines == want, name


def test_contract_on_the_real_training_context_of_the_new_methods():
    # every new method trains a few steps on digits-shaped data without touching its teachers
    ctx = TrainContext(10, (1, 8, 8), 2, 0.1, 2, 0.05)
    for name in ("at", "trades", "iad", "iad-ii", "adaad", "mtard", "dkd", "fitnets"):
        torch.manual_seed(0)
        cls = METHODS.get(name)
        teachers = [build_model(s.arch, INP) for s in cls.teacher_specs(dict(cls.defaults), "cnn-large",
                                                                         cls.teacher_kind, 1)]
        before = [p.clone() for t in teachers for p in t.parameters()]
        d = cls(build_model("cnn-small", INP), teachers, dict(cls.defaults), ctx)
        d.train()
        x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
        for progress in (0.0, 0.5, 0.99):
            with torch.no_grad():
                logits = [t(x) for t in teachers] if cls.uses_teacher_logits else []
            loss = sum(d.losses(Batch(x, y, logits, progress)).values())
            assert math.isfinite(loss.item()), (name, progress)
            loss.backward()
            assert all(not t.training for t in teachers)
        assert all(torch.equal(a, b) for a, b in zip(before, (p for t in teachers for p in t.parameters())))
