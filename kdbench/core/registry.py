"""One tiny name -> entry registry, shared by datasets, models, methods, attacks and corruptions.

Each family owns a `Registry(kind)`; a module registers its entries with the decorator and the family's
package imports its modules explicitly, so registration never depends on a stray import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import choices_error

T = TypeVar("T")

_REGISTRIES: dict[str, "Registry"] = {}  # kind -> its registry, every one made in this process


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    summary: str


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
        if name in self._entries:
            raise RuntimeError(f"{self.kind} {name!r} is registered twice")
        if not summary and isinstance(getattr(obj, "summary", None), str):
            summary = obj.summary
        if not summary:
            doc = getattr(obj, "__doc__", None) or ""
            summary = doc.strip().splitlines()[0] if doc.strip() else ""
        self._entries[name] = Entry(name, obj, summary)

    def get(self, name: str) -> T:
        try:
            return self._entries[name].obj
        except (KeyError, TypeError):
            raise choices_error(self.kind, name, self._entries) from None

    def check(self, name: Any) -> str:
        """Return `name` if registered, else raise the one-line 'unknown X' error."""
        self.get(name)
        return name

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def portable_entries() -> list[tuple[str, bytes]]:
    """Every registered entry that pickles (by reference: its module must be importable), as (kind, pickle).
    Worker processes `adopt_entries` them, so a method, model, ... that a script or a test registered at run
    time exists there too; kdbench's own entries are there already and are skipped."""
    import pickle

    found = []
    for kind, reg in _REGISTRIES.items():
        for entry in reg.entries():
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
