"""Saved students, `kdbench evaluate`, model cards and `kdbench export` (docs/models.md)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import TINY_SUITE, run_main

ONE_SEED_KD = TINY_SUITE.replace("seeds = [1, 2]", "seeds = [1]")


def _records(folder):
    return [json.loads(p.read_text()) for p in sorted((folder / "records").glob("*.json"))]


def _row(leaderboard_md: str, label: str) -> list[str]:
    rows = [line for line in leaderboard_md.splitlines() if line.startswith("| ") and f"| {label} |" in line]
    assert len(rows) == 1, leaderboard_md
    return [c.strip() for c in rows[0].strip("|").split(" | ")]


def _header(leaderboard_md: str) -> list[str]:
    line = next(line for line in leaderboard_md.splitlines() if line.startswith("| rank"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def _digits_input():
    from kdbench.data.load import load_data
    from kdbench.data.registry import DataConfig
    from kdbench.models.registry import ModelInput

    data = load_data(DataConfig())
    return data, ModelInput(data.shape, data.num_classes, data.mean, data.std)


def test_saved_student_evaluates_to_its_record_and_exports(tmp_path, tiny_run, tiny_teachers):
    """On seed 1 of the session's tiny run (its records and saved students)."""
    suite = tiny_run.suite
    every = [rec for rec in tiny_run.records().values() if rec["role"] == "student"]
    assert {p.stem for p in (tiny_run.out / "students").glob("*.pt")} == {rec["job_id"] for rec in every}
    out, cache = tiny_run.copy_to(tmp_path / "tiny", keep=lambda r: r["seed"] == 1), tiny_teachers
    records = _records(out)
    students = [rec for rec in records if rec["role"] == "student"]
    assert len(records) == 3 and len(students) == 2
    from kdbench.training.pretrained import file_sha256

    for rec in students:
        info = rec["student"]["weights"]
        assert info["sha256"] == file_sha256(out / info["file"]) and rec["student"]["arch"] == "cnn-small"
        state = torch.load(out / info["file"], weights_only=True)
        assert all(v.is_contiguous() for v in state.values())

    kd = next(rec for rec in students if rec["method"] == "kd")
    again = tmp_path / "again"
    r = run_main("evaluate", "--record", out / "records" / f"{kd['job_id']}.json", "--name", "kd-again", "--out", again,
                "--cache-dir", cache, "--quiet")
    assert r.returncode == 0, r.stderr
    (ext,) = _records(again)
    assert ext["role"] == "external" and ext["method"] == "kd-again"
    assert ext["metrics"] == kd["metrics"] and ext["flags"] == kd["flags"]  # same protocol, same machine: exact
    assert "transfer@0.1" in ext["metrics"]

    # a second evaluate of the same model and protocol finds its record and writes nothing new
    r = run_main("evaluate", "--record", out / "records" / f"{kd['job_id']}.json", "--name", "kd-again", "--out", again,
                "--cache-dir", cache, "--quiet")
    assert r.returncode == 0 and "0 record(s) written" in r.stdout and len(_records(again)) == 1

    # export: weights + standalone code + card; the model loads without kdbench and gives kdbench's logits
    dest = tmp_path / "exported"
    r = run_main("export", out / "records" / f"{kd['job_id']}.json", "--to", dest)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["card.json", "load.py", "model.py", "weights.pt"]
    card = json.loads((dest / "card.json").read_text())
    assert card["weights"][0]["sha256"] == kd["student"]["weights"]["sha256"] and card["method"] == "kd"
    data, inp = _digits_input()
    torch.save(data.x_test[:16].clone(), dest / "probe.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = ("import sys, torch; sys.path.insert(0, '.'); from load import load; "
              "torch.save(load()(torch.load('probe.pt')), 'logits.pt'); assert 'kdbench' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", script], cwd=dest, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    from kdbench.models.registry import build_model

    model = build_model("cnn-small", inp)
    model.load_state_dict(torch.load(out / kd["student"]["weights"]["file"], weights_only=True))
    assert torch.equal(torch.load(dest / "logits.pt", weights_only=True), model.eval()(data.x_test[:16]))

    # --no-save-students: records without weights, no students/ folder; --no-report: no reports either
    bare = tmp_path / "bare"
    r = run_main("run", "--suite", suite, "--out", bare, "--cache-dir", cache, "--methods", "ce", "--seeds", "1",
                "--no-save-students", "--no-report", "--quiet")
    assert r.returncode == 0, r.stderr
    assert not (bare / "students").exists()
    assert all("weights" not in rec["student"] for rec in _records(bare))
    assert not {"summary.csv", "leaderboard.md", "leaderboard.html", "plots", "cards"} & {p.name for p in bare.iterdir()}


def _plain_torch_model(num_classes: int = 10, shape=None, arch: str = "cnn-small", epochs: int = 15):
    """A digits classifier trained with a plain PyTorch loop (Adam, cross-entropy), in eval mode."""
    from kdbench.models.registry import ModelInput, build_model

    data, inp = _digits_input()
    shape = shape or data.shape
    torch.manual_seed(0)
    model = build_model(arch, ModelInput(shape, num_classes, (0.5,) * shape[0], (0.3,) * shape[0]))
    if shape != data.shape or num_classes != data.num_classes:
        return model.eval()  # only its shapes matter
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(data.x_train), 128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(data.x_train[i:i + 128]), data.y_train[i:i + 128]).backward()
            opt.step()
    return model.eval()


