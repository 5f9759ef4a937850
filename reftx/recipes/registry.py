"""Recipes: how the one training loop (reftx.train.loop) runs an experiment, chosen by its ``recipe:`` section.

    recipe: {name: edit, mode: sequential, checkpoints: [10, 50]}     # the name, then its options

| name | what runs | options |
|---|---|---|
| ``train`` (default) | one job over the training data (interventions, LoRA, or both: ``lora:``), then the task's evaluation (reftx.recipes.train) | none |
| ``edit`` | knowledge editing: one job per edit or batch of edits, trained side by side in slots (reftx.recipes.edit.run) | ``reftx.recipes.edit.engine.EditOptions`` |
| ``sequential`` | ``train`` once per stage, in order, each stage the experiment with its overrides (e.g. ``task.options.forget=forget05``) and ``train.init_from`` the previous stage's interventions: sequential unlearning forget01 → forget05 → forget10 | ``SequentialOptions`` |
| ``baseline`` | the model as it is (no interventions, no training) on the eval split, into ``{run}/baseline/`` (reftx.recipes.train.evaluate_base; ``reftx baseline``) | none |
| ``tofu_stage1`` | ``train`` with ``lora: {mode: only}``, then the adapter merged into an HF checkpoint ``{run}/model`` (reftx.recipes.tofu_stage1) | none |

Every recipe's options are a frozen dataclass built by the one strict converter
(``reftx.core.convert.from_dict``), so ``reftx validate`` catches a typo in ``recipe:`` with its dotted
path and a did-you-mean. ``reftx run EXP`` runs whichever recipe the experiment names;
``reftx edit EXP`` and ``reftx tofu-finetune EXP`` are the same with the recipe given.

Recipes sit above the tasks and the run driver and below the command line; a task never imports
them (tests/unit/test_layers.py).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reftx.core.convert import NoOptions, from_dict, within
from reftx.core.errors import ConfigError, DataError
from reftx.config.schema import Experiment
from reftx.core.registry import Registry
from reftx.train.trackers import check_available


@dataclass(frozen=True)
class Recipe:
    """A registered recipe: its options dataclass and ``run(exp, options, resume, show_progress)``."""

    name: str
    options: type
    run: Callable[[Experiment, Any, bool, bool], dict[str, Any]]
    doc: str = ""


RECIPES: Registry[Recipe] = Registry("recipe")


def register_recipe(name: str, options: type, run: Callable[..., dict[str, Any]], doc: str,
                    replace: bool = False) -> Recipe:
    return RECIPES.register(name, replace)(Recipe(name, options, run, doc))


def recipe_of(exp: Experiment) -> tuple[Recipe, Any]:
    """The experiment's recipe and its options, typed and checked (errors name ``recipe.<key>``)."""
    raw = dict(exp.recipe)
    recipe = RECIPES.get(raw.pop("name", "train"), "recipe.name")
    return recipe, from_dict(recipe.options, raw, "recipe", f"option of recipe {recipe.name!r}")


def validate(exp: Experiment, model_config: Any = None, notices: list[str] | None = None) -> list:
    """Everything ``reftx validate`` checks without weights: the recipe and its options, then the
    run driver's checks (reftx.recipes.train.validate: task, splits, data, objective, schedule). A model
    that another shipped experiment writes (``runs/<name>/model``, not there yet) is a prerequisite,
    not an error: it is checked with that experiment's model and said in ``notices``."""
    from reftx.recipes.train import validate as check_run

    recipe, options = recipe_of(exp)
    if model_config is None:
        model_config = _prerequisite(exp, notices)
    if recipe.name == "sequential":
        return _validate_stages(exp, options, model_config, notices)
    check_available(exp.train.log_with)  # a tracker's package (an extra, reftx[trackers]) is installed
    groups = check_run(exp, model_config, notices)
    if recipe.name == "edit":
        _validate_edit(exp, options, groups)
    return groups


