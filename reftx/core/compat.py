"""Import aliases for the modules that moved when ``reftx/`` became one folder per layer (0.2).

``import reftx.model`` (or ``from reftx.hooks import HookManager``) still works for one release: it
returns the module at its new home (``reftx.engine.model``), the same object, with a
``DeprecationWarning`` naming the new path. Old names that are now packages (``reftx.config``,
``reftx.data``, ``reftx.parts``, ``reftx.train``, ``reftx.cli``, ``reftx.recipes``) forward their old
attributes from the package itself (:func:`forward`).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

# old module -> new module (reftx.X -> reftx.Y)
MOVED = {
    "errors": "core.errors", "registry": "core.registry", "plugins": "core.plugins",
    "intervention": "core.intervention", "version": "core.version",
    "experiment": "config.schema", "hub": "models.loading", "share": "models.hub",
    "sites": "engine.sites", "schedule": "engine.schedule", "positions": "engine.positions",
    "generation": "engine.generation", "hooks": "engine.hooks", "model": "engine.model",
    "basis_gates": "parts.basis_gates", "input_gates": "parts.input_gates",
    "norm_bounds": "parts.norm_bounds", "slot_bank": "parts.slot_bank",
    "prefix": "data.label_truncation",
    "task": "eval.task", "evaluate": "eval.generate", "scoring": "eval.scoring", "metrics": "eval.metrics",
    "classify": "eval.classify",
    "loss": "train.loss", "loop": "train.loop", "checkpoints": "train.checkpoints", "tracking": "train.trackers",
    "objectives": "train.objectives.common", "reinforce": "train.objectives.grpo",
    "carft": "train.objectives.carft", "nlft": "train.objectives.nlft",
    "lora": "integrations.peft", "trainers": "integrations.trl", "lm_eval_adapter": "recipes.lm_eval",
    "rundir": "runs.folder", "plots": "runs.plots", "plantable": "engine.plan_table",
    "runner": "recipes.train", "editing": "recipes.edit.engine", "edit_run": "recipes.edit.run",
    "docgen": "cli.docgen",
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old path works until reftx 0.3", DeprecationWarning, stacklevel=3)


class _Aliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``reftx.<old>`` and hands back ``reftx.<new>`` (the import system returns whatever
    ``sys.modules`` holds under the name once the loader has run)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname.startswith("reftx.") and fullname[6:] in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        new = "reftx." + MOVED[module.__name__[6:]]
        _warn(module.__name__, new)
        sys.modules[module.__name__] = importlib.import_module(new)


def install() -> None:
    if not any(isinstance(f, _Aliases) for f in sys.meta_path):
        sys.meta_path.append(_Aliases())


def forward(package: str, homes: tuple[str, ...]) -> Any:
    """A module ``__getattr__`` for a package that replaced a module of the same name: an old
    attribute is looked up in ``homes`` (new modules, in order) with a DeprecationWarning."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        for home in homes:
            mod = importlib.import_module(home)
            if hasattr(mod, name):
                _warn(f"{package}.{name}", f"{home}.{name}")
                return getattr(mod, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
