"""Plugins (core/plugins.py): a user's method, architecture, dataset, attack, corruption and teacher kind register
with the public calls of `kdbench` from a file named by a suite, `--plugin` or an installed package's entry point;
each entry knows its origin; a job's identity follows the plugin's code and only its jobs' ids change; every bad
plugin is one line, exit code 2, nothing written."""

import dataclasses
import json
import sys
import textwrap
import tomllib

import pytest

from conftest import TINY_SUITE, run_main
from kdbench.core.errors import KdbenchError
from kdbench.core.identity import digest
from kdbench.core.plugins import load_plugin
from kdbench.suite.load import load_suite, parse_suite

pytestmark = pytest.mark.usefixtures("plugin_sandbox")

# A plugin of every family, through the public surface only.
EVERY_FAMILY = '''
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

import kdbench
from kdbench import (AttackDef, Batch, Corruption, Distiller, ModelInput, Normalize, TeacherKind, kd_loss,
                     make_tensor_data, register_attack, register_corruption, register_dataset, register_method,
                     register_model, register_teacher_kind)


@register_method("my-kd")
class MyKD(Distiller):
    """A user's KD: T = 4, KD weight 0.9, CE weight 0.1."""

    def losses(self, batch: Batch):
        s = self.student(batch.x)
        return {"kd": 0.9 * kd_loss(s, batch.teacher_logits[0], 4.0), "ce": 0.1 * F.cross_entropy(s, batch.y)}


@register_model("my-net", "a user's small CNN")
def my_net(inp: ModelInput) -> nn.Module:
    return nn.Sequential(Normalize(inp.mean, inp.std), nn.Conv2d(inp.shape[0], 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * inp.shape[1] * inp.shape[2], inp.num_classes))


@register_dataset("my-blobs", "two classes of 8x8 noise, bright or dark")
def my_blobs(cfg):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = (torch.rand(200, 1, 8, 8, generator=g) * 0.5 + 0.5 * y.view(-1, 1, 1, 1)).clamp(0, 1)
    return make_tensor_data("my-blobs", x[:160], y[:160], x[160:], y[160:], 2)


register_attack("my-fgsm", AttackDef("FGSM, a user's entry", lambda m, eps, ev, seed, k: torchattacks.FGSM(m, eps),
                                     grad_steps=lambda ev: 1))
register_corruption("my-invert", Corruption("1 - x", (1, 1, 1, 1, 1), lambda x, c, g: 1 - x, stream=901))
register_teacher_kind("my-smooth", TeacherKind("CE with label smoothing 0.1", {},
                                              lambda model, params, cfg: lambda x, y, p: {
                                                  "ce": F.cross_entropy(model(x), y, label_smoothing=0.1)}))
'''


def _write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def _one_error(proc, *needles):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], proc.stderr
    return lines[0]


def _tiny(tmp_path, plugins=(), name="suite.toml", **replace):
    doc = TINY_SUITE
    for old, new in replace.items():
        assert old in doc
        doc = doc.replace(old, new)
    path = tmp_path / name
    path.write_text((f"plugins = {json.dumps(list(plugins))}\n" if plugins else "") + doc)
    return path


def test_every_family_registers_from_a_plugin_file_and_names_its_origin(tmp_path):
    path = _write(tmp_path, "every.py", EVERY_FAMILY)
    proc = run_main("list", "--plugin", path)
    assert proc.returncode == 0, proc.stderr
    plugin = load_plugin(str(path))  # loaded already: the same plugin, not run twice
    short = f"[file every.py {plugin.origin.sha256[:8]}]"
    for name in ("my-kd", "my-net", "my-blobs", "my-fgsm", "my-invert", "my-smooth"):
        (line,) = [x for x in proc.stdout.splitlines() if x.strip().startswith(name + " ")]
        assert line.endswith(short), line
    assert "  kd " in proc.stdout
    assert not any(x.strip().startswith("kd ") and "[" in x for x in proc.stdout.splitlines())  # kdbench's own

    # every family's entry works where kdbench's own do: a suite of them all runs, and its jobs carry the plugin
    suite = tmp_path / "every.toml"
    suite.write_text(f'''plugins = ["every.py"]
dataset = "my-blobs"
seeds = [1]
[[pairs]]
teacher = "my-net"
student = "my-net"
[train]
epochs = 1
teacher_epochs = 1
[methods]
my-kd = {{ teacher = "my-smooth" }}
[eval]
attacks = ["my-fgsm"]
eps = [0.1]
corruptions = ["my-invert"]
severities = [1]
sweep_eps = []
noise_families = []
sanity = false
transfer = false
''')
    proc = run_main("run", "--suite", suite, "--out", tmp_path / "out", "--workers", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    ident = {"file": "every.py", "sha256": plugin.origin.sha256}
    got = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in (tmp_path / "out" /
                                                                                   "records").glob("*.json")}
    assert set(got) == {"my-kd", "teacher:my-smooth"} and all(r["config"]["plugins"] == [ident] for r in got.values())
    assert {"my-fgsm@0.1", "corruption/my-invert/1"} <= set(got["my-kd"]["metrics"])
    assert got["my-kd"]["dataset"] == "my-blobs" and got["my-kd"]["teacher"]["kind"] == "my-smooth"


