"""Distillation losses: each against a value computed independently here (elementary torch ops or numbers
derived by hand), plus registry-driven contract tests that every registered method gets for free."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench.methods import METHODS, Batch, TrainContext
from kdbench.methods.dtkd import dynamic_temperatures
from kdbench.models import ModelInput, build_model

REL = 1e-4  # float32 code vs float64 references
CTX = TrainContext(num_classes=10, input_shape=(1, 8, 8), epochs=10, adv_eps=0.1, adv_steps=3, adv_step_size=0.05)


class LinearNet(nn.Module):
    """logits = W flatten(x) + b with hand-set weights; one stage, the input itself."""

    def __init__(self, weight, bias):
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(bias)

    def forward(self, x):
        return self.fc(x.flatten(1))

    def forward_stages(self, x):
        return self.forward(x), [x]


def kl(p, q_log):
    """KL(p || q) from probabilities p and log-probabilities of q, summed over classes, batch mean (float64)."""
    p, q_log = p.double(), q_log.double()
    return (p * (torch.log(p) - q_log)).sum(1).mean()


def softmax(z):
    """In float64: the references are computed more precisely than the float32 code under test."""
    z = z.double()
    e = torch.exp(z - z.max(1, keepdim=True).values)
    return e / e.sum(1, keepdim=True)


def log_softmax(z):
    return torch.log(softmax(z))


def ce(z, y):
    return -log_softmax(z)[torch.arange(len(y)), y].mean()


def make(name, student, teachers, **params):
    cls = METHODS.get(name)
    return cls(student, teachers, {**cls.defaults, **params}, CTX)


def fixed_pair(n=4, d=6, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 1, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    student = LinearNet(torch.randn(c, d, generator=g), torch.randn(c, generator=g))
    teacher = LinearNet(2 * torch.randn(c, d, generator=g), torch.randn(c, generator=g))
    return x, y, student, teacher


# ---- independent values ------------------------------------------------------------------------------------

def test_kd_hand_computed():
    # two classes, T = 2: t / T = [ln 3, 0] -> softmax = [3/4, 1/4]; s = [0, 0] -> [1/2, 1/2]
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120; kd term = alpha T^2 KL = 0.5 * 4 * 0.1308120 = 0.2616240
    # CE(s, y=0) = ln 2 = 0.6931472; ce term = (1 - alpha) ln 2 = 0.3465736
    class Zero(nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 2) + 0 * x.flatten(1)[:, :1]

    d = make("kd", Zero(), [Zero()], temperature=2.0, alpha=0.5)
    t = torch.tensor([[2 * math.log(3.0), 0.0]])
    out = d.losses(Batch(torch.zeros(1, 1, 1, 1), torch.tensor([0]), [t]))
    assert out["kd"].item() == pytest.approx(0.2616240, rel=REL)
    assert out["ce"].item() == pytest.approx(0.3465736, rel=REL)


def test_ce_baseline():
    x, y, student, _ = fixed_pair()
    out = make("ce", student, []).losses(Batch(x, y))
    assert out["ce"].item() == pytest.approx(ce(student(x), y).item(), rel=REL)


def test_kd_general():
    x, y, student, teacher = fixed_pair()
    s, t = student(x), teacher(x)
    T, a = 3.0, 0.7
    out = make("kd", student, [teacher], temperature=T, alpha=a).losses(Batch(x, y, [t]))
    assert out["kd"].item() == pytest.approx(a * T * T * kl(softmax(t / T), log_softmax(s / T)).item(), rel=REL)
    assert out["ce"].item() == pytest.approx((1 - a) * ce(s, y).item(), rel=REL)


def test_pointwise_hand_computed():
    # s = [1, 2], t = [3, 0]: mean squared difference = (4 + 4) / 2 = 4; alpha = 0.5 -> 2
    # CE(s, y=1) = ln(e + e^2) - 2 = ln(1 + e^-1) = 0.3132617
    class Fixed(nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 2.0]]) + 0 * x.flatten(1)[:, :1]

    out = make("pointwise", Fixed(), [Fixed()], alpha=0.5).losses(
        Batch(torch.zeros(1, 1, 1, 1), torch.tensor([1]), [torch.tensor([[3.0, 0.0]])]))
    assert out["mse"].item() == pytest.approx(2.0, rel=1e-6)
    assert out["ce"].item() == pytest.approx(0.5 * 0.3132617, rel=REL)


class ConvStages(nn.Module):
    """Two stages with hand-set 1x1 convolutions, so stage outputs are known tensors."""

    def __init__(self, channels, scale):
        super().__init__()
        c1, c2 = channels
        self.a = nn.Conv2d(1, c1, 1, bias=False)
        self.b = nn.Conv2d(c1, c2, 1, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(torch.linspace(-1, 1, c1).view(c1, 1, 1, 1) * scale)
            self.b.weight.copy_(torch.linspace(0.5, -0.5, c1 * c2).view(c2, c1, 1, 1))
        self.head = nn.Linear(c2, 3, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.linspace(-1, 1, 3 * c2).view(3, c2))

    def forward_stages(self, x):
        f1 = torch.relu(self.a(x))
        f2 = self.b(f1)
        return self.head(f2.mean((2, 3))), [f1, f2]

    def forward(self, x):
        return self.forward_stages(x)[0]


def _feature_pair():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 4, 4, generator=g)
    y = torch.tensor([0, 2, 1])
    return x, y, ConvStages((2, 3), 1.0), ConvStages((4, 5), 2.0)


def test_hierarchical_fitnets_value():
    x, y, student, teacher = _feature_pair()
    T, a, beta = 4.0, 0.9, 0.5
    d = make("hierarchical", student, [teacher], beta=beta, temperature=T, alpha=a, stages=[0, 1])
    s_logits, (s1, s2) = student.forward_stages(x)
    t_logits, (t1, t2) = teacher.forward_stages(x)
    # regressors are 1x1 convolutions student channels -> teacher channels: apply their weights by hand
    r1 = torch.einsum("oc,nchw->nohw", d.regressors[0].weight[:, :, 0, 0], s1)
    r2 = torch.einsum("oc,nchw->nohw", d.regressors[1].weight[:, :, 0, 0], s2)
    hint = ((r1 - t1) ** 2).mean() + ((r2 - t2) ** 2).mean()
    out = d.losses(Batch(x, y))
    assert out["hint"].item() == pytest.approx(beta * hint.item(), rel=REL)
    want_kd = a * T * T * kl(softmax(t_logits / T), log_softmax(s_logits / T))
    assert out["kd"].item() == pytest.approx(want_kd.item(), rel=REL)
    assert out["ce"].item() == pytest.approx((1 - a) * ce(s_logits, y).item(), rel=REL)
    # the regressors are trainable and receive gradients
    sum(out.values()).backward()
    assert all(r.weight.grad is not None and r.weight.grad.abs().sum() > 0 for r in d.regressors)


def test_attention_transfer_value():
    x, y, student, teacher = _feature_pair()
    beta = 1000.0
    d = make("attention", student, [teacher], beta=beta, alpha=0.0, stages=[0, 1])
    s_logits, s_feats = student.forward_stages(x)
    _, t_feats = teacher.forward_stages(x)

    def at(f):
        a = (f ** 2).mean(1).flatten(1)
        return a / torch.sqrt((a ** 2).sum(1, keepdim=True))

    want = sum(((at(s) - at(t)) ** 2).mean() for s, t in zip(s_feats, t_feats))
    out = d.losses(Batch(x, y))
    assert out["at"].item() == pytest.approx(beta * want.item(), rel=REL)
    assert out["ce"].item() == pytest.approx(ce(s_logits, y).item(), rel=REL)
    assert "kd" not in out


def test_multi_teacher_averages_softened_probabilities():
    x, y, student, t1 = fixed_pair(seed=0)
    _, _, _, t2 = fixed_pair(seed=5)
    T, a = 2.0, 0.8
    d = make("multi-teacher", student, [t1, t2], temperature=T, alpha=a)
    z1, z2, s = t1(x), t2(x), student(x)
    target = (softmax(z1 / T) + softmax(z2 / T)) / 2
    out = d.losses(Batch(x, y, [z1, z2]))
    assert out["kd"].item() == pytest.approx(a * T * T * kl(target, log_softmax(s / T)).item(), rel=REL)
    assert out["ce"].item() == pytest.approx((1 - a) * ce(s, y).item(), rel=REL)
    specs = METHODS.get("multi-teacher").teacher_specs({"members": 3, "archs": []}, "cnn-large", "standard", 2)
    assert [s.seed for s in specs] == [2, 1002, 2002] and {s.arch for s in specs} == {"cnn-large"}
    by_arch = METHODS.get("multi-teacher").teacher_specs({"members": 2, "archs": ["a", "b"]}, "x", "standard", 1)
    assert [(s.arch, s.seed) for s in by_arch] == [("a", 1), ("b", 1)]


def test_noise_kd_uses_the_same_noisy_input_for_both():
    x, y, student, teacher = fixed_pair()
    T, a, sigma = 4.0, 0.9, 0.2
    d = make("noise-kd", student, [teacher], temperature=T, alpha=a, sigma=sigma)
    torch.manual_seed(123)
    noise = torch.randn_like(x)
    xn = (x + sigma * noise).clamp(0, 1)
    s, t = student(xn), teacher(xn)
    torch.manual_seed(123)
    out = d.losses(Batch(x, y, []))
    assert out["kd"].item() == pytest.approx(a * T * T * kl(softmax(t / T), log_softmax(s / T)).item(), rel=REL)
    assert out["ce"].item() == pytest.approx((1 - a) * ce(s, y).item(), rel=REL)


def test_defensive_soft_label_cross_entropy():
    x, y, student, teacher = fixed_pair()
    T = 100.0
    d = make("defensive", student, [teacher], temperature=T)
    s, t = student(x), teacher(x)
    want = -(softmax(t / T) * log_softmax(s / T)).sum(1).mean()
    out = d.losses(Batch(x, y, [t]))
    assert out["soft_ce"].item() == pytest.approx(want.item(), rel=REL)
    (spec,) = METHODS.get("defensive").teacher_specs({"temperature": 50.0}, "cnn-large", "defensive", 3)
    assert spec.kind == "defensive" and dict(spec.params) == {"temperature": 50.0} and spec.seed == 3


def test_ard_loss_on_a_given_adversarial_example(monkeypatch):
    x, y, student, teacher = fixed_pair()
    x_adv = (x + 0.05).clamp(0, 1)
    T, a = 30.0, 0.6
    d = make("ard", student, [teacher], temperature=T, alpha=a)
    monkeypatch.setattr(d, "perturb", lambda xx, target: x_adv)
    t = teacher(x)
    out = d.losses(Batch(x, y, [t]))
    want_kd = a * T * T * kl(softmax(t / T), log_softmax(student(x_adv) / T))
    assert out["kd_adv"].item() == pytest.approx(want_kd.item(), rel=REL)
    assert out["ce"].item() == pytest.approx((1 - a) * ce(student(x), y).item(), rel=REL)


def test_rslad_loss_on_a_given_adversarial_example(monkeypatch):
    x, y, student, teacher = fixed_pair()
    x_adv = (x - 0.05).clamp(0, 1)
    d = make("rslad", student, [teacher])
    monkeypatch.setattr(d, "perturb", lambda xx, target: x_adv)
    t = teacher(x)
    p = softmax(t)
    out = d.losses(Batch(x, y, [t]))
    assert out["kl_adv"].item() == pytest.approx(5 / 6 * kl(p, log_softmax(student(x_adv))).item(), rel=REL)
    assert out["kl_clean"].item() == pytest.approx(1 / 6 * kl(p, log_softmax(student(x))).item(), rel=REL)
    assert set(out) == {"kl_adv", "kl_clean"}  # no hard labels


@pytest.mark.parametrize("name", ["ard", "rslad"])
def test_adversarial_inner_maximisation_is_bounded_and_raises_kl(name):
    torch.manual_seed(0)
    inp = ModelInput((1, 8, 8), 10, (0.3,), (0.37,))
    student, teacher = build_model("cnn-small", inp), build_model("cnn-large", inp)
    d = make(name, student, [teacher])
    d.train()
    x = torch.rand(32, 1, 8, 8)
    p = F.softmax(teacher(x), 1)
    x_adv = d.perturb(x, p)
    assert (x_adv - x).abs().max() <= CTX.adv_eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert student.training  # torchattacks restores the training mode after its eval-mode attack
    with torch.no_grad():
        student.eval()
        k_clean = kl(p, log_softmax(student(x)))
        k_adv = kl(p, log_softmax(student(x_adv)))
    assert k_adv > k_clean


def test_dtkd_value():
    x, y, student, teacher = fixed_pair()
    tau, a, b, w = 4.0, 3.0, 1.0, 0.5
    d = make("dtkd", student, [teacher], tau=tau, alpha=a, beta=b, warmup=0.5)
    s, t = student(x), teacher(x)
    ms, mt = s.max(1, keepdim=True).values, t.max(1, keepdim=True).values
    assert ((ms + mt) > 0).all()  # this fixture is in the regular regime
    ts, tt = 2 * ms / (ms + mt) * tau, 2 * mt / (ms + mt) * tau
    p = softmax(t / tt)
    per_example = (p * (torch.log(p) - log_softmax(s / ts))).sum(1, keepdim=True)
    out = d.losses(Batch(x, y, [t], progress=0.25))  # warm-up factor 0.25 / 0.5 = 0.5
    assert out["dtkd"].item() == pytest.approx(w * a * (per_example * tt * ts).mean().item(), rel=REL)
    want_kd = w * b * tau * tau * kl(softmax(t / tau), log_softmax(s / tau))
    assert out["kd"].item() == pytest.approx(want_kd.item(), rel=REL)
    assert out["ce"].item() == pytest.approx(ce(s, y).item(), rel=REL)
    late = d.losses(Batch(x, y, [t], progress=0.9))  # after the warm-up the factor is 1
    assert late["dtkd"].item() == pytest.approx(2 * out["dtkd"].item(), rel=REL)


def test_dtkd_temperature_guard():
    tau = 4.0
    # max logits summing to ~0 or below would flip the temperatures' sign or divide by ~0
    z_s = torch.tensor([[-3.0, -5.0], [1.0, 0.5], [-1.0, -2.0]])
    z_t = torch.tensor([[3.0, -1.0], [-1.0, -2.0], [0.5, -4.0]])
    t_s, t_t = dynamic_temperatures(z_s, z_t, tau)
    assert torch.all(t_s > 0) and torch.all(t_t > 0)
    # rows 0 (sum 0) and 1 (sum 0) fall back to tau; row 2 has max(z_s) = -1 < 0 with a negative sum
    assert t_s[0].item() == tau and t_t[0].item() == tau
    assert t_s[1].item() == tau and t_t[1].item() == tau
    assert t_s[2].item() == tau and t_t[2].item() == tau
    # a regular row is untouched
    t_s2, t_t2 = dynamic_temperatures(torch.tensor([[2.0, 0.0]]), torch.tensor([[6.0, 1.0]]), tau)
    assert t_s2.item() == pytest.approx(2 * 2 / 8 * tau) and t_t2.item() == pytest.approx(2 * 6 / 8 * tau)
    # the loss stays finite in the degenerate case
    student = LinearNet(torch.zeros(2, 1), torch.tensor([-3.0, -5.0]))
    d = make("dtkd", student, [student])
    out = d.losses(Batch(torch.zeros(1, 1, 1, 1), torch.tensor([0]), [torch.tensor([[3.0, -1.0]])], progress=1.0))
    assert all(torch.isfinite(v) for v in out.values())


# ---- the contract, for every registered method -------------------------------------------------------------

def _real(name, seed=0):
    torch.manual_seed(seed)
    inp = ModelInput((1, 8, 8), 10, (0.3,), (0.37,))
    student = build_model("cnn-small", inp)
    cls = METHODS.get(name)
    specs = cls.teacher_specs(dict(cls.defaults), "cnn-large", cls.teacher_kind, 1)
    teachers = [build_model(s.arch, inp) for s in specs]
    d = cls(student, teachers, dict(cls.defaults), CTX)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    return d, x, y


def _batch(d, x, y, progress=0.5):
    with torch.no_grad():
        logits = [t(x) for t in d.teachers] if d.uses_teacher_logits else []
    return Batch(x, y, logits, progress)


@pytest.mark.parametrize("name", METHODS.names())
def test_contract_finite_loss_gradients_reach_student_not_teacher(name):
    d, x, y = _real(name)
    d.train()
    out = d.losses(_batch(d, x, y))
    assert out and all(v.dim() == 0 for v in out.values())
    loss = sum(out.values())
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in d.student.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    for t in d.teachers:
        assert not t.training
        assert all(not p.requires_grad and p.grad is None for p in t.parameters())
    teacher_params = {id(p) for t in d.teachers for p in t.parameters()}
    assert not teacher_params & {id(p) for p in d.trainable_parameters()}


@pytest.mark.parametrize("name", METHODS.names())
def test_a_few_steps_lower_the_loss(name):
    d, x, y = _real(name)
    batch = _batch(d, x, y, progress=1.0)

    def loss_value():
        torch.manual_seed(7)  # the same noise / random start for the stochastic methods
        d.eval()  # (adversarial methods need autograd for their inner attack: no torch.no_grad here)
        return sum(d.losses(batch).values()).item()

    before = loss_value()
    opt = torch.optim.Adam(d.trainable_parameters(), lr=1e-2)
    for step in range(25):
        d.train()
        torch.manual_seed(step)
        loss = sum(d.losses(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_value()
    assert after < before, (before, after)


@pytest.mark.parametrize("name", METHODS.names())
def test_defaults_are_settable_and_documented(name):
    cls = METHODS.get(name)
    assert "loss" in cls.__doc__ and "=" in cls.__doc__  # the docstring gives the formula
    assert METHODS.get(name).summary
