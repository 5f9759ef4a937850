"""Recipes: how the one training loop (reftx.loop) runs an experiment, chosen by its ``recipe:`` section.

    recipe: {name: edit, mode: sequential, checkpoints: [10, 50]}     # the name, then its options

| name | what runs | options |
|---|---|---|
| ``train`` (default) | one job over the training data (interventions, LoRA, or both: ``lora:``), then the task's evaluation (reftx.runner) | none |
| ``edit`` | knowledge editing: one job per edit or batch of edits, trained side by side in slots (reftx.edit_run) | ``reftx.editing.EditOptions`` |
| ``tofu_stage1`` | ``train`` with ``lora: {mode: only}``, then the adapter merged into an HF checkpoint ``{run}/model`` (reftx.recipes.tofu_stage1) | none |

Every recipe's options are a frozen dataclass built by the one strict converter
(``reftx.config.from_dict``), so ``reftx validate`` catches a typo in ``recipe:`` with its dotted
path and a did-you-mean. ``reftx run EXP`` runs whichever recipe the experiment names;
``reftx edit EXP`` and ``reftx tofu-finetune EXP`` are the same with the recipe given.

Recipes sit above the tasks and the run driver and below the command line; a task never imports
them (tests/unit/test_layers.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import from_dict
from ..experiment import Experiment
from ..registry import Registry


@dataclass(frozen=True)
class NoOptions:
    """A recipe without options."""


@dataclass(frozen=True)
class Recipe:
    """A registered recipe: its options dataclass and ``run(exp, options, resume, show_progress)``."""

    name: str
    options: type
    run: Callable[[Experiment, Any, bool, bool], dict[str, Any]]
    doc: str = ""


RECIPES: Registry[Recipe] = Registry("recipe")


def register_recipe(name: str, options: type, run: Callable[..., dict[str, Any]], doc: str) -> Recipe:
    return RECIPES.register(name)(Recipe(name, options, run, doc))


def recipe_of(exp: Experiment) -> tuple[Recipe, Any]:
    """The experiment's recipe and its options, typed and checked (errors name ``recipe.<key>``)."""
    raw = dict(exp.recipe)
    recipe = RECIPES.get(raw.pop("name", "train"), "recipe.name")
    return recipe, from_dict(recipe.options, raw, "recipe", f"option of recipe {recipe.name!r}")


def validate(exp: Experiment, model_config: Any = None) -> list:
    """Everything ``reftx validate`` checks without weights: the recipe and its options, then the
    run driver's checks (reftx.runner.validate: task, splits, data, objective, schedule)."""
    from ..runner import validate as check_run

    recipe_of(exp)
    return check_run(exp, model_config)


def run_experiment(exp: Experiment, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Run ``exp`` with the recipe it names (``train`` when it names none)."""
    recipe, options = recipe_of(exp)
    return recipe.run(exp, options, resume, show_progress)


def _train(exp: Experiment, options: NoOptions, resume: bool, show_progress: bool) -> dict[str, Any]:
    from ..runner import run

    return run(exp, resume=resume, show_progress=show_progress)


def _edit(exp: Experiment, options: Any, resume: bool, show_progress: bool) -> dict[str, Any]:
    from ..edit_run import run_edit

    return run_edit(exp, show_progress=show_progress, options=options)


def _tofu_stage1(exp: Experiment, options: NoOptions, resume: bool, show_progress: bool) -> dict[str, Any]:
    from .tofu_stage1 import finetune

    return {"model": str(finetune(exp, show_progress=show_progress))}


def _edit_options() -> type:
    from ..editing import EditOptions

    return EditOptions


register_recipe("train", NoOptions, _train, "train the interventions (and/or LoRA) as one job, then evaluate")
register_recipe("edit", _edit_options(), _edit, "knowledge editing: one job per edit (or batch), in slots")
register_recipe("tofu_stage1", NoOptions, _tofu_stage1, "train a LoRA adapter alone, then merge it into {run}/model")

__all__ = ["RECIPES", "NoOptions", "Recipe", "recipe_of", "register_recipe", "run_experiment", "validate"]
