"""A small generic registry: one decorator to add, helpful errors to look up; lookups load plugins."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from reftx.core.errors import unknown

T = TypeVar("T")


def _load_plugins() -> None:
    """Registries are filled by importing modules: the shipped zoo and installed plugins are
    loaded (once) by reftx.core.plugins before any lookup, so the core never imports the zoo."""
    from reftx.core.plugins import load

    load()


class Registry(Generic[T]):
    """Maps names to objects. Duplicate names are an error; unknown names get a did-you-mean."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}
        self._hidden: set[str] = set()

    def register(self, name: str) -> Callable[[T], T]:
        if not name or not name.replace("_", "").isalnum() or name.lower() != name:
            raise ValueError(f"{self.what} names are lowercase identifiers, got {name!r}")

        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.what} {name!r} is already registered by {self._items[name]!r}")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str, field: str = "kind") -> T:
        _load_plugins()
        try:
            return self._items[name]
        except KeyError:
            raise unknown(field, name, self.names(), self.what) from None

    def names(self) -> list[str]:
        """Every listed name (``hidden`` entries are engine details: gettable, not listed)."""
        _load_plugins()
        return sorted(n for n in self._items if n not in self._hidden)

    def hide(self, name: str) -> None:
        """Keep ``name`` out of listings (``reftx ls``, did-you-mean, docs); it still resolves."""
        self._hidden.add(name)

    def __contains__(self, name: object) -> bool:
        _load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
