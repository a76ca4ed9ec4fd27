"""Suite loading: the default suite, the job grid, and every kind of bad input (one line, exit 2, nothing written)."""

import pytest

from conftest import TINY_SUITE, run_main
from kdbench.core.errors import KdbenchError
from kdbench.methods import METHODS
from kdbench.suite.load import load_suite, parse_suite, with_overrides


def test_default_suite_runs_every_registered_method():
    suite = load_suite("robustness")
    # every registered method but ard-kl, a kdbench variant of ARD (its inner loss against ard's), and at-l2, the
    # L2-trained baseline (every method is trained at the suite's L-inf settings; at-l2 is the option for a suite
    # that wants an L2-trained row), kept out of the default suite for its running time (docs/methods-adversarial.md)
    assert {m.name for m in suite.methods} == set(METHODS.names()) - {"ard-kl", "at-l2"}
    assert suite.seeds == (1, 2, 3, 4, 5)
    assert suite.data.name == "digits"
    # every row on the same seeds; the defensive students with a budget of their own (chosen from training-set
    # curves: benchmarks/robustness.toml)
    assert all(not m.seeds for m in suite.methods)
    epochs = {j.method: j.train.epochs for j in suite.jobs() if not j.is_teacher}
    assert epochs.pop("defensive") == 40 and set(epochs.values()) == {suite.train.epochs}


def test_job_ids_are_stable_and_distinct(tiny_suite):
    a, b = load_suite(str(tiny_suite)).jobs(), load_suite(str(tiny_suite)).jobs()
    assert [j.job_id for j in a] == [j.job_id for j in b]
    assert len({j.job_id for j in a}) == len(a)
    # 2 methods x 2 seeds students + one standard teacher per seed
    assert sum(not j.is_teacher for j in a) == 4
    assert sum(j.is_teacher for j in a) == 2


def test_job_id_changes_with_config(tiny_suite):
    base = load_suite(str(tiny_suite))
    other = parse_suite({**__import__("tomllib").loads(TINY_SUITE), "train": {"epochs": 3}})
    ids = lambda s: {j.job_id for j in s.jobs() if j.method == "kd"}  # noqa: E731
    assert ids(base).isdisjoint(ids(other))


def test_suite_name_does_not_change_job_ids(tiny_suite):
    import tomllib

    doc = tomllib.loads(TINY_SUITE)
    a = parse_suite(doc).jobs()
    b = parse_suite({**doc, "name": "renamed"}).jobs()
    assert [j.job_id for j in a] == [j.job_id for j in b]


def test_overrides_pick_methods_and_seeds(tiny_suite):
    s = with_overrides(load_suite(str(tiny_suite)), ["kd"], [5])
    assert [m.name for m in s.methods] == ["kd"] and s.seeds == (5,)


def test_a_method_can_have_seeds_of_its_own(tiny_suite):
    import tomllib

    doc = tomllib.loads(TINY_SUITE)
    own = parse_suite({**doc, "methods": {"ce": {"seeds": [1, 2, 3, 4]}, "kd": {}}})
    jobs = own.jobs()
    assert sorted(j.seed for j in jobs if j.method == "ce") == [1, 2, 3, 4]
    assert sorted(j.seed for j in jobs if j.method == "kd") == [1, 2]  # the suite's
    assert sorted(j.seed for j in jobs if j.is_teacher) == [1, 2]  # ce needs no teacher at seeds 3, 4
    same = {j.job_id for j in load_suite(str(tiny_suite)).jobs()}
    assert same <= {j.job_id for j in jobs}  # the seeds key is not a parameter: the shared jobs keep their ids
    overridden = with_overrides(own, None, [7]).jobs()  # --seeds replaces a method's own seeds too
    assert {j.seed for j in overridden} == {7}


