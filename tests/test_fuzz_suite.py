"""Property-based: random and near-valid suite documents either load or fail with the one-line error (exit 2),
never a traceback, never a results folder."""

import copy
import tomllib

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import TINY_SUITE
from kdbench.core.errors import KdbenchError
from kdbench.suite.load import load_suite, parse_suite

VALID = tomllib.loads(TINY_SUITE)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)


def _paths(doc, prefix=()):
    """Every (path) to a value in the nested dict/list document."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


@st.composite
def near_valid(draw):
    """The valid tiny suite with 1-3 mutations: a value replaced, a key deleted, or an unknown key added."""
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
    return doc


def _must_load_or_fail_cleanly(doc):
    try:
        suite = parse_suite(doc)
    except KdbenchError as e:
        msg = str(e)
        assert msg and "\n" not in msg
        return None
    assert suite.jobs()  # a suite that loads expands to a job grid
    return suite


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid())
def test_near_valid_documents(doc):
    _must_load_or_fail_cleanly(doc)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=10), values, max_size=6))
def test_random_documents(doc):
    _must_load_or_fail_cleanly(doc)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_random_text_files(tmp_path, text):
    path = tmp_path / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_suite(str(path))
    except KdbenchError as e:
        assert "\n" not in str(e)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(near_valid())
def test_cli_never_tracebacks_and_writes_nothing_on_bad_input(tmp_path, monkeypatch, capsys, doc):
    """Through the CLI (training replaced by a stub): exit 0 for a valid suite, else 2 with one line."""
    import tomllib as _t  # noqa: F401

    import kdbench.execution.driver as runner
    from kdbench.__main__ import main

    def stub(suite, out, device, **kw):
        out.mkdir(parents=True, exist_ok=True)
        return runner.RunResult(len(suite.jobs()), 0, 0)

    monkeypatch.setattr(runner, "run_suite", stub)
    monkeypatch.setattr("kdbench.reporting.report.write_reports", lambda *a, **k: {"summary": __import__("pandas").DataFrame()})
    path = tmp_path / "s.toml"
    try:
        path.write_text(_dump_toml(doc), encoding="utf-8")
    except ValueError:
        assume(False)  # not representable in TOML (None values): draw another document
    out = tmp_path / "out-fuzz"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    rc = main(["run", "--suite", str(path), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    if rc == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
        assert not out.exists()
    else:
        assert rc == 0


def _dump_toml(doc) -> str:
    """A minimal TOML writer for the fuzzed documents (tables, arrays of tables, scalars, arrays)."""
    import json
    import math

    def val(v):
        if v is None:
            raise ValueError("TOML has no null")
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items()) + "}"
        raise ValueError(type(v))

    lines = [f"{json.dumps(k)} = {val(v)}" for k, v in doc.items()]
    return "\n".join(lines) + "\n"
