"""``reftx sweep ... --select "METRIC max" --on dev --then seed=0,1,2``: choose on dev, report on test.

Stage 1 is the grid, every cell evaluated on ``--on`` (``task.eval_split=dev`` added to its overrides:
the split that ``task.dev_size``, set by the sweep's own overrides, carves out of the training split).
Stage 2 (``--then``): for each method (a grid ``methods:`` block; one method without blocks), the
setting whose mean METRIC over its stage-1 cells is best (``max`` or ``min``; without one, the
metric's own direction, reftx.eval.metrics) runs once per ``--then`` cell on the experiment's own eval
split. A setting is a stage-1 cell's overrides less ``task.eval_split`` and the ``--then`` keys, so
seeds swept in both stages are averaged in stage 1 and replaced in stage 2. A tie goes to the first
setting in grid order; a setting with a failed cell is left out (and said). ``sweep.json``'s
``selection`` keeps, per method, every candidate's score and cells, the chosen setting and why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from reftx.core.errors import ConfigError, did_you_mean, unknown


def key_of(item: str) -> str:
    """The dotted key of a ``key=value`` override."""
    return item.partition("=")[0].strip()


@dataclass(frozen=True)
class Select:
    """What --select, --on and --then asked for."""

    metric: str
    direction: str  # "max" or "min"
    on: str  # the split stage 1 is evaluated on
    then: tuple[str, ...]  # the --then items, comma lists as on the command line
    zip: bool = False  # --then-zip: the --then keys advance together instead of forming a product

    @property
    def on_override(self) -> str:
        return f"task.eval_split={self.on}"

    def to_dict(self) -> dict[str, Any]:
        out = {"metric": self.metric, "direction": self.direction, "on": self.on, "then": list(self.then)}
        return {**out, "zip": True} if self.zip else out  # without --then-zip: the key sweeps had before it

    def axes(self) -> list:
        """The --then cells' axes: one per key (a product), or with --then-zip one axis whose i-th option
        holds every key's i-th value (each key needs the same number of values)."""
        from reftx.recipes.grid import cli_axes, zip_axes

        axes, origins = cli_axes(list(self.then))
        return [zip_axes(axes, list(origins), "--then-zip")] if self.zip and len(axes) > 1 else axes


def _direction(metric: str) -> str:
    """The registered metric's own direction (by its reported key), when it has one."""
    from reftx.eval.metrics import METRICS

    keys = {METRICS.get(n).key: METRICS.get(n).higher_is_better for n in METRICS.names()}
    if keys.get(metric) is not None:
        return "max" if keys[metric] else "min"
    known = "" if metric in keys else f"unknown metric {metric!r}{did_you_mean(metric, keys)}; "
    raise ConfigError("--select", f"{known}say which way {metric!r} is better: --select \"{metric} max\" or "
                                  f"\"{metric} min\" (reftx ls metrics lists the registered ones)")


def parse_select(text: str | None, on: str | None, then: list[str], zip_then: bool = False) -> Select | None:
    """--select's "METRIC [max|min]" with --on (default dev), --then and --then-zip, or None without --select."""
    if text is None:
        for flag, given in (("--on", on), ("--then", then), ("--then-zip", zip_then)):
            if given:
                raise ConfigError(flag, "belongs to a selection: add --select \"METRIC max\" (or min)")
        return None
    parts = text.split()
    if len(parts) not in (1, 2) or (len(parts) == 2 and parts[1] not in ("max", "min")):
        raise ConfigError("--select", f"is \"METRIC max\" or \"METRIC min\" (e.g. \"accuracy max\"), got {text!r}")
    if not then:
        raise ConfigError("--then", "says what runs with each method's chosen setting, e.g. --then seed=0,1,2")
    direction = parts[1] if len(parts) == 2 else _direction(parts[0])
    return Select(parts[0], direction, on or "dev", tuple(then), zip_then)


def check_metric(task: Any, metric: str) -> None:
    """Refuse, before anything runs, a metric the task does not report (when its reported keys are
    known: a task with its own score or evaluate reports more, and is checked on its first cell)."""
    from reftx.eval.metrics import get_metric
    from reftx.eval.task import Task

    if not task.metrics or type(task).score is not Task.score or type(task).evaluate is not Task.evaluate:
        return
    keys = [get_metric(n).key for n in task.metrics]
    if metric not in keys:
        raise unknown("--select", metric, keys, "metric", f" (what task {task.name!r} reports)")


def setting_of(overrides: list[str], sel: Select, then_keys: set[str]) -> tuple[str, ...]:
    """A stage-1 cell's setting: its overrides less --on's and the --then keys."""
    return tuple(o for o in overrides if o != sel.on_override and key_of(o) not in then_keys)


def _candidates(entries: list[tuple[Any, str, float | None]], sel: Select, then_keys: set[str]) -> dict:
    """Per method, per setting (grid order): its cells, statuses and values."""
    out: dict[str, dict[tuple[str, ...], dict[str, Any]]] = {}
    for cell, status, value in entries:
        setting = setting_of(cell.overrides, sel, then_keys)
        c = out.setdefault(cell.method, {}).setdefault(setting, {"setting": list(setting), "cells": [], "values": [],
                                                                 "experiment": str(cell.experiment)})
        c["cells"].append(cell.hash)
        c["values"].append(value if status == "done" else None)
    return out


def _reason(sel: Select, ranked: list[dict[str, Any]], left_out: int) -> str:
    word = "highest" if sel.direction == "max" else "lowest"
    text = f"{word} mean {sel.metric} on {sel.on} of {len(ranked)} setting(s): {ranked[0]['score']:.6g}"
    if len(ranked) > 1:
        text += f" (next best {ranked[1]['score']:.6g})"
        if ranked[1]["score"] == ranked[0]["score"]:
            text += "; a tie goes to the first setting in grid order"
    if left_out:
        text += f"; {left_out} setting(s) left out (a cell failed or lacks {sel.metric})"
    return text


def choose(entries: list[tuple[Any, str, float | None]], sel: Select, then_keys: set[str]) -> dict[str, Any]:
    """Per method: ``chosen`` (the setting's overrides, or None), ``score``, ``reason``, ``experiment``
    and every ``candidate`` (setting, cells, score: the mean, or None where a cell failed)."""
    result = {}
    for method, settings in _candidates(entries, sel, then_keys).items():
        cands = []
        for c in settings.values():
            ok = all(v is not None and math.isfinite(v) for v in c["values"])
            cands.append({"setting": c["setting"], "cells": c["cells"], "experiment": c["experiment"],
                          "score": sum(c["values"]) / len(c["values"]) if ok else None})
        scored = [c for c in cands if c["score"] is not None]
        ranked = sorted(scored, key=lambda c: -c["score"] if sel.direction == "max" else c["score"])  # stable: ties keep grid order
        if not ranked:
            result[method] = {"chosen": None, "score": None, "candidates": cands,
                              "reason": f"no setting finished on {sel.on} with {sel.metric} (every one has a failed cell)"}
            continue
        result[method] = {"chosen": ranked[0]["setting"], "score": ranked[0]["score"], "experiment": ranked[0]["experiment"],
                          "reason": _reason(sel, ranked, len(cands) - len(ranked)), "candidates": cands}
    return result


__all__ = ["Select", "check_metric", "choose", "key_of", "parse_select", "setting_of"]
