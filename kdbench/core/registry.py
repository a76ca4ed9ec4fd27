"""One tiny name -> entry registry, shared by datasets, models, methods, attacks and corruptions.

Each family owns a `Registry(kind)`; a module registers its entries with the decorator and the family's
package imports its modules explicitly, so registration never depends on a stray import.

Every entry knows where it comes from, its `Origin`:
- `built-in`: kdbench's own, everything registered while the package `kdbench` is imported (its face imports
  every family, then calls `seal_builtins`);
- a plugin (`file`, `module` or `package`, with its content hash): registered while core/plugins.py imports it;
- `script`: registered later by code of this process that is not a plugin (a notebook, a test).
A plugin's origin enters the config, so the id, of every job that uses one of its entries (`plugin_ids`): editing
the plugin re-runs exactly its jobs. Registering a name twice is one error naming both origins.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from .errors import KdbenchError, choices_error

T = TypeVar("T")

_REGISTRIES: dict[str, "Registry"] = {}  # kind -> its registry, every one made in this process

BUILTIN, SCRIPT = "built-in", "script"
PLUGIN_KINDS = ("file", "module", "package")


@dataclass(frozen=True)
class Origin:
    """Where a registry entry comes from (see the module docstring)."""

    kind: str  # BUILTIN, SCRIPT or one of PLUGIN_KINDS
    name: str = ""  # a plugin file's name, a module's or a package's (SCRIPT: the module that registered it)
    version: str = ""  # a package's version
    sha256: str = ""  # a file's SHA-256; a module's or package's: of its source files (plugins.source_sha256)
    path: str = ""  # where the plugin was loaded from: a location, never part of an identity
    module: str = ""  # a module or package plugin: the module imported (an entry point's)

    @property
    def is_plugin(self) -> bool:
        return self.kind in PLUGIN_KINDS

    def describe(self) -> str:
        """The origin in a sentence: `plugin file /x/my_kd.py (sha256 1a2b3c4d5e6f)`, `built-in kdbench`."""
        if self.kind == BUILTIN:
            return "built-in kdbench"
        if self.kind == SCRIPT:
            return f"{self.name or 'code of this process'} (registered at run time)"
        what = {"file": f"plugin file {self.path or self.name}", "module": f"plugin module {self.name}",
                "package": f"plugin package {self.name} {self.version}"}[self.kind]
        return f"{what} (sha256 {self.sha256[:12]})"

    def short(self) -> str:
        """The origin in a few words, for `kdbench list`."""
        if self.kind == "file":
            return f"file {self.name} {self.sha256[:8]}"
        if self.kind == "package":
            return f"package {self.name} {self.version}"
        return {"module": f"module {self.name}", SCRIPT: f"script {self.name}"}.get(self.kind, self.kind)

    def identity(self) -> dict | None:
        """What the config of a job using an entry of this origin carries (None: kdbench's own, or this process's).
        A file is identified by its content alone (identity.content_only drops its name); a package by its
        name, version and the hash of its source files."""
        if self.kind == "file":
            return {"file": self.name, "sha256": self.sha256}
        if self.kind == "module":
            return {"module": self.name, "sha256": self.sha256}
        if self.kind == "package":
            return {"package": self.name, "version": self.version, "sha256": self.sha256}
        return None


BUILTIN_ORIGIN = Origin(BUILTIN)
_STATE: dict = {"sealed": False, "loading": None}  # loading: the Origin of the plugin being imported


def seal_builtins() -> None:
    """kdbench's own entries are all registered: what registers from now on is a plugin's or a script's."""
    _STATE["sealed"] = True


@contextlib.contextmanager
def registering_as(origin: Origin):
    """Entries registered inside the block come from `origin` (the plugin being imported)."""
    before = _STATE["loading"]
    _STATE["loading"] = origin
    try:
        yield
    finally:
        _STATE["loading"] = before


def _module_of(obj: Any) -> str:
    """The module that defined `obj` (a class, a function, or a dataclass of them: its first own callable)."""
    for candidate in [obj, *getattr(obj, "__dict__", {}).values()]:
        if inspect.isclass(candidate) or inspect.isfunction(candidate):
            return candidate.__module__
    return type(obj).__module__


def _origin_of(obj: Any) -> Origin:
    if _STATE["loading"] is not None:
        return _STATE["loading"]
    return Origin(SCRIPT, _module_of(obj)) if _STATE["sealed"] else BUILTIN_ORIGIN