def _validate_edit(exp: Experiment, options: Any, groups: list) -> None:
    """The edit recipe's own checks: one intervention entry at one layer, and its options against its
    primitive (built at the site's width, no weights)."""
    from reftx.core.intervention import make_intervention
    from reftx.engine.schedule import SPEC_KEYS
    from reftx.recipes.edit.engine import check_edit

    if len(exp.interventions) != 1:
        raise ConfigError("interventions", f"editing needs exactly one intervention entry, got {len(exp.interventions)}")
    if len(groups) != 1:
        raise ConfigError("interventions.0.layers", f"editing needs one layer, got {[g.layers[0] for g in groups]}")
    raw = exp.interventions[0]
    probe = make_intervention(raw.get("kind", ""), {k: v for k, v in raw.items() if k not in SPEC_KEYS},
                              groups[0].dim, "interventions.0.")
    check_edit(options, groups[0], raw.get("kind", ""), bool(getattr(probe, "has_basis_gate", False)))


def _validate_stages(exp: Experiment, options: Any, model_config: Any, notices: list[str] | None) -> list:
    """Every stage as it will run, so a mistake in stage 2 fails before stage 1 trains (errors name
    ``recipe.stages.<i>.<field>``). Stage k > 1 loads stage k-1's trained interventions
    (``train.init_from``, set when it runs), so it must plan the same groups and have no lora: section."""
    from reftx.recipes.train import validate as check_run

    previous: list = []
    for i, stage in enumerate(_stages(exp, options)):
        where = f"recipe.stages.{i}"
        if i and stage.lora is not None:
            raise ConfigError(where, "starts from the previous stage's interventions (train.init_from), which a "
                                     "lora: section does not support; remove lora: or run the stages one by one")
        if i:  # its init_from is the previous stage's folder, written when that stage has run
            stage = dataclasses.replace(stage, train=dataclasses.replace(stage.train, init_from=None))
        try:
            check_available(stage.train.log_with)
            groups = check_run(stage, model_config, notices)
        except ConfigError as e:
            raise within(e, where) from None
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        here, before = {g.key: g.params for g in groups}, {g.key: g.params for g in previous}
        if i and here != before:
            changed = sorted(k for k in here.keys() | before.keys() if here.get(k) != before.get(k))
            raise ConfigError(where, f"plans other interventions than stage {i} (groups {changed}) but starts from "
                                     f"stage {i}'s trained ones: give every stage the same interventions")
        previous = groups
    return previous


EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def _prerequisite(exp: Experiment, notices: list[str] | None) -> Any:
    """The config of a not-yet-written ``<output_dir>/<name>/model`` from the shipped experiment
    ``<name>.yaml`` whose recipe writes it (tofu_stage1), or None."""
    path = Path(exp.model.name)
    # os.path.exists: False, not an OSError, for a name too long for a file (left to the model check)
    if os.path.exists(path) or path.name != "model" or len(path.parts) < 2 or not EXPERIMENTS.is_dir():
        return None
    shipped = sorted(EXPERIMENTS.rglob("*.yaml"))  # matched by stem: no glob built from the name (too long, "[")
    for candidate in (p for p in shipped if p.stem == path.parent.name):
        from reftx.config.schema import load_experiment
        from reftx.recipes.train import model_config_of

        stage = load_experiment(candidate)
        if stage.recipe.get("name") == "tofu_stage1" and Path(stage.output_dir) / (stage.name or "") == path.parent:
            if notices is not None:
                notices.append(f"needs {exp.model.name}: run `reftx run {candidate.relative_to(EXPERIMENTS.parent)}` first")
            return model_config_of(stage, notices)
    return None


def run_experiment(exp: Experiment, resume: bool | str | Path = False, show_progress: bool = True) -> dict[str, Any]:
    """Run ``exp`` with the recipe it names (``train`` when it names none)."""
    recipe, options = recipe_of(exp)
    if not isinstance(resume, bool) and recipe.name not in ("train", "edit"):
        raise ConfigError("--resume", f"a folder (--resume RUN_DIR) resumes one run of the train or edit recipe; "
                          f"recipe {recipe.name!r} resumes by experiment: pass --resume alone")
    return recipe.run(exp, options, resume, show_progress)


