"""The package's shape: folders are the pipeline's stages, and data flows down them.

Every module of kdbench/ lives in a stage folder (the package's own __init__ and __main__ aside). An import goes
to the same stage or an earlier one, never a later one, and no chain of imports (those inside functions too)
comes back to where it started. No module is longer than MAX_LINES. The package's face, kdbench/__init__.py, is
its public surface: it comes after every stage (it imports the public names from them, and the Python API of
`api/`), and no module of kdbench imports it.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kdbench"
# the pipeline, from what everything shares to what the user types
STAGES = ["core", "data", "models", "methods", "training", "evaluation", "records", "stats", "suite", "execution",
          "reporting", "cli", "api"]
TOP = ("", "__main__")  # kdbench/__init__.py (the public face) and kdbench/__main__.py (python -m kdbench)
MAX_LINES = 400


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return found


def _imports(name: str, path: Path, is_pkg: bool, modules) -> set[str]:
    """The kdbench modules `name` imports (a `from package import module` counts as the module)."""
    package = (name.split(".") if is_pkg else name.split(".")[:-1]) if name else []
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "kdbench" or node.module.startswith("kdbench.")):
                target = node.module[len("kdbench."):] if node.module != "kdbench" else ""
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                out.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            out.update(a.name[len("kdbench."):] for a in node.names if a.name.startswith("kdbench."))
    return {m for m in out if m in modules and m != name}


def _graph():
    modules = _modules()
    return modules, {name: _imports(name, path, is_pkg, modules) for name, (path, is_pkg) in modules.items()}


def _stage(name: str) -> int:
    """Position in the pipeline: the face (kdbench/__init__.py) and __main__ come after every stage."""
    if name in TOP:
        return len(STAGES)
    return STAGES.index(name.split(".")[0])


def test_every_module_is_in_a_stage_folder():
    modules, _ = _graph()
    stray = sorted(m for m in modules if m not in TOP and m.split(".")[0] not in STAGES)
    assert not stray, f"modules outside the stage folders {STAGES}: {stray}"
    flat = sorted(m for m, (_, is_pkg) in modules.items() if "." not in m and m not in TOP and not is_pkg)
    assert not flat, f"modules at the top of the package: {flat}"


def test_no_import_goes_against_the_stage_order():
    _, graph = _graph()
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if a.split(".")[0] in STAGES + list(TOP) and _stage(b) > _stage(a))
    assert not upward, "imports of a later stage:\n" + "\n".join(upward)


def test_nothing_imports_the_face():
    """Plugins import the face (`from kdbench import ...`); kdbench's own modules never do, so the face can import
    every stage without a circle, and a plugin imported after it finds it complete."""
    _, graph = _graph()
    users = sorted(a for a, targets in graph.items() if "" in targets)
    assert not users, f"modules importing kdbench/__init__.py: {users}"
    assert {"methods.base", "api.python_api", "api.register", "core.registry"} <= graph[""]


def test_no_import_circles():
    _, graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_module_is_longer_than_the_limit():
    modules, _ = _graph()
    long = {m: n for m, (p, _) in modules.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The graph is built from the code: a planted circle and a planted upward import are found."""
    import shutil

    copy = tmp_path / "kdbench"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "core" / "errors.py").write_text((copy / "core" / "errors.py").read_text()
                                              + "\nfrom ..reporting import report  # noqa\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", copy)
    _, graph = _graph()
    assert "reporting.report" in graph["core.errors"]
    for check in (test_no_import_goes_against_the_stage_order, test_no_import_circles):
        try:
            check()
        except AssertionError as e:
            assert "core.errors" in str(e)
        else:
            raise AssertionError(f"{check.__name__} missed the planted import")