class DuplicateEntry(KdbenchError):
    """A name registered twice (the message names both origins)."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    summary: str
    origin: Origin = BUILTIN_ORIGIN


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        _REGISTRIES[kind] = self

    def register(self, name: str, summary: str = "") -> Callable[[T], T]:
        """Decorator: `@MODELS.register("cnn-small", "...")`. Registering a name twice is an error."""

        def add(obj: T) -> T:
            self.add(name, obj, summary)
            return obj

        return add

    def add(self, name: str, obj: T, summary: str = "") -> None:
        origin = _origin_of(obj)
        if name in self._entries:
            raise DuplicateEntry(f"{self.kind} {name!r} is registered twice: by {self._entries[name].origin.describe()}"
                                 f" and by {origin.describe()}")
        if not summary and isinstance(getattr(obj, "summary", None), str):
            summary = obj.summary
        if not summary:
            doc = getattr(obj, "__doc__", None) or ""
            summary = doc.strip().splitlines()[0] if doc.strip() else ""
        self._entries[name] = Entry(name, obj, summary, origin)

    def get(self, name: str) -> T:
        try:
            return self._entries[name].obj
        except (KeyError, TypeError):
            raise choices_error(self.kind, name, self._entries) from None

    def check(self, name: Any) -> str:
        """Return `name` if registered, else raise the one-line 'unknown X' error."""
        self.get(name)
        return name

    def origin(self, name: str) -> Origin:
        """Where the entry `name` comes from (BUILTIN_ORIGIN for a name not registered here)."""
        entry = self._entries.get(name) if isinstance(name, str) else None
        return entry.origin if entry is not None else BUILTIN_ORIGIN

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def plugin_ids(uses: Iterable[tuple[Registry, Any]]) -> list[dict]:
    """The identities (`Origin.identity`) of the plugins behind the entries `uses` = (registry, name) pairs,
    each once, sorted: what a job's or a teacher's config carries (empty when all are kdbench's own)."""
    found = {}
    for registry, name in uses:
        ident = registry.origin(name).identity()
        if ident is not None:
            found[json.dumps(ident, sort_keys=True)] = ident
    return [found[k] for k in sorted(found)]


def plugin_origins(uses: Iterable[tuple[Registry, Any]]) -> list[Origin]:
    """The plugin Origins behind the entries `uses`, each once, in a stable order (a record's `plugins`)."""
    found = {registry.origin(name) for registry, name in uses}
    return sorted((o for o in found if o.is_plugin), key=lambda o: (o.kind, o.name, o.sha256))


def snapshot() -> dict[str, dict]:
    """Every registry's entries now (`restore` puts them back: a plugin that fails half-way leaves nothing)."""
    return {kind: dict(reg._entries) for kind, reg in _REGISTRIES.items()}


def restore(saved: dict[str, dict]) -> None:
    for kind, reg in _REGISTRIES.items():
        reg._entries.clear()
        reg._entries.update(saved.get(kind, {}))


def forget(origin: Origin) -> None:
    """Remove every entry of `origin` (a plugin replaced by a new version of itself)."""
    for reg in _REGISTRIES.values():
        for name in [n for n, e in reg._entries.items() if e.origin == origin]:
            del reg._entries[name]


def portable_entries() -> list[tuple[str, bytes]]:
    """Every entry registered at run time that pickles (by reference: its module must be importable), as (kind,
    pickle). Worker processes `adopt_entries` them, so a method, model, ... that a script or a test registered
    at run time exists there too; kdbench's own entries are there already, and a worker imports the plugins
    itself (plugins.plugin_sources), so both are skipped."""
    import pickle

    found = []
    for kind, reg in _REGISTRIES.items():
        for entry in reg.entries():
            if entry.origin.kind != SCRIPT:
                continue
            try:
                found.append((kind, pickle.dumps(entry)))
            except Exception:  # noqa: BLE001, S112 - a lambda or local class: that entry stays in this process
                continue
    return found


def adopt_entries(entries: list[tuple[str, bytes]]) -> None:
    """Add the entries of `portable_entries` (from another process) that this process lacks."""
    import pickle

    for kind, blob in entries:
        reg = _REGISTRIES.get(kind)
        if reg is None:
            continue
        try:
            entry = pickle.loads(blob)
        except Exception:  # noqa: BLE001, S112 - its module does not import here: jobs using it fail by name
            continue
        if entry.name not in reg:
            reg._entries[entry.name] = entry
