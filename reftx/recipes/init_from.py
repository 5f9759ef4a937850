"""``train.init_from`` checked before anything trains: the folder must hold saved interventions
(``reft_config.json`` and ``interventions.safetensors``) trained for this experiment's model, with
the same intervention kinds, ranks and groups, because ``reftx run`` loads them into this
experiment's freshly built interventions (``ReftModel.load_trained``: every tensor by group key and
shape) only after the data and the model are loaded. ``reftx validate`` and ``reftx plan`` call
:func:`check_init_from`, so the mismatch is reported in seconds, naming the field.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reftx.config.schema import Experiment
from reftx.core.errors import ConfigError, ReftError
from reftx.core.intervention import build_config, get_intervention
from reftx.engine import sites
from reftx.engine.serialization import CONFIG_NAME, WEIGHTS_NAME, read_config

FIELD = "train.init_from"


def check_init_from(exp: Experiment, model_config: Any, specs: list, groups: list) -> None:
    """Raise a ConfigError naming ``train.init_from`` unless it is unset or holds interventions that
    ``reftx run`` can load into ``groups`` (planned from ``specs`` on ``model_config``)."""
    path = exp.train.init_from
    if not path:
        return
    if exp.lora is not None:
        raise ConfigError(FIELD, "starts interventions from a saved run, which a lora: section does not support; "
                                 "remove train.init_from or the lora: section")
    folder = Path(path)
    if not os.path.isdir(folder):  # os.path: False, not an OSError, for a name too long for a file
        raise ConfigError(FIELD, f"{path} does not exist: point it at a finished run's intervention/ folder, or "
                                 "remove it (null: a fresh init)")
    if not (folder / CONFIG_NAME).is_file() and (folder / "intervention" / CONFIG_NAME).is_file():
        raise ConfigError(FIELD, f"{path} is a run folder: point it at its interventions, {folder / 'intervention'}")
    try:
        meta = read_config(folder / CONFIG_NAME)
    except ReftError as e:
        raise ConfigError(FIELD, f"{e}; point it at a finished run's intervention/ folder") from None
    if not (folder / WEIGHTS_NAME).is_file():
        raise ConfigError(FIELD, f"{folder / WEIGHTS_NAME} not found (an incomplete save?); point it at a "
                                 "finished run's intervention/ folder")
    _same_model(meta, exp, model_config, path)
    _same_interventions(meta, specs, path)
    _same_groups(meta, exp, groups, path)


def _same_model(meta: dict[str, Any], exp: Experiment, model_config: Any, path: str) -> None:
    saved = meta["model"]
    here = (model_config.model_type, sites.num_layers(model_config))
    there = (saved["model_type"], saved.get("num_layers", here[1]))
    if there != here:
        raise ConfigError(FIELD, f"{path} was trained for another model (model_type {there[0]!r}, {there[1]} layers; "
                                 f"{saved.get('name_or_path') or 'name unknown'}), this experiment's model "
                                 f"{exp.model.name!r} is {here[0]!r} with {here[1]} layers: start from a run of "
                                 "this model, or remove train.init_from")


def _rank(kind: str, options: dict[str, Any]) -> Any:
    """The rank an entry builds with (its default when the entry leaves it out); None if it has none."""
    try:
        return getattr(build_config(get_intervention(kind), options, ""), "rank", None)
    except ReftError:  # the saved entry's own options no longer build: left to the group check
        return None


def _same_interventions(meta: dict[str, Any], specs: list, path: str) -> None:
    saved = meta["interventions"]
    if len(saved) != len(specs):
        raise ConfigError(FIELD, f"{path} holds {len(saved)} intervention entries, this experiment has {len(specs)}: "
                                 "start from a run with the same interventions, or remove train.init_from")
    for i, (entry, spec) in enumerate(zip(saved, specs)):
        kind = entry.get("kind")
        if kind != spec.kind:
            raise ConfigError(FIELD, f"{path} was trained with kind {kind!r} for interventions.{i}, this experiment's "
                                     f"interventions.{i}.kind is {spec.kind!r}: use the same kind, or remove "
                                     "train.init_from")
        rank, want = entry.get("rank"), _rank(spec.kind, spec.options)
        if rank is not None and want is not None and rank != want:
            raise ConfigError(FIELD, f"{path} was trained with rank {rank} for interventions.{i}, this experiment's "
                                     f"interventions.{i}.rank is {want}: use the same rank, or remove train.init_from")


def _same_groups(meta: dict[str, Any], exp: Experiment, groups: list, path: str) -> None:
    saved = {k: v.get("params") for k, v in (meta.get("groups") or {}).items() if isinstance(v, dict)}
    here = {g.key: g.params for g in groups}
    if saved and saved != here:
        missing, extra = sorted(set(here) - set(saved)), sorted(set(saved) - set(here))
        sizes = [k for k in here if k in saved and saved[k] != here[k]]
        what = (f"groups {missing} are not in it, {extra} are not in this experiment" if missing or extra
                else f"groups {sizes} have other parameter counts (another width or options)")
        raise ConfigError(FIELD, f"{path} does not match this experiment's interventions ({what}): use the same "
                                 "layers, positions and options, or remove train.init_from")
    trained = list(meta.get("train_modules", []))
    if trained != list(exp.model.train_modules):
        raise ConfigError(FIELD, f"{path} was trained with model.train_modules {trained}, this experiment has "
                                 f"{list(exp.model.train_modules)}: use the same, or remove train.init_from")


__all__ = ["check_init_from"]