def test_a_method_can_train_with_settings_of_its_own(tiny_suite):
    """The reserved key `train`: [train] fields that replace the suite's for that method's students, in their
    jobs' identity; every other job, and every teacher, is unchanged."""
    import tomllib

    from kdbench.suite.jobs import job_from_config
    from kdbench.training.teacher_cache import teacher_config

    doc = tomllib.loads(TINY_SUITE)
    plain = parse_suite(doc).jobs()
    own = parse_suite({**doc, "methods": {"ce": {}, "kd": {"temperature": 4.0, "train": {"epochs": 5, "lr": 1}}}})
    jobs = own.jobs()
    kd = [j for j in jobs if j.method == "kd"]
    assert all(j.train.epochs == 5 and j.train.lr == 1.0 and j.train.batch_size == 128 for j in kd)
    assert all(j.config()["train"]["epochs"] == 5 for j in kd)  # the merged settings are the job's identity
    assert {j.job_id for j in kd}.isdisjoint(j.job_id for j in plain)
    unchanged = lambda js: {j.job_id for j in js if j.method != "kd"}  # noqa: E731
    assert unchanged(jobs) == unchanged(plain) and len(unchanged(jobs)) == 4  # ce and the teachers keep their ids
    # the teachers are the suite's: trained with the suite's [train], whichever method uses them
    for a, b in zip(kd, [j for j in plain if j.method == "kd"]):
        assert a.teacher_training() == own.train and a.train != own.train
        assert teacher_config(a.teacher_specs()[0], a, 1) == teacher_config(b.teacher_specs()[0], b, 1)
        assert job_from_config(a.config()).job_id == a.job_id  # `kdbench reproduce` rebuilds the same job
    # settings equal to the suite's change nothing
    same = parse_suite({**doc, "methods": {"ce": {"train": {"epochs": 2}}, "kd": {"train": {}}}})
    assert [j.job_id for j in same.jobs()] == [j.job_id for j in plain]
    # --methods keeps a suite method's settings; --seeds keeps them too
    picked = with_overrides(own, ["kd"], [3]).jobs()
    assert {j.train.epochs for j in picked if not j.is_teacher} == {5} and {j.seed for j in picked} == {3}


def test_the_dry_run_counts_a_methods_own_epochs(tiny_suite, monkeypatch):
    import tomllib

    from kdbench.execution import estimate

    monkeypatch.setattr(estimate, "measure_arch", lambda *a, **k: {"fb": 1e-3, "f": 3e-4, "afb": 8e-4, "af": 2e-4,
                                                                   "params": 1})
    doc = tomllib.loads(TINY_SUITE)
    suite = parse_suite({**doc, "methods": {"ce": {"seeds": [1]}, "pointwise": {"seeds": [1], "train": {"epochs": 6}}}})
    rows = {r["job"].method: r for r in estimate.estimate(suite, "cpu", progress=lambda *_: None)["rows"]}
    assert rows["ce"]["epochs"] == 2 and rows["pointwise"]["epochs"] == 6
    assert rows["teacher"]["epochs"] == 3  # the suite's teacher_epochs


