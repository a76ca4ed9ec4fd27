"""The eps warm-up of adversarial training (`train.adv_warmup`): the eps and step size the inner attack uses at each
training step, for every method that attacks its student and for the adversarially trained teacher kinds; its
place in job ids and teacher cache keys; and the collapse it prevents (adversarial training on digits at eps 0.3
ends at a constant prediction without it)."""

import dataclasses
import math

import pytest
import torch
import torchattacks
from test_methods import CTX, INP, fixed_pair
from test_reference_settings import REFERENCE

from kdbench.core.errors import KdbenchError
from kdbench.core.identity import digest
from kdbench.execution.job import train_student
from kdbench.execution.workspace import Workspace, torch_threads
from kdbench.methods import METHODS, Batch
from kdbench.methods.inner_attack import warmup_factor
from kdbench.models.registry import build_model
from kdbench.suite.configs import TrainConfig, parse_train
from kdbench.suite.load import parse_suite
from kdbench.training.loop import predict_logits
from kdbench.training.teachers import TEACHER_KINDS


@pytest.fixture
def attack_calls(monkeypatch):
    """(attack class, eps, step size, the input, the adversarial example) of every torchattacks attack run."""
    calls = []
    original = torchattacks.attack.Attack.__call__

    def recording(self, inputs, labels=None, *args, **kwargs):
        out = original(self, inputs, labels, *args, **kwargs)
        calls.append((type(self).__name__, self.eps, self.alpha, inputs.detach().clone(), out.detach().clone()))
        return out

    monkeypatch.setattr(torchattacks.attack.Attack, "__call__", recording)
    return calls


def test_warmup_factor_ramps_linearly_then_holds():
    assert [warmup_factor(p, 0.4) for p in (0.0, 0.1, 0.2, 0.4, 0.7, 1.0)] == pytest.approx([0, 0.25, 0.5, 1, 1, 1])
    assert warmup_factor(0.0, 0.0) == 1.0 and warmup_factor(0.3, 1.0) == pytest.approx(0.3)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_every_method_attacks_at_the_warmed_up_eps(attack_calls, name):
    torch.manual_seed(0)
    cls = METHODS.get(name)
    teachers = [build_model(s.arch, INP) for s in cls.teacher_specs(dict(cls.defaults), "cnn-large",
                                                                     cls.teacher_kind, 1)]
    ctx = dataclasses.replace(CTX, adv_warmup=0.4)
    d = cls(build_model("cnn-small", INP), teachers, dict(cls.defaults), ctx)
    d.train()
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    for progress, f in ((0.0, 0.0), (0.1, 0.25), (0.3, 0.75), (0.4, 1.0), (0.9, 1.0)):
        with torch.no_grad():
            logits = [t(x) for t in teachers] if cls.uses_teacher_logits else []
        d.losses(Batch(x, y, logits, progress))
        _, eps, alpha, x_in, x_adv = attack_calls[-1]
        assert eps == pytest.approx(f * CTX.adv_eps) and alpha == pytest.approx(f * CTX.adv_step_size), progress
        assert (x_adv - x_in).abs().max().item() <= f * CTX.adv_eps + 1e-6
        if f == 0:
            assert torch.equal(x_adv, x_in)  # the first step trains on the clean input
    assert len(attack_calls) == 5  # one inner attack per step


def test_no_warmup_attacks_at_adv_eps_from_the_first_step(attack_calls):
    x, y, student, teacher = fixed_pair()
    d = METHODS.get("at")(student, [], dict(METHODS.get("at").defaults), CTX)  # adv_warmup 0 (the default)
    d.losses(Batch(x, y, [], 0.0))
    assert attack_calls[-1][1] == CTX.adv_eps and attack_calls[-1][2] == CTX.adv_step_size


@pytest.mark.parametrize("kind", ["adversarial", "trades"])
def test_adversarially_trained_teacher_kinds_warm_up_too(attack_calls, kind):
    torch.manual_seed(0)
    model = build_model("cnn-small", INP).train()
    cfg = TrainConfig(adv_eps=0.2, adv_steps=2, adv_warmup=0.5)
    objective = TEACHER_KINDS.get(kind).objective(model, TEACHER_KINDS.get(kind).defaults, cfg)
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    for progress, f in ((0.0, 0.0), (0.25, 0.5), (0.6, 1.0)):
        objective(x, y, progress)
        assert attack_calls[-1][1] == pytest.approx(f * 0.2) and attack_calls[-1][2] == pytest.approx(f * 0.25)


SUITE = {
    "name": "warmup", "dataset": "digits", "seeds": [1], "headline_eps": 0.1,
    "pairs": [{"teacher": "cnn-large", "student": "cnn-small"}],
    "train": {"epochs": 2, "teacher_epochs": 1, "batch_size": 128, "lr": 0.004, "adv_eps": 0.2, "adv_steps": 1,
              "adv_warmup": 0.5},
    "methods": {"at": {}},
    "eval": {"attacks": ["fgsm"], "eps": [0.1]},
}