def test_builtin_jobs_keep_their_ids_and_a_plugin_job_is_identified_by_content(tmp_path):
    plain = load_suite(str(_tiny(tmp_path, name="plain.toml")))
    method = _write(tmp_path, "every.py", EVERY_FAMILY)
    with_plugin = load_suite(str(_tiny(tmp_path, [method.name], name="with.toml",
                                       **{"kd = {}": "kd = {}\nmy-kd = {}"})))
    ids = {j.label(): j.job_id for j in with_plugin.jobs()}
    assert {j.label(): j.job_id for j in plain.jobs()}.items() <= ids.items()  # kd, ce, teachers: the same ids
    (mine,) = [j for j in with_plugin.jobs() if j.method == "my-kd"][:1]
    assert "plugins" not in plain.jobs()[-1].config() and mine.config()["plugins"][0]["file"] == "every.py"
    # the file's name is a location: the same bytes under another name are the same plugin's jobs
    renamed = dict(mine.config(), plugins=[{"file": "renamed.py", "sha256": mine.config()["plugins"][0]["sha256"]}])
    assert digest(renamed) == mine.job_id
    assert digest(dict(renamed, plugins=[{"file": "every.py", "sha256": "0" * 64}])) != mine.job_id


def test_a_plugin_teacher_kind_is_cached_under_its_code(tmp_path):
    from kdbench.training.teacher_cache import teacher_config

    path = _write(tmp_path, "every.py", EVERY_FAMILY)
    suite = load_suite(str(_tiny(tmp_path, [path.name], **{"kd = {}": 'kd = { teacher = "my-smooth" }'})))
    (kd,) = [j for j in suite.jobs() if j.method == "kd" and j.seed == 1]
    (spec,) = kd.teacher_specs()
    cfg = teacher_config(spec, kd, 1)
    assert cfg["kind"] == "my-smooth" and cfg["plugins"] == [{"file": "every.py", "sha256": load_plugin(
        str(path)).origin.sha256}]
    standard = dataclasses.replace(spec, kind="standard")
    assert "plugins" not in teacher_config(standard, kd, 1)  # kdbench's own kinds: as before


def test_an_edited_file_replaces_its_old_version_in_this_process(tmp_path):
    path = _write(tmp_path, "kd2.py", EVERY_FAMILY)
    first = load_plugin(str(path))
    path.write_text(path.read_text().replace("0.9 * kd_loss", "0.8 * kd_loss"))
    second = load_plugin(str(path))
    assert second.origin.sha256 != first.origin.sha256
    from kdbench.methods import METHODS

    assert METHODS.origin("my-kd") == second.origin and first.module not in sys.modules


# ---- bad plugins: one line, exit code 2, nothing written or registered -----------------------------------------

