"""Paired statistics of the leaderboard, the seed-by-seed regression gate and reproduction across machines."""

import json
import shutil

import numpy as np
import pytest

from conftest import ROOT, run_main

from kdbench.records.examples import masks_of, pack, unpack
from kdbench.stats.paired import compare, crossed, holm, mcnemar, seed_t

RECORDS = ROOT / "results" / "robustness" / "records"


# --- statistics on synthetic data ----------------------------------------------------------------------------


def test_masks_round_trip_compactly():
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 360):
        m = rng.random(n) < 0.5
        text = pack(m)
        assert len(text) <= 4 * ((n + 7) // 8 + 2) // 3
        assert (unpack(text, n) == m).all()
    with pytest.raises(ValueError):
        unpack(pack(np.ones(9, bool)), 8)  # a ninth bit set: not a mask of 8 examples


def test_holm_steps_down_and_ignores_missing_tests():
    assert holm([0.01, 0.04, 0.03, float("nan")]) == [True, False, False, False]
    assert holm([0.01, 0.02, 0.03]) == [True, True, True]  # 0.01 <= .05/3, 0.02 <= .05/2, 0.03 <= .05
    assert holm([0.02, 0.02]) == [True, True]
    assert holm([0.03, 0.03]) == [False, False]


def test_crossed_test_holds_its_level_and_pairing_beats_the_seed_test():
    rng = np.random.default_rng(1)
    k, n = 3, 360
    false = 0
    for _ in range(200):  # no effect: differences are example noise only
        p = rng.beta(0.5, 0.5, n)
        a, b = rng.random((k, n)) < p, rng.random((k, n)) < p
        false += crossed(a.astype(int) - b.astype(int)).p < 0.05
    assert false <= 20  # 5% expected; 10% allowed for 200 draws
    found = [0, 0]
    for _ in range(200):  # a 6-point gain, identical for every seed
        p = rng.beta(0.5, 0.5, n)
        a, b = rng.random((k, n)) < np.clip(p + 0.06, 0, 1), rng.random((k, n)) < p
        found[0] += crossed(a.astype(int) - b.astype(int)).p < 0.05
        found[1] += seed_t(a.mean(1) - b.mean(1)).p < 0.05
    assert found[0] > found[1] + 20


def test_comparison_picks_the_test_the_records_allow():
    a, b = np.array([1, 1, 1, 0, 1, 1] * 10, bool), np.array([1, 0, 0, 0, 1, 1] * 10, bool)
    one = compare({1: a.mean()}, {1: b.mean()}, {1: a}, {1: b})
    assert one.test == "mcnemar" and one.diff == pytest.approx(2 / 6) and one.p < 1e-4
    assert mcnemar(a, a).p == 1.0
    bare = compare({1: 0.6}, {1: 0.5})
    assert bare.test == "none" and np.isnan(bare.low) and np.isnan(bare.p)
    seeds = compare({1: 0.6, 2: 0.7, 3: 0.65}, {1: 0.5, 2: 0.62, 3: 0.52})
    assert seeds.test == "seed-t" and seeds.df == 2 and seeds.low < seeds.diff < seeds.high


def _without_examples(records):
    """The committed records as a run without per-example data would have written them (the seed-paired path)."""
    return [{k: v for k, v in r.items() if k != "examples"} for r in records]


def test_one_seed_shows_no_spread_and_names_the_test_that_still_applies():
    from kdbench.reporting.report import leaderboard_markdown, summarize

    records = _without_examples(json.loads(p.read_text()) for p in RECORDS.glob("*.json"))
    seed1 = [r for r in records if r["seed"] == 1]
    md = leaderboard_markdown(summarize(seed1), "robustness", 0.1, seed1)
    assert "±" not in md.split("| rank |")[1] and "≈" not in md
    assert "no interval and no test apply" in md
    kd = next(line for line in md.splitlines() if line.startswith("| ") and "| kd |" in line)
    assert "[" not in kd.split("|")[4]  # no interval without per-example data
    # with per-example data, one seed still has an example-level test (McNemar)
    rng = np.random.default_rng(0)
    for r in seed1:
        mask = np.zeros(360, bool)
        mask[rng.permutation(360)[:round(360 * r["metrics"]["robust@0.1"])]] = True
        r["examples"] = {"n": 360, "masks": {"robust@0.1": pack(mask)}}
    md = leaderboard_markdown(summarize(seed1), "robustness", 0.1, seed1)
    assert "McNemar" in md and "not seed-to-seed variation" in md
    kd = next(line for line in md.splitlines() if line.startswith("| ") and "| kd |" in line)
    assert "[" in kd.split("|")[4]


def test_the_committed_records_are_paired_on_seeds():
    from kdbench.reporting.report import leaderboard_markdown, summarize

    records = _without_examples(json.loads(p.read_text()) for p in RECORDS.glob("*.json"))
    md = leaderboard_markdown(summarize(records), "robustness", 0.1, records)
    assert "paired t-test over seeds" in md and "Holm" in md and "Smallest detectable difference" in md
    dtkd = next(line for line in md.splitlines() if "| dtkd |" in line).split("|")[4].strip()
    # the same interval computed here from the per-seed differences: mean ± t(0.975, n - 1) * sd / sqrt(n)
    import statistics

    from scipy.stats import t

    robust = {(r["method"], r["seed"]): 100 * r["metrics"]["robust@0.1"] for r in records if r["role"] == "student"}
    ce, own = ({s for m, s in robust if m == name} for name in ("ce", "dtkd"))
    both = sorted(ce & own)  # paired on the seeds both rows have; the cell says so where they are not all
    assert (f"({len(both)} seeds: " in dtkd) == (ce != own)
    diffs = [robust["dtkd", s] - robust["ce", s] for s in both]
    half = t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    mean = statistics.mean(diffs)
    assert dtkd.startswith(f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]"), (dtkd, diffs)


# --- a tiny suite run for real: check and reproduce ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checked(tiny_run, tmp_path_factory):
    """The session's tiny suite run (ce, kd; seeds 1, 2; one thread per job) with its baseline."""
    root = tmp_path_factory.mktemp("stats")
    results = root / "results"
    tiny_run.copy_to(results / "tiny")
    assert run_main("check", "--suite", tiny_run.suite, "--results", results, "--update-baseline").returncode == 0
    return tiny_run.suite, results, root


def _copy(tiny_checked, name):
    suite, results, root = tiny_checked
    out = root / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(results / "tiny", out)
    return out


def _edit(folder, method, seeds, fn):
    for p in (folder / "records").glob("*.json"):
        doc = json.loads(p.read_text())
        if doc["method"] == method and doc["seed"] in seeds:
            fn(doc)
            p.write_text(json.dumps(doc))


def _check(tiny_checked, out):
    suite, results, _ = tiny_checked
    return run_main("check", "--suite", suite, "--results", results, "--out", out)


def test_records_keep_per_example_correctness_and_their_machine(tiny_run):
    for rec in tiny_run.records().values():
        masks = masks_of(rec)
        assert set(masks) == {"clean", "robust@0.1", "robust-l2@0.25", "certified-l2@0", "certified-l2@0.25"}
        assert rec["examples"]["n"] == 359  # 20% of the 1797 digits
        for name, mask in masks.items():
            assert mask.mean() == pytest.approx(rec["metrics"][name], abs=1e-6)  # metrics are float32 means
        assert rec["env"]["cpu"]["model"] and rec["env"]["threads"] == 1 and "gpu" in rec["env"]


def test_check_is_exact_on_the_same_machine(tiny_checked):
    same = _copy(tiny_checked, "same")
    ok = _check(tiny_checked, same)
    assert ok.returncode == 0 and "same machine" in ok.stdout and "0 regressed" in ok.stdout

    # an injected 5-point drop of kd's robust@0.1 on every seed
    _edit(same, "kd", (1, 2), lambda d: d["metrics"].update({"robust@0.1": d["metrics"]["robust@0.1"] - 0.05}))
    bad = _check(tiny_checked, same)
    assert bad.returncode == 1 and "kd: robust@0.1 (seed 1)" in bad.stderr and "(seed 2)" in bad.stderr

    # a 2-point change on one seed is reported (the old gate allowed 3 standard errors, never under 2 points)
    again = _copy(tiny_checked, "again")
    _edit(again, "ce", (2,), lambda d: d["metrics"].update({"clean": d["metrics"]["clean"] - 0.02}))
    one = _check(tiny_checked, again)
    assert one.returncode == 1 and "ce: clean (seed 2)" in one.stderr and "1 regressed" in one.stdout


def test_check_across_thread_counts_uses_the_noise_model(tmp_path, tiny_run):
    """ce on seed 1, run on 1 thread (the session's run) then on 2 (not bit-identical): nothing changed, so check
    passes."""
    results = tmp_path / "results"
    tiny_run.copy_to(results / "tiny", keep=lambda r: r["seed"] == 1 and r["method"] == "ce")
    suite = tiny_run.suite
    assert run_main("check", "--suite", suite, "--results", results, "--update-baseline").returncode == 0
    two = tmp_path / "two-threads"
    proc = run_main("run", "--suite", suite, "--methods", "ce", "--seeds", "1", "--workers", "1", "--quiet", "--out",
                    two, "--cpus-per-job", "2", "--cache-dir", tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    ok = run_main("check", "--suite", suite, "--results", results, "--out", two)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "other machine" in ok.stdout and "same machine" not in ok.stdout
    assert {json.loads(p.read_text())["env"]["threads"] for p in (two / "records").glob("*.json")} == {2}

    # a real drop is still caught across machines: ce's clean accuracy 8 points lower
    _edit(two, "ce", (1,), lambda d: d["metrics"].update({"clean": d["metrics"]["clean"] - 0.08}))
    bad = run_main("check", "--suite", suite, "--results", results, "--out", two)
    assert bad.returncode == 1 and "ce: clean" in bad.stderr


def test_reproduce_on_another_machine_expects_its_noise(tmp_path, monkeypatch, capsys, tiny_run):
    """A record (the session's tiny-suite teacher, seed 1) whose recorded CPU is another: within the expected noise
    exits 0, a real change 1 (compared with the same re-run: the comparison is a function of the two records)."""
    from kdbench.execution import reproduce

    doc = next(r for r in tiny_run.records().values() if r["method"] == "teacher:standard" and r["seed"] == 1)
    doc["env"]["cpu"] = {"model": "Some Other CPU", "capability": "AVX512", "flags": ["avx2", "avx512f", "fma"]}
    faked = tmp_path / "faked.json"
    faked.write_text(json.dumps(doc))
    reruns, compare = [], reproduce.compare_rerun

    def keep_rerun(record, again, *args):
        reruns.append(again)
        return compare(record, again, *args)

    monkeypatch.setattr(reproduce, "compare_rerun", keep_rerun)
    proc = run_main("reproduce", faked, "--cache-dir", tmp_path / "cache", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "different machine" in proc.stdout and "by per-example noise alone" in proc.stdout
    (again,) = reruns
    assert again["job_id"] == doc["job_id"]

    doc["metrics"]["robust@0.1"] -= 0.25  # far beyond machine noise
    capsys.readouterr()
    assert compare(doc, again, None) == 1 and "robust@0.1" in capsys.readouterr().out

    # with the measured variation of its row in a baseline: each metric within what it measured, or flagged
    variation = {name: [0.01, 10.0] for name in doc["metrics"]}  # 1 point per seed on 10 degrees of freedom
    variation["robust@0.1"] = [0.3, 10.0]  # a metric that moves by 30 points across machines
    assert compare(doc, again, None, variation, "b.json") == 0
    out = capsys.readouterr().out
    assert "by its variation measured in b.json" in out and f"{len(variation)} within" in out
    variation["robust@0.1"] = [0.01, 10.0]
    assert compare(doc, again, None, variation, "b.json") == 1
    assert "robust@0.1" in (out := capsys.readouterr().out) and "(its measured variation)" in out


def test_adversarial_methods_are_also_compared_with_adversarial_training():
    import copy

    from kdbench.reporting.report import leaderboard_tables, summarize

    records = [r for r in _without_examples(json.loads(p.read_text()) for p in RECORDS.glob("*.json"))
               if r["method"] != "at"]
    at = [dict(copy.deepcopy(r), method="at", job_id=r["job_id"][::-1]) for r in records if r["method"] == "ce"]
    for r in at:  # a stand-in row for the teacher-free adversarial training baseline
        r["metrics"]["robust@0.1"] += 0.3
    (title, table), = leaderboard_tables(summarize(records + at), 0.1, records + at)
    assert list(table.columns[:5]) == ["rank", "method", "robust@0.1", "Δ vs ce", "Δ vs at"]
    rows = {r["method"]: r for _, r in table.iterrows()}
    robust = {(r["method"], r["seed"]): 100 * r["metrics"]["robust@0.1"] for r in records if r["role"] == "student"}
    seeds = sorted({s for m, s in robust if m == "ce"} & {s for m, s in robust if m == "rslad"})  # both rows' seeds
    expected = sum(robust["rslad", s] - robust["ce", s] for s in seeds) / len(seeds) - 30  # at = ce + 30 points
    assert rows["rslad [adversarial teacher]"]["Δ vs at"].startswith(f"{expected:+.1f} ["), expected
    assert rows["kd"]["Δ vs at"] == "" and rows["kd"]["Δ vs ce"] and rows["at"]["Δ vs at"] == ""
    assert "Δ vs ce / at" in table.attrs["note"]


def test_check_bad_variation_and_power_input_is_one_line(tmp_path, tiny_checked):
    suite, results, _ = tiny_checked
    cases = [
        (["--variation", "auto"], "use it with --update-baseline"),
        (["--update-baseline", "--variation", tmp_path / "nothing"], "holds no records"),
        (["--update-baseline", "--variation", results / "tiny"], "measure no variation"),
        (["--drop", "0"], "--drop must be in (0, 1]"),
        (["--alpha", "2"], "--alpha must be in (0, 1)"),
    ]
    before = (results / "tiny" / "baseline.json").read_bytes()
    for extra, message in cases:
        proc = run_main("check", "--suite", suite, "--results", results, *extra)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, \
            (extra, proc.stderr)
    assert (results / "tiny" / "baseline.json").read_bytes() == before  # nothing half-written


@pytest.mark.slow  # three runs of the tiny suite: twice with other kernels, and on 3 threads
def test_check_across_machines_with_a_measured_variation(tmp_path, tiny_run):
    """The baseline (1 thread) measures its variation with other kernels (`--variation auto`: two re-runs, each in
    a fresh process); a re-run on 3 threads is another machine: it passes, the check prints what it can catch, and
    a drop larger than that fails."""
    results = tmp_path / "results"
    tiny_run.copy_to(results / "tiny")
    suite = tiny_run.suite
    made = run_main("check", "--suite", suite, "--results", results, "--update-baseline", "--variation", "auto",
                    "--workers", "1", "--cache-dir", tmp_path / "cache")
    assert made.returncode == 0, made.stdout + made.stderr
    baseline = json.loads((results / "tiny" / "baseline.json").read_text())
    reruns = baseline["variation"]["reruns"]
    jobs = len(tiny_run.records())
    assert len(reruns) == 2 and {r["jobs"] for r in reruns} == {baseline["variation"]["of"]} == {jobs}
    assert all(r["differs_by"] for r in reruns)  # other machines: other kernels (or threads, on other CPUs)
    for rerun in (results / "tiny" / "variation").iterdir():  # their records only: nobody reads their reports
        assert (rerun / "records").is_dir() and not (rerun / "leaderboard.md").exists()
    assert "what a check on another machine can catch" in made.stdout
    three = tmp_path / "three-threads"
    proc = run_main("run", "--suite", suite, "--workers", "1", "--quiet", "--out", three, "--cpus-per-job", "3",
                    "--cache-dir", tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    ok = run_main("check", "--suite", suite, "--results", results, "--out", three, "--detectable")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "tolerances from the variation measured in the baseline" in ok.stdout and "same machine" not in ok.stdout
    # the metric the gate detects best, lowered by more than its smallest detectable drop on every seed
    row = baseline["rows"][next(k for k in baseline["rows"] if k.endswith("| kd"))]
    metric, det = min(row["detectable"].items(), key=lambda kv: kv[1])
    _edit(three, "kd", (1, 2), lambda d: d["metrics"].update({metric: d["metrics"][metric] - det - 0.01}))
    bad = run_main("check", "--suite", suite, "--results", results, "--out", three)
    assert bad.returncode == 1 and f"kd: {metric} (seed 1,2)" in bad.stderr, bad.stdout + bad.stderr