def at_job(**train):
    doc = {**SUITE, "train": {**SUITE["train"], **train}}
    (job,) = [j for j in parse_suite(doc).jobs() if j.method == "at"]
    return job


def test_the_trainer_attacks_each_step_at_its_eps(attack_calls, tmp_path):
    job = at_job()
    ws = Workspace(torch.device("cpu"), tmp_path)
    data = ws.get_data(job.data)
    with torch_threads(1):
        train_student(job, data, [], ws)
    steps = math.ceil(len(data.x_train) / 128)
    total = job.train.epochs * steps
    assert len(attack_calls) == total
    for k, (_, eps, alpha, x_in, x_adv) in enumerate(attack_calls):  # step k is taken at progress k / total
        f = min(k / total / 0.5, 1.0)
        assert eps == pytest.approx(0.2 * f) and alpha == pytest.approx(job.train.step_size() * f), k
        assert (x_adv - x_in).abs().max().item() <= 0.2 * f + 1e-6
    assert attack_calls[-1][1] == 0.2 and attack_calls[total // 4][1] == pytest.approx(0.1)


def test_adv_warmup_is_in_the_job_id_and_off_keeps_the_ids_of_before():
    off, on = at_job(adv_warmup=0.0), at_job(adv_warmup=0.3)
    assert off.job_id != on.job_id
    config = off.config()
    assert config["train"]["adv_warmup"] == 0.0
    del config["train"]["adv_warmup"]  # a config written before the setting existed
    assert digest(config) == off.job_id
    from kdbench.methods import TeacherSpec
    from kdbench.training.teacher_cache import teacher_config
    from kdbench.training.teachers import teacher_key

    spec = TeacherSpec("cnn-large", "adversarial", 1)
    key_off, key_on = (teacher_key(teacher_config(spec, j, 1)) for j in (off, on))
    assert key_off != key_on  # an adversarial teacher trained with the warm-up is another teacher
    cfg = teacher_config(spec, off, 1)
    del cfg["train"]["adv_warmup"]
    assert teacher_key(cfg) == key_off  # ... and without it, the same as before


def test_a_methods_own_warmup_warms_up_its_students_only():
    doc = {**SUITE, "train": {**SUITE["train"], "adv_warmup": 0.0},
           "methods": {"ard": {"train": {"adv_warmup": 0.25}}, "rslad": {}}}
    jobs = {j.method: j for j in parse_suite(doc).jobs() if not j.is_teacher}
    assert jobs["ard"].train.adv_warmup == 0.25 and jobs["ard"].teacher_training().adv_warmup == 0.0
    assert jobs["rslad"].train.adv_warmup == 0.0  # the other methods keep the suite's
    with pytest.raises(KdbenchError, match=r"^methods.ard.train.adv_warmup = 2.0 is outside \[0, 1\]"):
        parse_suite({**doc, "methods": {"ard": {"train": {"adv_warmup": 2.0}}}})


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_adv_warmup_outside_0_1_is_one_line_at_load(bad):
    with pytest.raises(KdbenchError, match=r"^train.adv_warmup = .* is outside \[0, 1\]"):
        parse_train({"adv_warmup": bad})


def test_the_warmup_prevents_the_collapse_of_adversarial_training(tmp_path):
    """PGD-AT of the digits student at eps 0.3 (8 epochs, Adam 0.004, PGD-5) collapses to a constant prediction:
    clean accuracy at chance, its adversarial cross-entropy stuck at ln 10. With the eps ramped over the first
    half of training it learns the task (clean 0.91 on seed 1; 0.79-0.94 on seeds 1-3 with warm-ups of 1/4 and
    1/2, docs/suites.md)."""
    ws = Workspace(torch.device("cpu"), tmp_path)
    out = {}
    for warmup in (0.0, 0.5):
        job = at_job(epochs=8, adv_eps=0.3, adv_steps=5, adv_warmup=warmup)
        data = ws.get_data(job.data)
        with torch_threads(1):  # as a job runs (cpus_per_job = 1): about 2 s of CPU per student
            model, history = train_student(job, data, [], ws)
        clean = (predict_logits(model, data.x_test).argmax(1) == data.y_test).float().mean().item()
        out[warmup] = clean, [h["adv_ce"] for h in history]
    (clean_off, loss_off), (clean_on, loss_on) = out[0.0], out[0.5]
    # collapsed, the premise of the test: chance accuracy, the adversarial CE never below ln 10 by much and ending on it
    assert clean_off < 0.2 and min(loss_off) > math.log(10) - 0.1 and abs(loss_off[-1] - math.log(10)) < 0.02, out
    assert clean_on > 0.6 and min(loss_on) < math.log(10) - 0.2, out  # learnt while the eps was small, and kept