BAD = {
    "missing": (None, "plugin file 'gone.py' does not exist"),
    "syntax": ("def broken(:\n", "SyntaxError"),
    "dependency": ("import kdbench_no_such_package_xyz\n", "ModuleNotFoundError: No module named "
                                                          "'kdbench_no_such_package_xyz'"),
    "raises": ("from kdbench import register_model\nregister_model('half-done')(lambda inp: None)\n"
               "raise RuntimeError('boom while registering')\n", "RuntimeError: boom while registering"),
    "duplicate": ("from kdbench import Distiller, register_method\n@register_method('kd')\nclass K(Distiller):\n"
                  "    def losses(self, batch):\n        return {}\n",
                  "method 'kd' is registered twice: by built-in kdbench and by plugin file"),
    "no-losses": ("from kdbench import Distiller, register_method\n@register_method('lazy')\nclass Lazy(Distiller):\n"
                  "    pass\n", "method 'lazy': Lazy defines no losses(batch)"),
    "not-a-distiller": ("from kdbench import register_method\n@register_method('odd')\nclass Odd:\n    pass\n",
                        "'Odd' is not a subclass of Distiller"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_plugin_file_is_one_line_and_changes_nothing(tmp_path, kind):
    from kdbench.core.registry import snapshot

    code, needle = BAD[kind]
    name = "gone.py" if code is None else f"{kind}.py"
    if code is not None:
        _write(tmp_path, name, code)
    before = snapshot()
    out = tmp_path / "out"
    line = _one_error(run_main("run", "--suite", _tiny(tmp_path, [name]), "--out", out), needle)
    assert name in line  # names the file
    assert not out.exists() and snapshot() == before  # "half-done" of `raises` is not left registered
    assert not [m for m in sys.modules if m.startswith(f"kdbench_plugin_{kind.replace('-', '_')}")]
    # the same through --plugin, relative to the working folder
    if code is not None:
        _one_error(run_main("run", "--suite", _tiny(tmp_path), "--plugin", tmp_path / name, "--out", out), needle)
        assert not out.exists()


def test_a_bad_plugin_name_or_list_is_one_line(tmp_path):
    out = tmp_path / "out"
    _one_error(run_main("run", "--suite", _tiny(tmp_path, ["kdbench_no_such_module_xyz"]), "--out", out),
               "plugin module 'kdbench_no_such_module_xyz' is not importable")
    _one_error(run_main("run", "--suite", _tiny(tmp_path, ["not a module!"]), "--out", out),
               "neither a .py file nor a module name")
    path = tmp_path / "bad.toml"
    path.write_text('plugins = "x.py"\n' + TINY_SUITE)
    _one_error(run_main("run", "--suite", path, "--out", out), "plugins must be a list")
    assert not out.exists()


@pytest.mark.parametrize("losses, needle", [
    ("return {'kd': 1.0}", "loss term 'kd' is a float, not a tensor"),
    ("return [self.student(batch.x).sum()]", "losses(batch) returned list"),
    ("return {'kd': self.student(batch.x).mean(0)}", "loss term 'kd' has shape (10,), not a scalar"),
    ("return {'kd': batch.teacher_logits[0].sum()}", "no gradient with respect to the student's weights"),
    ("raise ValueError('needs 32x32 images')", "fails on a batch of digits: ValueError: needs 32x32 images"),
])
def test_a_method_that_breaks_the_contract_is_one_line_before_anything_runs(tmp_path, losses, needle):
    _write(tmp_path, "contract.py", f'''
        from kdbench import Distiller, register_method

        @register_method("breaks")
        class Breaks(Distiller):
            """Breaks the Distiller contract."""

            def losses(self, batch):
                {losses}
        ''')
    out = tmp_path / "out"
    proc = run_main("run", "--suite", _tiny(tmp_path, ["contract.py"], **{"kd = {}": "breaks = {}"}), "--out", out)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[0].startswith("plugin file ") and "sha256" in lines[0], proc.stderr
    assert len(lines) == 2 and lines[1].startswith("error: method 'breaks' (plugin file ") and needle in lines[1], \
        proc.stderr
    assert not out.exists()


# ---- installed packages -------------------------------------------------------------------------------------


def _distribution(site, name="kdbench-test-dist", module="kdbench_test_plugin", body=None):
    """A throw-away distribution on `site` (its module and its .dist-info with a kdbench.plugins entry point)."""
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(body or textwrap.dedent('''
        import torch.nn.functional as F
        from kdbench import Distiller, register_method

        @register_method("packaged-kd")
        class PackagedKD(Distiller):
            """A method from an installed package."""

            teacher_kind = None
            uses_teacher_logits = False

            def losses(self, batch):
                return {"ce": F.cross_entropy(self.student(batch.x), batch.y)}
        '''))
    info = site / f"{name.replace('-', '_')}-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(f"[kdbench.plugins]\nmine = {module}\n")
    return site


def test_an_installed_package_is_imported_at_start_and_listed_with_its_version(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_distribution(tmp_path / "site")))  # as `pip install` puts it
    proc = run_main("list", "methods")
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if x.strip().startswith("packaged-kd ")]
    assert line.endswith("[package kdbench-test-dist 1.2]") and "A method from an installed package" in line


def test_a_broken_installed_plugin_is_one_line_for_every_command(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_distribution(tmp_path / "broken",
                                                  body="raise ImportError('a dependency is missing')\n")))
    for command in (("list", "methods"), ("leaderboard", "--results", tmp_path)):
        _one_error(run_main(*command), "plugin module 'kdbench_test_plugin' cannot be loaded: ImportError: a "
                                       "dependency is missing")


def test_the_package_origin_carries_name_version_and_source_hash(tmp_path, monkeypatch):
    import importlib.metadata as md

    from kdbench.core.plugins import load_installed, source_sha256

    site = _distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    md.distribution("kdbench-test-dist")  # found on the path
    (plugin,) = [p for p in load_installed() if p.module == "kdbench_test_plugin"]
    o = plugin.origin
    assert (o.kind, o.name, o.version, o.module) == ("package", "kdbench-test-dist", "1.2", "kdbench_test_plugin")
    assert o.sha256 == source_sha256(site / "kdbench_test_plugin") and o.identity() == {
        "package": "kdbench-test-dist", "version": "1.2", "sha256": o.sha256}
    assert load_installed() == []  # once per process


def test_the_suite_key_is_checked_before_anything_else(tmp_path):
    doc = tomllib.loads(TINY_SUITE)
    with pytest.raises(KdbenchError, match="plugins must be a list"):
        parse_suite({**doc, "plugins": [1]})


def test_every_entry_of_kdbench_itself_is_built_in():
    """The face imports every family before it seals the built-ins: no module of kdbench registers an entry later
    (which would be taken for a script's, or for a plugin's while one is imported)."""
    import importlib
    import pkgutil

    import kdbench
    from kdbench.core.registry import _REGISTRIES

    for info in pkgutil.walk_packages(kdbench.__path__, "kdbench."):
        importlib.import_module(info.name)
    late = [(kind, e.name, e.origin.name) for kind, reg in _REGISTRIES.items() for e in reg.entries()
            if e.origin.kind != "built-in" and e.origin.name.startswith("kdbench.")]
    assert not late, late
    assert len(_REGISTRIES) >= 9 and all(reg.names() for reg in _REGISTRIES.values())
