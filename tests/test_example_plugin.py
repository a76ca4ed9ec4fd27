"""The worked example of docs/plugins.md (docs/examples/plugin/): logit standardization KD and a user's own
architecture, as plugin files beside a suite. Its loss is checked against an independent computation, the suite
runs (shrunk to the tiny suite's training), and the committed leaderboard of results/plugin-example/ comes from
these very files."""

import hashlib
import json
import shutil

import pytest
import torch

from conftest import ROOT, TINY_SUITE, run_main
from kdbench.core.plugins import load_plugin

EXAMPLE = ROOT / "docs" / "examples" / "plugin"
RESULTS = ROOT / "results" / "plugin-example"

pytestmark = pytest.mark.usefixtures("plugin_sandbox")


def _lskd_reference(s, t, y, T, kd_weight, ce_weight):
    """Logit standardization KD written out in float64 from the paper's formulas (Sun et al. 2024, eqs. 7-9):
    z-scores with the unbiased standard deviation, softmax at the base temperature, KL summed over classes and
    averaged over the batch, times T^2; plus the weighted cross-entropy on the raw logits."""
    s, t = s.double(), t.double()
    c = s.shape[1]

    def z(v):
        mean = v.sum(1, keepdim=True) / c
        std = (((v - mean) ** 2).sum(1, keepdim=True) / (c - 1)).sqrt()
        return (v - mean) / (std + 1e-7)

    p_t = torch.exp(z(t) / T) / torch.exp(z(t) / T).sum(1, keepdim=True)
    log_p_s = z(s) / T - torch.log(torch.exp(z(s) / T).sum(1, keepdim=True))
    kl = (p_t * (torch.log(p_t) - log_p_s)).sum(1).mean()
    log_q = s - torch.log(torch.exp(s).sum(1, keepdim=True))
    ce = -log_q[torch.arange(len(y)), y].mean()
    return kd_weight * T**2 * kl, ce_weight * ce


def test_lskd_loss_matches_an_independent_computation_and_ignores_logit_scale():
    from kdbench.methods import METHODS, Batch, TrainContext
    from kdbench.models.registry import ModelInput, build_model

    load_plugin(str(EXAMPLE / "lskd.py"))
    cls = METHODS.get("lskd")
    assert cls.defaults == {"temperature": 2.0, "kd_weight": 9.0, "ce_weight": 0.1}  # the reference code's
    torch.manual_seed(0)
    inp = ModelInput((1, 8, 8), 10, (0.5,), (0.3,))
    student, teacher = build_model("cnn-small", inp), build_model("cnn-large", inp).eval()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    with torch.no_grad():
        t = teacher(x) * 3.0
    ctx = TrainContext(10, (1, 8, 8), 1, 0.1, 1, 0.025)
    for params in (cls.defaults, {"temperature": 4.0, "kd_weight": 1.0, "ce_weight": 1.0}):
        distiller = cls(student, [teacher], params, ctx).eval()
        terms = distiller.losses(Batch(x, y, [t]))
        kd, ce = _lskd_reference(student(x), t, y, params["temperature"], params["kd_weight"], params["ce_weight"])
        assert terms["kd"].item() == pytest.approx(kd.item(), rel=1e-5)
        assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    # standardized logits: the teacher's scale and shift do not change the KD term (they do change vanilla KD's)
    distiller = cls(student, [teacher], cls.defaults, ctx).eval()
    scaled = distiller.losses(Batch(x, y, [5.0 * t - 2.0]))["kd"]
    assert scaled.item() == pytest.approx(distiller.losses(Batch(x, y, [t]))["kd"].item(), rel=1e-4)
    vanilla = METHODS.get("kd")(student, [teacher], {"temperature": 2.0, "alpha": 0.9}, ctx).eval()
    assert vanilla.losses(Batch(x, y, [5.0 * t - 2.0]))["kd"].item() != pytest.approx(
        vanilla.losses(Batch(x, y, [t]))["kd"].item(), rel=1e-2)


def test_the_example_suite_runs_lskd_beside_kd_and_ce(tmp_path, tiny_teachers):
    """The example as shipped, with the tiny suite's training (its teachers come from the session's cache) and a
    light evaluation: the plugin files, the suite's `plugins` key and its methods work as docs/plugins.md says."""
    for name in ("lskd.py", "dwsep_net.py", "plugin-example.toml"):
        shutil.copy2(EXAMPLE / name, tmp_path / name)
    text = (tmp_path / "plugin-example.toml").read_text()
    train = TINY_SUITE[TINY_SUITE.index("[train]"):TINY_SUITE.index("[methods]")]
    text = text[:text.index("[train]")] + train + text[text.index("[methods]"):text.index("[eval]")] + '''[eval]
attacks = ["fgsm", "pgd"]
eps = [0.1]
pgd_steps = 5
apgd_steps = 5
transfer = false
sweep_eps = []
corruptions = ["contrast"]
severities = [1]
noise_families = []
sanity = false
'''
    (tmp_path / "plugin-example.toml").write_text(text.replace("seeds = [1, 2, 3]", "seeds = [1]"))
    out = tmp_path / "out"
    proc = run_main("run", "--suite", tmp_path / "plugin-example.toml", "--out", out, "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    records = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in (out / "records").glob("*")}
    assert set(records) == {"ce", "kd", "lskd", "teacher:standard"}
    sha = {n: hashlib.sha256((EXAMPLE / n).read_bytes()).hexdigest() for n in ("lskd.py", "dwsep_net.py")}
    assert {p["name"]: p["sha256"] for p in records["lskd"]["plugins"]} == sha
    assert records["kd"]["student"] == {**records["kd"]["student"], "arch": "dwsep-small", "params": 8074}
    board = (out / "leaderboard.md").read_text()
    assert all(f"| {m} |" in board for m in ("ce", "kd", "lskd"))


def test_the_committed_example_leaderboard_comes_from_these_files():
    """results/plugin-example/ is a run of the example as committed: every plugin record names the example files'
    current hashes (an edit of the example must re-run it: docs/plugins.md gives the command)."""
    records = [json.loads(p.read_text()) for p in sorted((RESULTS / "records").glob("*.json"))]
    assert len(records) == 10  # 3 methods x 3 seeds, and the teacher's reference row
    sha = {n: hashlib.sha256((EXAMPLE / n).read_bytes()).hexdigest() for n in ("lskd.py", "dwsep_net.py")}
    for rec in records:
        if rec["role"] == "student":
            assert {p["name"]: p["sha256"] for p in rec["plugins"]} == (
                sha if rec["method"] == "lskd" else {"dwsep_net.py": sha["dwsep_net.py"]}), rec["method"]
    assert sorted(r["method"] for r in records if r["role"] == "student") == ["ce"] * 3 + ["kd"] * 3 + ["lskd"] * 3
    board = (RESULTS / "leaderboard.md").read_text()
    assert all(f"| {m} |" in board for m in ("ce", "kd", "lskd"))
