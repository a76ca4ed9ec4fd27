"""Each adversarial method as its authors' reference code runs it: the KL reduction and the student's mode during
the inner attack, pinned against the table below (the reference file and line named beside each entry); and the
CIFAR-10 suite file's settings against benchmarks/robustness-cifar10.reference.json, whose `reference_settings`
say what each reference code does and whose `deviations` list every difference the suite file makes."""

import json
import math

import pytest
import torch
from test_methods import CTX, INP, Recorder, fixed_pair, make

from kdbench.methods import METHODS, Batch
from kdbench.methods.base import KL_REDUCTIONS
from kdbench.methods.inner_attack import ATTACK_MODES
from kdbench.models.registry import build_model
from kdbench.suite.load import load_suite

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent

# method: (the reference code's KL reduction, None without a KL term; the student's mode during the reference's
# inner attack; where the reference code says so, file:line at the commit fetched from its repository)
REFERENCE = {
    "at": (None, "train",
           "MadryLab/cifar10_challenge@f15682d train.py:41 Model(mode='train') is the model pgd_attack.py:53 "
           "differentiates; model.py:110 batch_norm(is_training=(self.mode == 'train')), updates_collections=None"),
    "trades": ("batchmean", "eval",
               "yaodongyu/TRADES@6e8e11b trades.py:28 model.eval() before the attack; trades.py:27 "
               "KLDivLoss(size_average=False) and trades.py:81 (1.0 / batch_size) *"),
    "ard": ("mean", "train",
            "goldblum/AdversariallyRobustDistillation@779ade3 main.py:118 net.train(), main.py:124 attacks in it; "
            "main.py:113 nn.KLDivLoss() (mean over batch x classes)"),
    "rslad": ("mean", "eval",
              "zibojia/RSLAD@c40e04f rslad_loss.py:37 model.eval() before the attack; resnet18_rslad_cifar10.py:61-62 "
              "torch.mean of the element-wise KL"),
    "iad": ("batchmean", "train",
            "ZFancy/IAD@a8091a8 IAD-I.py:159 net.train(), IAD-I.py:166 attacks in it; IAD-I.py:152 "
            "KLDivLoss(reduce=False), IAD-I.py:179 (1/len(outputs)) * sum of .sum(dim=1)"),
    "iad-ii": ("batchmean", "train",
               "ZFancy/IAD@a8091a8 IAD-II.py:172 net.train(), IAD-II.py:178 attacks in it; IAD-II.py:167 "
               "KLDivLoss(reduce=False), IAD-II.py:190 (1/len(outputs)) * sum of .sum(dim=1)"),
    "adaad": ("mean", "eval",
              "boyellow/AdaAD@9e5c6e5 AT_helper.py:14,20-21 BN_eval=True: model.eval() before the attack; main.py:342 "
              "nn.KLDivLoss() for CIFAR10 (main.py:348 sums over classes / batch for CIFAR100)"),
    "mtard": ("mean", "eval",
              "zhaoshiji123/MTARD@6480a1b mtard/mtard_loss.py:38 model.eval() before the attack; "
              "mtard/mtard_resnet18_cifar10.py:79-80 torch.mean of the element-wise KL"),
    # not a published method: ARD's outer loss with RSLAD's inner attack, so RSLAD's mode (rslad_loss.py:37)
    "ard-kl": ("mean", "eval", "kdbench variant; zibojia/RSLAD@c40e04f rslad_loss.py:37 for the attack"),
}


def attack_of(d):
    """A function running the method's inner attack on (x, y) as its training step does."""
    if d.name == "trades":
        return lambda x, y: d.attack(x)
    if d.name == "adaad":
        return lambda x, y: d.perturb(x)
    return lambda x, y: d.perturb(x, y)


