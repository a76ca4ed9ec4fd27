"""Plugins: a user's methods, architectures, datasets, attacks, corruptions and teacher kinds, registered by their
own code with the public calls of the package `kdbench` (docs/plugins.md), without forking kdbench.

A plugin is one of:
- a Python file (`plugins = ["my_kd.py"]` in a suite file, relative to it; `kdbench run --plugin my_kd.py`): its
  bytes are read once, hashed (SHA-256) and run as the module `kdbench_plugin_<stem>_<first 12 hex digits>`;
- an importable module (`"mypkg.kd_losses"`): imported by name, identified by the hash of its source files (every
  .py file of its top-level package), and by its distribution's name and version when an installed package
  provides it;
- an installed package that declares the entry-point group `kdbench.plugins`: imported when kdbench starts
  (`load_installed`, called by the command line and the Python API, never while `kdbench` itself is imported).

A plugin runs its code, as any Python file does. Loading one is atomic: a plugin that does not import, raises
while registering or registers a name that is taken leaves every registry as it was, and is one error naming the
plugin and the cause. A plugin loaded again with the same content is not run twice; a file whose content changed
replaces its old version's entries (a notebook that edits its plugin).

Workers import the plugins of the process that runs the suite (`plugin_sources` -> `import_sources`): a worker
process of this machine gets each file's bytes, a Ray worker gets the files through Ray's runtime environment.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

from .errors import KdbenchError
from .registry import Origin, forget, registering_as, restore, snapshot

ENTRY_POINT_GROUP = "kdbench.plugins"
MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class Plugin:
    origin: Origin
    module: str  # the name it is imported as (sys.modules)
    key: str  # what names it in this process: a file's resolved path, or the module's name
    attr: str = ""  # an entry point's callable, called once after the import ("" for none)
    code: bytes = b""  # a file's bytes, as they were hashed and run


_LOADED: dict[str, Plugin] = {}  # key -> plugin, in the order they were loaded


def loaded() -> list[Plugin]:
    """The plugins imported in this process, in order."""
    return list(_LOADED.values())


def _first_line(e: BaseException) -> str:
    """The first line of `e`, after its type (kdbench's own errors speak for themselves)."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return line if isinstance(e, KdbenchError) else f"{type(e).__name__}: {line}".rstrip(": ")


def source_sha256(root: Path) -> str:
    """SHA-256 over a module's source: the file itself, or every .py file under a package folder (relative path
    and bytes, in sorted order; caches left out)."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(root.parent if root.is_file() else root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def load_plugin(spec: str, base_dir: Path | None = None) -> Plugin:
    """Import the plugin `spec`: a .py file (relative to `base_dir`, else the working folder) or a module name."""
    if not isinstance(spec, str) or not spec.strip():
        raise KdbenchError(f"a plugin is a .py file or an importable module name, got {spec!r}")
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = Path(spec).expanduser()
        return load_file((path if path.is_absolute() else Path(base_dir or Path.cwd()) / path).resolve(), spec)
    if not MODULE_NAME.match(spec):
        raise KdbenchError(f"plugin {spec!r} is neither a .py file nor a module name (letters, digits, '_', '.')")
    return load_module(spec)


def load_file(path: Path, label: str | None = None) -> Plugin:
    """Import the plugin file `path` (see the module docstring)."""
    label = label or str(path)
    try:
        code = Path(path).read_bytes()
    except FileNotFoundError:
        raise KdbenchError(f"plugin file {label!r} does not exist ({str(path)!r})") from None
    except OSError as e:
        raise KdbenchError(f"plugin file {label!r} cannot be read: {e.strerror or e}") from None
    return _run_file(str(path), code, label)


def _run_file(path: str, code: bytes, label: str) -> Plugin:
    sha = hashlib.sha256(code).hexdigest()
    old = _LOADED.get(path)
    if old is not None and old.origin.sha256 == sha:
        return old
    stem = re.sub(r"\W", "_", Path(path).stem)
    name = f"kdbench_plugin_{stem}_{sha[:12]}"
    plugin = Plugin(Origin("file", Path(path).name, sha256=sha, path=path), name, path, code=code)

    def run():
        module = types.ModuleType(name)
        module.__file__ = path
        sys.modules[name] = module
        exec(compile(code, path, "exec"), module.__dict__)  # noqa: S102 - a plugin runs its code (module docstring)

    return _atomic(plugin, old, run, f"plugin file {label!r}")


def _atomic(plugin: Plugin, old: Plugin | None, run, what: str) -> Plugin:
    """Run `run` (the plugin's import) with its origin; on any error, every registry and sys.modules as before."""
    saved, modules = snapshot(), set(sys.modules)
    if old is not None:
        forget(old.origin)
    try:
        with registering_as(plugin.origin):
            run()
    except Exception as e:  # noqa: BLE001 - whatever the plugin raised, one line naming it
        restore(saved)
        top = plugin.module.split(".")[0]
        for name in set(sys.modules) - modules:  # its own modules only (a library it imported may not load twice)
            if name == top or name.startswith(top + "."):
                sys.modules.pop(name, None)
        raise KdbenchError(f"{what} cannot be loaded: {_first_line(e)}") from None
    if old is not None:
        sys.modules.pop(old.module, None)
        _LOADED.pop(old.key)
    _LOADED[plugin.key] = plugin
    return plugin


def _module_root(name: str) -> Path | None:
    """The source of `name`'s top-level package: its folder, or the file of a top-level module."""
    try:
        spec = importlib.util.find_spec(name.split(".")[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None


def _module_origin(name: str, dist=None) -> Origin:
    """A module plugin's origin: its distribution (name, version) when an installed package provides it."""
    import importlib.metadata as md

    root = _module_root(name)
    sha = source_sha256(root) if root is not None else ""
    if dist is None:
        names = md.packages_distributions().get(name.split(".")[0], [])
        dist = md.distribution(names[0]) if names else None
    path = str(root) if root is not None else ""
    if dist is not None:
        return Origin("package", dist.metadata["Name"], dist.version, sha, path, name)
    return Origin("module", name, sha256=sha, path=path, module=name)


def load_module(name: str, attr: str = "", dist=None) -> Plugin:
    """Import the module plugin `name` (and call its `attr`, an entry point's callable)."""
    if name in _LOADED:
        return _LOADED[name]
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError) as e:
        raise KdbenchError(f"plugin module {name!r} cannot be found: {_first_line(e)}") from None
    if found is None:
        raise KdbenchError(f"plugin module {name!r} is not importable: no such module on the Python path")
    plugin = Plugin(_module_origin(name, dist), name, name, attr)
    return _atomic(plugin, None, lambda: _import(name, attr), f"plugin module {name!r}")


def _import(name: str, attr: str) -> None:
    module = importlib.import_module(name)
    if attr:
        getattr(module, attr)()


def load_installed() -> list[Plugin]:
    """Import every installed package's `kdbench.plugins` entry point not imported yet (pytest's and timm's
    mechanism): `pip install my-kd-method` makes its entries appear in `kdbench list`."""
    import importlib.metadata as md

    found = []
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        if ep.module not in _LOADED:
            found.append(load_module(ep.module, ep.attr or "", ep.dist))
    return found


def load_all(specs, base_dir: Path | None = None) -> list[Plugin]:
    """The installed plugins, then each of `specs` (files or modules)."""
    return [*load_installed(), *(load_plugin(s, base_dir) for s in specs)]


# ---- workers ----------------------------------------------------------------------------------------------


def plugin_sources(with_code: bool = True) -> list[dict]:
    """What a worker needs to import this process's plugins (`import_sources`), in load order: a file's bytes
    (`with_code`; else the worker finds the file `<module>.py` on its path, shipped by Ray), a module's name."""
    return [{"kind": p.origin.kind, "key": p.key, "module": p.module, "attr": p.attr, "origin": p.origin,
             "code": p.code if with_code else None} for p in _LOADED.values()]


def import_sources(sources: list[dict]) -> None:
    """In a worker: import the plugins `plugin_sources` lists, unless this process has them already (forked)."""
    for s in sources:
        have = _LOADED.get(s["key"])
        if have is not None and have.origin == s["origin"]:
            continue
        if s["kind"] != "file":
            plugin = Plugin(s["origin"], s["module"], s["key"], s["attr"])
            _atomic(plugin, None, lambda: _import(s["module"], s["attr"]), f"plugin module {s['module']!r}")
            continue
        code = s["code"]
        if code is None:  # shipped by Ray's runtime environment (on this worker's path), else where it was loaded
            found = importlib.util.find_spec(s["module"])
            where = Path(found.origin) if found is not None and found.origin else Path(s["key"])
            if not where.is_file():
                raise KdbenchError(f"plugin file {s['origin'].name!r} did not reach this worker (start Ray with the "
                                   "run, or with runtime_env py_modules holding it)")
            code = where.read_bytes()
        if hashlib.sha256(code).hexdigest() != s["origin"].sha256:
            raise KdbenchError(f"plugin file {s['origin'].name!r} reached this worker changed (its SHA-256 differs)")
        plugin = _run_file(s["key"], code, s["origin"].name)
        if plugin.module != s["module"]:
            raise KdbenchError(f"plugin file {s['origin'].name!r} was imported as {plugin.module}, not {s['module']}")