def test_external_checkpoint_is_a_leaderboard_row_with_its_flags(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text(ONE_SEED_KD)
    model = _plain_torch_model()
    with torch.no_grad():  # logits x 10^4: a saturated softmax, whose input gradients vanish
        model.head[-1].weight.mul_(1e4)
        model.head[-1].bias.mul_(1e4)
    ckpt = tmp_path / "mine.pt"
    torch.save(model.state_dict(), ckpt)
    results = tmp_path / "results"
    r = run_main("evaluate", "--checkpoint", ckpt, "--arch", "cnn-small", "--suite", suite, "--name", "mine",
                "--out", results / "tiny", "--no-transfer", "--quiet")
    assert r.returncode == 0, r.stderr
    (rec,) = _records(results / "tiny")
    assert rec["role"] == "external" and "zero-gradients" in rec["flags"]
    assert (results / "tiny" / rec["student"]["weights"]["file"]).is_file()
    r = run_main("leaderboard", "--results", results, "--suite", "tiny")
    assert r.returncode == 0, r.stderr
    md = (results / "tiny" / "leaderboard.md").read_text()
    header, row = _header(md), _row(md, "mine [external]")
    assert "zero-gradients(1/1)" in row[header.index("flags")]
    card_link = row[header.index("card")]
    card = json.loads((results / "tiny" / card_link[len("[card]("):-1]).read_text())
    assert card["flags"] == {f: 1 for f in rec["flags"]} and card["external"]["model"]["sha256"]
    assert card["weights"][0]["sha256"] == rec["student"]["weights"]["sha256"]
    assert 'href="cards/' in (results / "tiny" / "leaderboard.html").read_text()
    # check treats the row like any other: in the baseline, then compared
    r = run_main("check", "--suite", suite, "--results", results, "--update-baseline")
    assert r.returncode == 0, r.stderr
    assert any("mine [external]" in k for k in json.loads((results / "tiny" / "baseline.json").read_text())["rows"])
    assert run_main("check", "--suite", suite, "--results", results).returncode == 0
    # the name is taken by this model: another model under it is refused, nothing written
    other = tmp_path / "other.pt"
    torch.save(_plain_torch_model(epochs=0).state_dict(), other)
    before = sorted(p.name for p in (results / "tiny" / "records").iterdir())
    r = run_main("evaluate", "--checkpoint", other, "--arch", "cnn-small", "--suite", suite, "--name", "mine",
                "--out", results / "tiny", "--no-transfer", "--quiet")
    assert r.returncode == 2 and "is taken" in r.stderr
    assert sorted(p.name for p in (results / "tiny" / "records").iterdir()) == before


class _RunsCode:
    """Unpickling this calls os.system: a checkpoint that would run code when loaded without weights_only."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _bad_checkpoint(kind: str, tmp_path):
    path = tmp_path / f"{kind}.pt"
    if kind == "code":
        torch.save({"state_dict": _RunsCode(tmp_path / "ran")}, path)
    elif kind == "architecture":
        torch.save(_plain_torch_model(arch="cnn-large", epochs=0).state_dict(), path)
    elif kind == "classes":
        torch.save(_plain_torch_model(num_classes=3).state_dict(), path)
    elif kind == "input-shape":
        torch.save(_plain_torch_model(shape=(1, 16, 16)).state_dict(), path)
    elif kind == "channels":
        torch.save(_plain_torch_model(shape=(3, 8, 8)).state_dict(), path)
    return path


@pytest.mark.parametrize("kind, needle", [
    ("code", "cannot load checkpoint"),
    ("architecture", "does not fit architecture 'cnn-small'"),
    ("classes", "predicts 3 classes"),
    ("input-shape", "shape mismatches"),
    ("channels", "shape mismatches"),
])
def test_bad_checkpoints_are_one_line_and_write_nothing(tmp_path, kind, needle):
    suite = tmp_path / "tiny.toml"
    suite.write_text(ONE_SEED_KD)
    ckpt = _bad_checkpoint(kind, tmp_path)
    out = tmp_path / "out"
    r = run_main("evaluate", "--checkpoint", ckpt, "--arch", "cnn-small", "--suite", suite, "--name", "bad",
                "--out", out, "--no-transfer", "--quiet")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert not out.exists() and not (tmp_path / "ran").exists()


def test_evaluate_input_errors(tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text(ONE_SEED_KD)
    ckpt = tmp_path / "m.pt"
    torch.save(_plain_torch_model(epochs=0).state_dict(), ckpt)
    out = tmp_path / "out"
    for args, needle in [(("--arch", "cnn-tiny"), "unknown model 'cnn-tiny'"),
                         (("--arch", "cnn-small", "--normalize", "both"), "--normalize 'both' is unknown"),
                         (("--arch", "cnn-small", "--name", "a b"), "--name 'a b'"),
                         ((), "give its architecture with --arch")]:
        name = () if "--name" in args else ("--name", "m")
        r = run_main("evaluate", "--checkpoint", ckpt, "--suite", suite, *name, *args, "--out", out, "--quiet")
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_no_save_students(tmp_path):
    from kdbench.core.errors import KdbenchError
    from kdbench.suite.load import parse_suite

    doc = {"dataset": "digits", "save": {"students": False}}
    suite = parse_suite(doc)
    assert suite.save.students is False and not any(j.save_student for j in suite.jobs() if not j.is_teacher)
    assert suite.jobs()[0].job_id == parse_suite({"dataset": "digits"}).jobs()[0].job_id  # not part of the id
    with pytest.raises(KdbenchError, match="save.students must be true or false"):
        parse_suite({"dataset": "digits", "save": {"students": "no"}})
    with pytest.raises(KdbenchError, match="unknown key 'student'"):
        parse_suite({"dataset": "digits", "save": {"student": False}})