def test_the_table_covers_every_method_that_attacks_in_training():
    attacking = {n for n in METHODS.names() if "attack_mode" in METHODS.get(n).defaults}
    assert attacking == set(REFERENCE)
    for name in METHODS.names():  # a method with a KL term to the teacher or itself accepts the reference's scale
        if REFERENCE.get(name, (None,))[0] is not None:
            cls = METHODS.get(name)
            assert cls.defaults["kl_reduction"] == "batchmean", name  # kdbench's default: the KL's definition
            assert tuple(cls.choices["kl_reduction"]) == KL_REDUCTIONS, name


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_attack_mode_is_the_references_by_default(name):
    cls = METHODS.get(name)
    assert cls.defaults["attack_mode"] == REFERENCE[name][1], REFERENCE[name][2]
    assert tuple(cls.choices["attack_mode"]) == ATTACK_MODES


@pytest.mark.parametrize("mode", ATTACK_MODES)
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_the_attack_sees_the_student_in_its_mode_and_moves_running_statistics_only_in_train_mode(name, mode):
    torch.manual_seed(0)
    cls = METHODS.get(name)
    student = build_model("cnn-small", INP)
    specs = cls.teacher_specs(dict(cls.defaults), "cnn-large", cls.teacher_kind, 1)
    teachers = [build_model(s.arch, INP) for s in specs]
    d = make(name, student, teachers, attack_mode=mode)
    d.train()
    bn = [m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bn] + [m.num_batches_tracked.clone() for m in bn]
    seen = []
    handle = student.register_forward_pre_hook(lambda m, inp: seen.append(m.training))
    try:
        x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        attack_of(d)(x, torch.arange(8) % 10)
    finally:
        handle.remove()
    assert seen and set(seen) == {mode == "train"}
    after = [m.running_mean for m in bn] + [m.num_batches_tracked for m in bn]
    moved = [not torch.equal(a, b) for a, b in zip(before, after)]
    assert all(moved) if mode == "train" else not any(moved)  # train: every pass of the attack updates them
    if mode == "train":  # one update per forward pass of the attack, as in the reference codes
        assert all(m.num_batches_tracked.item() == len(seen) for m in bn)
    assert student.training and all(not t.training for t in teachers)  # modes restored; teachers never trained


def _losses(name, reduction, monkeypatch):
    x, y, student, teacher = fixed_pair(n=5)  # C = 3 classes
    _, _, _, second = fixed_pair(n=5, seed=7)
    cls = METHODS.get(name)
    teachers = [teacher, second][:len(cls.teacher_specs(dict(cls.defaults), "any", cls.teacher_kind, 1))]
    d = make(name, student, teachers, kl_reduction=reduction)
    x_adv = (x - 0.02).clamp(0, 1)
    if name == "trades":
        d.attack = lambda xb: x_adv
    elif name == "adaad":
        monkeypatch.setattr(d, "perturb", lambda xb, progress=1.0: x_adv)
    else:
        monkeypatch.setattr(d, "perturb", Recorder(x_adv))
    logits = [t(x) for t in teachers] if cls.uses_teacher_logits else []
    return d.losses(Batch(x, y, logits, 0.95))  # past every method's warm-up (IAD's introspection is on)


@pytest.mark.parametrize("name", sorted(n for n, ref in REFERENCE.items() if ref[0] is not None))
def test_kl_reduction_mean_is_the_reference_codes_scale(monkeypatch, name):
    """"mean" averages the KL over batch x classes (nn.KLDivLoss()): 1/C of "batchmean" in every KL term;
    the other terms (cross-entropy) keep their scale."""
    mean, batchmean = _losses(name, "mean", monkeypatch), _losses(name, "batchmean", monkeypatch)
    assert set(mean) == set(batchmean)
    kl_terms = {k for k in mean if not k.startswith("ce")}
    assert kl_terms
    for k in mean:
        scale = 1 / 3 if k in kl_terms else 1.0
        assert mean[k].item() == pytest.approx(batchmean[k].item() * scale, rel=1e-5, abs=1e-12), k


