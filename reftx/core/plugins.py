"""The one place that loads registrations: the shipped zoo, installed plugins and user modules.

Registries (primitives, tasks, objectives, metrics, ...) are filled by importing the modules that
define them. The core never imports the zoo; instead every registry lookup first calls
:func:`load` (once per process), which imports

1. the shipped zoo: ``reftx.methods`` and ``reftx.tasks`` (one file per primitive / task);
2. every installed plugin: the Python entry points of the group ``reftx.plugins``. Each entry point
   names a module (``my_variant = "my_pkg.variant"``), imported for its registrations, or a
   callable (``"my_pkg:register"``), called with no argument.

and :func:`import_modules` imports the modules an experiment names under ``imports:`` (or the CLI
under ``--import``), so a variant in the user's own file runs from YAML without packaging it.
A saved ``reft_config.json`` records the module of every primitive it uses, so
``ReftModel.from_pretrained`` imports it in a fresh process (:func:`ensure_kind`).

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."reftx.plugins"]
    my_variant = "my_pkg.variant"
"""
from __future__ import annotations

import importlib
import sys
from importlib.metadata import EntryPoint, entry_points

from reftx.core.errors import ConfigError, ReftError

GROUP = "reftx.plugins"
ZOO = ("reftx.methods", "reftx.tasks")
_loaded = False
_loading = False


def load() -> None:
    """Import the shipped zoo and every installed ``reftx.plugins`` entry point (once)."""
    global _loaded, _loading
    if _loaded or _loading:
        return
    _loading = True
    try:
        for name in ZOO:
            importlib.import_module(name)
        for ep in entry_points(group=GROUP):
            _load_plugin(ep)
        _loaded = True
    finally:
        _loading = False


def _load_plugin(ep: EntryPoint) -> None:
    """Import one entry point (and call it when it names a callable). Any exception it raises, a
    bare KeyError as much as an ImportError, becomes a ReftError naming the entry point, the
    distribution that declares it and the fix: a broken plugin must not end in a traceback that
    never says which installed package caused it."""
    step = "importing"
    try:
        obj = ep.load()
        if callable(obj) and not isinstance(obj, type(sys)):
            step = "calling"
            obj()
    except Exception as e:
        dist = getattr(ep, "dist", None)
        name = getattr(dist, "name", None)
        where = f"distribution {name} {getattr(dist, 'version', '')}".rstrip() if name else "an unknown distribution"
        fix = f"pip uninstall {name}" if name else "uninstall the package that declares it"
        raise ReftError(f"plugin entry point {ep.name} = {ep.value} (group {GROUP}, {where}) failed when {step} it: "
                        f"{type(e).__name__}: {_line(e)}; fix the plugin or remove it ({fix})") from e


def _line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or ["(no message)"])[0]


def import_modules(names: list[str] | tuple[str, ...], field: str = "imports") -> None:
    """Import user modules for their registrations (``imports:`` in YAML, ``--import`` on the CLI).
    A module may be a dotted name on ``sys.path`` or a path to a ``.py`` file."""
    load()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{field}.{i}", f"expected a module name such as my_pkg.my_variant, got {name!r}")
        try:
            if name.endswith(".py"):
                _import_file(name)
            else:
                importlib.import_module(name)
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"{field}.{i}", f"cannot import {name!r}: {type(e).__name__}: {e}") from e


def _import_file(path: str) -> None:
    from importlib.util import module_from_spec, spec_from_file_location
    from pathlib import Path

    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist")
    name = f"reftx_user_{p.stem}"
    if name in sys.modules:
        return
    spec = spec_from_file_location(name, p)
    module = module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def ensure_kind(registry: object, kind: str, module: str | None) -> None:
    """Before looking ``kind`` up: load the plugins, and import ``module`` (recorded when the
    primitive was saved) if the kind is still unknown."""
    load()
    if module and kind not in registry:  # type: ignore[operator]
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # the lookup's own error (with did-you-mean) follows


__all__ = ["GROUP", "ensure_kind", "import_modules", "load"]
