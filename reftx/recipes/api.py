"""``reftx.run``: an experiment from Python, exactly as ``reftx run`` runs it.

    import reftx
    res = reftx.run("experiments/quickstart.yaml", seed=1, **{"train.lr": 3e-3})
    res["metrics"], res["run_dir"]

The same validation, run folder, resume and results as the command line; nothing is printed that
the command would not print.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from reftx.core.errors import ConfigError


def _override(key: str, value: Any) -> str:
    """``key=value`` as the command line spells it (the value as YAML flow text)."""
    if not key or " " in key or "=" in key:
        raise ConfigError(key, "an override key is a dotted path such as train.lr (pass it as **{'train.lr': 1e-3})")
    return f"{key}={json.dumps(value, ensure_ascii=False, default=str)}"


def load(experiment: str | Path | dict[str, Any], *overrides: str, **values: Any) -> Any:
    """The validated ``Experiment`` of a YAML path or a config dict, with ``overrides`` as dotted
    ``key=value`` strings and ``values`` as dotted keys (``seed=1``, ``**{"train.lr": 1e-3}``)."""
    from reftx.config.schema import Experiment, load_experiment, migrate
    from reftx.core.convert import apply_overrides, from_dict

    spelled = [*overrides, *(_override(k, v) for k, v in values.items())]
    if isinstance(experiment, dict):
        data = migrate(apply_overrides(copy.deepcopy(experiment), spelled), "the experiment dict")
        if data.get("name") is None:
            raise ConfigError("name", "an experiment given as a dict needs a name (it names the run folder)")
        return from_dict(Experiment, data)
    if not isinstance(experiment, (str, Path)):
        raise ConfigError("experiment", f"give a YAML path or a config dict, got {type(experiment).__name__}")
    return load_experiment(experiment, spelled)


def run(experiment: str | Path | dict[str, Any], *overrides: str, resume: bool = False,
        show_progress: bool = True, **values: Any) -> dict[str, Any]:
    """Run an experiment (YAML path or config dict) with its recipe, as ``reftx run`` does; returns the
    results (``results.json``'s content) with ``run_dir``, the folder written. Overrides: dotted
    ``"key=value"`` strings, or keyword values (``seed=1``, ``**{"train.lr": 1e-3}``)."""
    from reftx.recipes.registry import run_experiment

    return run_experiment(load(experiment, *overrides, **values), resume=resume, show_progress=show_progress)


__all__ = ["load", "run"]