BAD = [
    ('dataset = "digitz"', "unknown dataset 'digitz'", "digits"),
    ('[[pairs]]\nteacher = "resnet-9000"\nstudent = "cnn-small"', "unknown model 'resnet-9000'", "cnn-small"),
    ('[methods]\nkdd = {}', "unknown method 'kdd'", "choose from"),
    ('[eval]\nattacks = ["pgd", "cw"]', "unknown attack 'cw'", "apgd-dlr"),
    ('[eval]\ncorruptions = ["fog"]', "unknown corruption 'fog'", "gaussian_noise"),
    ('[eval]\neps = [0.1, 1.5]', "1.5", "outside [0, 1]"),
    ('[eval]\neps = [-0.1]', "-0.1", "outside [0, 1]"),
    ('seeds = [0, 1]', "seed 0", ">= 1"),
    ('seeds = [-3]', "seed -3", ">= 1"),
    ('[train]\nepochs = "ten"', "train.epochs", "integer"),
    ('[train]\nepoch = 3', "unknown key 'epoch'", "did you mean 'epochs'"),
    ('[methods]\nkd = { temprature = 2.0 }', "unknown key 'temprature'", "did you mean 'temperature'"),
    ('[methods]\nkd = { temperature = "hot" }', "methods.kd.temperature", "number"),
    ('[methods]\nkd = { teacher = "genius" }', "unknown teacher kind 'genius'", "adversarial"),
    ('[methods]\nkd = { seeds = [1, 0] }', "seed 0", ">= 1"),
    ('[methods]\nkd = { seeds = 3 }', "methods.kd.seeds", "non-empty list"),
    ('[methods]\nkd = { train = { epoch = 3 } }', "unknown key 'epoch' in methods.kd.train", "did you mean 'epochs'"),
    ('[methods]\nkd = { train = { optimizer = "rmsprop" } }', "methods.kd.train.optimizer 'rmsprop'", "adam, sgd"),
    ('[methods]\nkd = { train = { lr = 0.0 } }', "methods.kd.train.lr must be > 0", "0.0"),
    ('[methods]\nkd = { train = { epochs = "many" } }', "methods.kd.train.epochs", "integer"),
    ('[methods]\nkd = { train = { adv_eps = 2.0 } }', "methods.kd.train.adv_eps = 2.0", "outside [0, 1]"),
    ('[methods]\nkd = { train = 3 }', "methods.kd.train must be a table", "3"),
    ('[methods]\nkd = { train = { teacher_epochs = 3 } }', "methods.kd.train.teacher_epochs", "[train]"),
    ('[methods]\nkd = { temperature = 0.0 }', "methods.kd.temperature 0.0", "outside its range (0, inf)"),
    ('[methods]\nkd = { alpha = 1.5 }', "methods.kd.alpha 1.5", "outside its range [0, 1]"),
    ('[methods]\nkd = { alpha = 0.5 }\nfitnets = { hint_stage = 1.0 }', "methods.fitnets.hint_stage 1.0",
     "outside its range [0, 1)"),
    ('this is = = not toml', "not valid TOML", "tiny.toml"),
    ('colour = "blue"', "unknown key 'colour'", "valid keys"),
    ('[eval]\nseverities = [6]', "severity 6", "1, 2, 3, 4, 5"),
    ('headline_eps = 0.3', "headline_eps 0.3", "eval.eps"),
]


@pytest.mark.parametrize("snippet,must_say,choices", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, snippet, must_say, choices):
    path = tmp_path / "tiny.toml"
    path.write_text(_replace_section(TINY_SUITE, snippet))
    out = tmp_path / "out"
    proc = run_main("run", "--suite", path, "--out", out, "--quiet")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert must_say in lines[0] and choices in lines[0], lines[0]
    assert not out.exists()


def _replace_section(doc: str, snippet: str) -> str:
    """Put `snippet` into the suite text: a [table]/[[array]] snippet replaces that table's lines, a top-level
    `key = value` replaces that key (or is added at the top)."""
    first = snippet.splitlines()[0].strip()
    lines = doc.strip().splitlines()
    if first.startswith("["):
        header = first
        out, skip = [], False
        for line in lines:
            if line.strip().startswith("["):
                skip = line.strip() == header
                if skip:
                    continue
            if not skip:
                out.append(line)
        return "\n".join(out) + "\n\n" + snippet + "\n"
    key = first.split("=")[0].strip()
    kept = [line for line in lines if not (line.split("=")[0].strip() == key and not line.startswith("["))]
    return snippet + "\n" + "\n".join(kept) + "\n"


def test_unknown_builtin_suite_lists_the_valid_ones(tmp_path):
    proc = run_main("run", "--suite", "robustnes", "--out", tmp_path / "o", "--quiet")
    assert proc.returncode == 2
    assert "unknown suite 'robustnes'" in proc.stderr and "robustness" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_missing_suite_file(tmp_path):
    proc = run_main("run", "--suite", tmp_path / "nope.toml", "--quiet")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_cli_seeds_below_one_rejected(tmp_path, tiny_suite):
    proc = run_main("run", "--suite", tiny_suite, "--seeds", "0", "--out", tmp_path / "o", "--quiet")
    assert proc.returncode == 2 and "seed 0" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_cli_unknown_method_override(tmp_path, tiny_suite):
    proc = run_main("run", "--suite", tiny_suite, "--methods", "kd,bogus", "--out", tmp_path / "o", "--quiet")
    assert proc.returncode == 2 and "unknown method 'bogus'" in proc.stderr and "rslad" in proc.stderr


def test_parse_errors_are_kdbench_errors():
    with pytest.raises(KdbenchError, match="unknown method 'nope'"):
        parse_suite({"methods": {"nope": {}}})
