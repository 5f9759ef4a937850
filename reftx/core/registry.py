"""A small generic registry: one decorator to add, helpful errors to look up; lookups load plugins."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from reftx.core.errors import ConfigError, unknown

T = TypeVar("T")


def _load_plugins() -> None:
    """Registries are filled by importing modules: the shipped zoo and installed plugins are
    loaded (once) by reftx.core.plugins before any lookup, so the core never imports the zoo."""
    from reftx.core.plugins import load

    load()


def origin(obj: object) -> tuple[str, str] | None:
    """Where ``obj`` was defined: ``(module, qualname)`` of a class or function, else of the function
    an instance wraps (a metric's ``compute``, a recipe's ``run``); a primitive: the module that
    registered it (its instance ``__module__``) and its kind."""
    own = getattr(obj, "__dict__", {})
    if not hasattr(obj, "__qualname__") and isinstance(own.get("__module__"), str):
        return own["__module__"], str(own.get("kind", ""))
    if not hasattr(obj, "__qualname__"):
        obj = next((getattr(obj, a) for a in ("compute", "run") if callable(getattr(obj, a, None))), None)
    if obj is None or not hasattr(obj, "__qualname__"):
        return None
    return getattr(obj, "__module__", None) or "", obj.__qualname__


class Registry(Generic[T]):
    """Maps names to objects; unknown names get a did-you-mean.

    Registering a taken name again from the same definition (same module and qualified name: a
    re-run notebook cell, a reloaded module) replaces the entry quietly; a different definition
    under a taken name is an error unless ``replace=True`` is passed."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}
        self._hidden: set[str] = set()

    def register(self, name: str, replace: bool = False) -> Callable[[T], T]:
        if not name or not name.replace("_", "").isalnum() or name.lower() != name:
            raise ValueError(f"{self.what} names are lowercase identifiers, got {name!r}")

        def add(obj: T) -> T:
            old = self._items.get(name)
            if old is not None and old is not obj and not replace and (origin(old) is None or origin(old) != origin(obj)):
                where = f" (from {origin(old)[0]})" if origin(old) else ""
                raise ValueError(f"{self.what} {name!r} is already registered by {old!r}{where}; choose another "
                                 f"name, or pass replace=True to replace it")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str, field: str = "kind") -> T:
        _load_plugins()
        if not isinstance(name, str):  # from YAML: a list or mapping where a name goes
            got = f"{type(name).__name__} {name!r}"[:200]
            raise ConfigError(field, f"expected a string naming the {self.what}, got {got}")
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