def _train(exp: Experiment, options: NoOptions, resume: bool, show_progress: bool) -> dict[str, Any]:
    from reftx.recipes.train import run

    return run(exp, resume=resume, show_progress=show_progress)


def _edit(exp: Experiment, options: Any, resume: bool, show_progress: bool) -> dict[str, Any]:
    from reftx.recipes.edit.run import run_edit

    return run_edit(exp, show_progress=show_progress, options=options, resume=resume)


def _tofu_stage1(exp: Experiment, options: NoOptions, resume: bool, show_progress: bool) -> dict[str, Any]:
    from reftx.recipes.tofu_stage1 import finetune

    return {"model": str(finetune(exp, show_progress=show_progress))}


@dataclass(frozen=True)
class SequentialOptions:
    """Options of the ``sequential`` recipe."""

    stages: list[list[str]] = field(default_factory=list)  # per stage, dotted overrides of the experiment (e.g. [task.options.forget=forget05]); stage k starts from stage k-1's interventions

    def __post_init__(self) -> None:
        if len(self.stages) < 2:
            from reftx.core.errors import ConfigError

            raise ConfigError("stages", f"needs at least two stages (lists of key=value overrides), got {self.stages}")


def _stages(exp: Experiment, options: SequentialOptions) -> list[Experiment]:
    """Each stage's experiment: the experiment with the stage's overrides, named ``{name}-s{k}``,
    run by ``train`` (``train.init_from`` is set to the previous stage's interventions when it runs)."""
    return [_stage(exp, overrides, k) for k, overrides in enumerate(options.stages, 1)]


def _stage(exp: Experiment, overrides: list[str], k: int) -> Experiment:
    """Stage ``k`` (from 1); an error names its field inside the stage, ``recipe.stages.<k-1>.<field>``."""
    from reftx.core.convert import apply_overrides

    try:
        data = apply_overrides(exp.to_dict(), overrides)
        data["name"], data["recipe"] = f"{exp.name}-s{k}", {}
        return from_dict(Experiment, data)
    except ConfigError as e:
        raise within(e, f"recipe.stages.{k - 1}") from None


def _sequential(exp: Experiment, options: SequentialOptions, resume: bool, show_progress: bool) -> dict[str, Any]:
    """Each stage is ``train`` on the experiment with that stage's overrides, named
    ``{name}-s{k}``, its interventions initialised from the previous stage's; returns every
    stage's results (also in each stage's own run folder)."""
    from reftx.recipes.train import run

    stages, previous = [], None
    for k, stage in enumerate(_stages(exp, options), 1):
        if previous is not None:
            stage = dataclasses.replace(stage, train=dataclasses.replace(stage.train, init_from=str(previous)))
        result = run(stage, resume=resume, show_progress=show_progress)
        stages.append({"stage": k, "overrides": list(options.stages[k - 1]), **result})
        previous = Path(result["run_dir"]) / "intervention"
    return {"name": exp.name, "stages": stages}


def _baseline(exp: Experiment, options: NoOptions, resume: bool, show_progress: bool) -> dict[str, Any]:
    from reftx.recipes.train import evaluate_base

    return evaluate_base(exp, show_progress=show_progress)


def _edit_options() -> type:
    from reftx.recipes.edit.engine import EditOptions

    return EditOptions


register_recipe("train", NoOptions, _train, "train the interventions (and/or LoRA) as one job, then evaluate")
register_recipe("baseline", NoOptions, _baseline, "the model as it is (no interventions, no training) on the eval split")
register_recipe("edit", _edit_options(), _edit, "knowledge editing: one job per edit (or batch), in slots")
register_recipe("sequential", SequentialOptions, _sequential,
                "train once per stage (its overrides), each stage from the previous stage's interventions")
register_recipe("tofu_stage1", NoOptions, _tofu_stage1, "train a LoRA adapter alone, then merge it into {run}/model")

__all__ = ["RECIPES", "NoOptions", "Recipe", "SequentialOptions", "recipe_of", "register_recipe", "run_experiment", "validate"]