# ---- the CIFAR-10 suite file against the reference settings and the deviations it lists -------------------------

REF = json.loads((ROOT / "benchmarks" / "robustness-cifar10.reference.json").read_text())


def suite_setting(job, key: str):
    """A job's value of a `reference_settings` key: teachers, params.<name>, train.<field>."""
    if key == "teachers":
        return [f"{s.arch} {s.kind}" for s in job.teacher_specs()]
    where, name = key.split(".", 1)
    if where == "params":
        return dict(job.params)[name]
    assert where == "train", key
    return job.train.step_size() if name == "adv_step_size" else getattr(job.train, name)


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return not isinstance(a, (list, str)) and math.isclose(a, b, rel_tol=1e-12)
    return a == b


def test_the_cifar10_suite_reproduces_each_reference_setting_or_lists_the_deviation():
    suite = load_suite("robustness-cifar10")
    settings, deviations = REF["reference_settings"], REF["deviations"]
    methods = {m.name for m in suite.methods}
    assert set(settings["methods"]) | set(settings["not_pinned"]) == methods
    assert not set(settings["methods"]) & set(settings["not_pinned"])
    listed = {(dv["method"], dv["setting"]): dv for dv in deviations}
    assert len(listed) == len(deviations)  # one entry per setting
    for dv in deviations:
        assert dv["source"] and len(dv["why"]) > 10, dv
        ref_value = settings["methods"][dv["method"]]["settings"][dv["setting"]]  # a deviation from a known setting
        assert same(dv["reference"], ref_value), dv
        assert not same(dv["suite"], dv["reference"]), dv  # a real difference, never a stale entry
    students = [j for j in suite.jobs() if not j.is_teacher]
    for name, ref in settings["methods"].items():
        assert ref["code"], name
        jobs = [j for j in students if j.method == name]
        assert len(jobs) == len(suite.pairs) * len(suite.seeds), name
        for key, value in ref["settings"].items():
            want = listed[(name, key)]["suite"] if (name, key) in listed else value
            for job in jobs:
                assert same(suite_setting(job, key), want), (name, key, suite_setting(job, key), want)


def test_every_teacher_substitution_is_written_down():
    """A suite job whose teachers are not its reference's has a `teachers` deviation with its source (the
    substitutions: ARD's and RSLAD's TRADES teacher, IAD's ResNet-18, AdaAD's RobustBench WRN-34-20, MTARD's clean
    ResNet-56), and the suite file names the source of each."""
    teachers = {dv["method"]: dv for dv in REF["deviations"] if dv["setting"] == "teachers"}
    assert set(teachers) == {"ard", "rslad", "iad", "iad-ii", "adaad", "mtard"}
    text = (ROOT / "benchmarks" / "robustness-cifar10.toml").read_text()
    for needle in ("MTARD issue #5", "Chen2021LTD_WRN34_20", "PGD-AT ResNet-18", "model_cifar_wrn.pt"):
        assert needle in text, needle
    assert "resnet56 standard" in teachers["mtard"]["reference"] and "#5" in teachers["mtard"]["source"]
    assert teachers["iad"]["reference"] == ["resnet18 adversarial"]
    assert teachers["adaad"]["reference"] == ["wrn-34-20 robustbench:Chen2021LTD_WRN34_20"]


def test_a_record_made_before_a_method_had_its_attack_mode_is_refused_by_reproduce():
    from kdbench.core.errors import KdbenchError
    from kdbench.suite.jobs import job_from_config

    job = [j for j in load_suite("robustness").jobs() if j.method == "at"][0]
    config = job.config()
    assert job_from_config(config).job_id == job.job_id
    del config["params"]["attack_mode"]  # at's parameters as they were before it had one
    with pytest.raises(KdbenchError, match=r"^the record's at has no attack_mode: .* re-run the suite$"):
        job_from_config(config)
