"""``reftx sweep``: a grid of runs, each an ordinary run folder, listed in the sweep folder's ``sweep.json``.

    reftx sweep EXP.yaml train.lr=1e-3,3e-3 seed=0,1,2        # the product of comma lists: 6 cells
    reftx sweep EXP.yaml --grid grid.yaml                       # zipped keys, per-method blocks (reftx.recipes.grid)
    reftx sweep EXP.yaml task.dev_size=64 train.lr=1e-3,3e-3 --select "accuracy max" --on dev --then seed=0,1,2

The sweep folder (``--out``; default ``{output_dir}/{name}-sweep``, or ``-sweep-2``, ... when that one
holds another sweep; ``output_dir=`` and ``name=`` on the command line set them) holds:

  sweep.json         the index: experiment, command, key (what identifies the sweep), select, selection
                     (reftx.recipes.sweep_select) and cells: run_dir (absolute), cell (the folder's name),
                     hash (the run's config hash), method, stage (grid | then), experiment, overrides,
                     status (done | failed | pending | running), wall_s, metric (the headline: --select's
                     metric, else the task's first), metric_name, metrics, error, job_id (submitit)
  sweep.log          one line per cell start and end, with the time
  {method}-{hash}/   each cell's run folder, exactly as ``reftx run EXP overrides name=... output_dir=...`` writes it
  logs/, submitit/   the cells' output when they run as processes (--jobs N) or submitit jobs (--executor)

Every cell is loaded by the experiment's strict loader (a typo in a key is named, with a did-you-mean
and where it was given) and checked as ``reftx validate`` checks a run, before anything runs. Running
the same command again resumes the sweep as a whole: a finished cell (results.json of its hash) is
skipped, an interrupted one resumes from its checkpoint, a failed one runs again, and a cell that
another process is writing (its folder's lock, reftx.runs.folder) is left to it. A failed cell is
recorded and the others go on (``fail_fast`` stops). ``sweep.json`` is rewritten atomically under the
sweep folder's lock and merged cell by cell, so several processes may run cells of one sweep; Ctrl-C
leaves every finished cell as it is.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shlex
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reftx.config.hashing import config_hash
from reftx.config.schema import Experiment, load_experiment
from reftx.core.convert import load_yaml
from reftx.core.errors import ConfigError, ReftError
from reftx.recipes.grid import SET_BY_SWEEP, cli_axes, load_grid, split_values
from reftx.recipes.resume import state
from reftx.recipes.sweep_select import Select, check_metric, key_of
from reftx.runs.folder import RunFolder, locked

INDEX, LOG = "sweep.json", "sweep.log"
SWEPT_RECIPES = ("train", "edit")  # one run folder per cell, the same config hash when it ran before


@dataclass
class Cell:
    """One run of the sweep: ``experiment`` with ``overrides``; its folder is ``{sweep}/{method}-{hash}``."""

    method: str
    experiment: Path
    overrides: list[str]
    stage: str  # "grid" or "then"
    exp: Experiment
    hash: str
    label: str = ""  # the overrides that tell it from the other cells (progress lines)

    @property
    def name(self) -> str:
        return f"{self.method}-{self.hash}"

    @property
    def run_dir(self) -> Path:
        """``{output_dir}/{name}``; an editing cell's folder is the edit recipe's (reftx.recipes.edit.run.edit_folder)."""
        from reftx.recipes.registry import recipe_of

        recipe, options = recipe_of(self.exp)
        if recipe.name != "edit":
            return self.exp.run_dir
        from reftx.recipes.edit.run import edit_folder

        return edit_folder(self.exp, options.mode)

    def placed(self, folder: Path) -> Cell:
        return dataclasses.replace(self, exp=dataclasses.replace(self.exp, name=self.name, output_dir=str(folder)))


@dataclass
class Sweep:
    """A validated sweep: where it lives and its stage-1 cells (the --then cells come after them)."""

    experiment: Path
    folder: Path
    cells: list[Cell]
    select: Select | None = None
    then_axes: list = field(default_factory=list)
    imports: list[str] = field(default_factory=list)
    command: str = ""
    key: str = ""


def _located(e: ConfigError, origins: dict[str, str]) -> ConfigError:
    """A cell's config error with where the key was given, and that nothing ran."""
    text = str(e)[len(e.field) + 2:] if e.field and str(e).startswith(f"{e.field}: ") else str(e)
    for key, origin in origins.items():
        if e.field == key or e.field.startswith(f"{key}.") or key.startswith(f"{e.field}."):
            return ConfigError(e.field, f"{text} (given in {origin}; nothing has run)")
    return ConfigError(e.field, f"{text} (nothing has run)")


def load_cell(path: Path, overrides: list[str], method: str, stage: str, origins: dict[str, str]) -> Cell:
    """The cell of ``path`` with ``overrides``, through the experiment's strict loader."""
    try:
        exp = load_experiment(path, overrides)
    except ConfigError as e:
        raise _located(e, origins) from None
    return Cell(method, Path(path).absolute(), list(overrides), stage, exp, config_hash(exp.to_dict()))


def validate_cell(cell: Cell, cache: dict[str, Any]) -> None:
    """What ``reftx validate`` checks, for one cell (the model's config read once per model)."""
    from reftx.recipes import registry
    from reftx.recipes.train import model_config_of

    recipe, _ = registry.recipe_of(cell.exp)
    if recipe.name not in SWEPT_RECIPES:
        raise ConfigError("recipe.name", f"reftx sweep runs the {' and '.join(SWEPT_RECIPES)} recipes (one run folder "
                                         f"per cell), not {recipe.name!r}: run that experiment with reftx run")
    try:
        if cell.exp.model.name not in cache:
            cache[cell.exp.model.name] = model_config_of(cell.exp)
        registry.validate(cell.exp, cache[cell.exp.model.name])
    except ConfigError as e:
        text = str(e)[len(e.field) + 2:] if e.field else str(e)
        raise ConfigError(e.field, f"{text} (sweep cell {cell.label or cell.method}; nothing has run)") from None
    except ReftError as e:
        raise type(e)(f"{e} (sweep cell {cell.label or cell.method}; nothing has run)") from None


def _labels(cells: list[Cell]) -> None:
    common = set.intersection(*(set(c.overrides) for c in cells)) if cells else set()
    for c in cells:
        c.label = " ".join(o for o in c.overrides if o not in common) or "(the experiment as it is)"


def _no_duplicates(cells: list[Cell]) -> None:
    seen: dict[str, int] = {}
    for i, c in enumerate(cells):
        if c.hash in seen:
            j = seen[c.hash]
            raise ReftError(f"sweep cells {j + 1} ({cells[j].label}) and {i + 1} ({c.label}) are the same run (config "
                            f"{c.hash}): remove the duplicate value")
        seen[c.hash] = i


def _sweep_items(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command line's ``name=``/``output_dir=``, which name the sweep folder, split from the rest."""
    rest, own = [], {}
    for item in overrides:
        key = key_of(item)
        if key in SET_BY_SWEEP:
            value = item.partition("=")[2]
            if len(split_values(value, key)) > 1:
                raise ConfigError(key, "names the sweep's folder and cannot be swept (each cell's folder is "
                                       "{sweep}/{method}-{hash})")
            own[key] = value.strip()
        else:
            rest.append(item)
    return rest, own


def plan(experiment: str | Path, overrides: list[str], grid: str | Path | None = None, select: Select | None = None,
         out: str | Path | None = None, imports: list[str] = (), command: str = "") -> Sweep:
    """Every stage-1 cell, loaded and validated, and the sweep's folder; nothing is written."""
    experiment = Path(experiment)
    overrides, own = _sweep_items(list(overrides))
    data = load_yaml(experiment)
    base = own.get("name") or data.get("name") or experiment.stem
    blocks = load_grid(grid, overrides)
    then_axes = select.axes() if select else []  # a typo in --then fails first, too
    extra = [select.on_override] if select else []
    cells = []
    for block in blocks:
        if select and "task.eval_split" in block.origins:
            raise ConfigError("task.eval_split", f"is set by --on ({select.on}) in the selection stage and is the "
                              f"experiment's own in the --then stage: do not sweep it ({block.origins['task.eval_split']})")
        for items in block.cells():
            cells.append(load_cell(block.experiment or experiment, [*items, *extra], block.method or base, "grid",
                                   block.origins))
    _labels(cells)
    _no_duplicates(cells)
    cache: dict[str, Any] = {}
    for cell in cells:
        validate_cell(cell, cache)
    if select:
        _check_then(cells, select, then_axes, cache)
    key = hashlib.sha256(json.dumps({"cells": [[c.method, c.hash] for c in cells],
                                     "select": select.to_dict() if select else None}).encode()).hexdigest()[:12]
    explicit = out is not None
    folder = _folder(Path(out) if explicit else Path(own.get("output_dir") or data.get("output_dir") or "runs")
                     / f"{base}-sweep", key, explicit)
    return Sweep(experiment.absolute(), folder, [c.placed(folder) for c in cells], select, then_axes, list(imports),
                 command, key)


def _check_then(cells: list[Cell], select: Select, axes: list, cache: dict[str, Any]) -> None:
    """Every (setting, --then cell) loaded strictly and one per method validated; the selection
    metric checked against what the task reports."""
    from reftx.recipes.sweep_select import setting_of
    from reftx.recipes.train import load_task

    origins = {key_of(i): "--then" for axis in axes for option in axis for i in option}
    check_metric(load_task(cells[0].exp), select.metric)
    checked = set()
    for cell in cells:
        setting = setting_of(cell.overrides, select, set(origins))
        for items in then_items(axes):
            then = load_cell(cell.experiment, [*setting, *items], cell.method, "then", origins)
            if cell.method not in checked:
                then.label = f"--then {' '.join(items)}"
                validate_cell(then, cache)
                checked.add(cell.method)


def then_items(axes: list) -> list[list[str]]:
    return [[i for option in combo for i in option] for combo in itertools.product(*axes)]


def _folder(base: Path, key: str, explicit: bool) -> Path:
    """``base``, or when it holds another sweep, the first ``base-2``, ``base-3``, ... that holds this
    one or none (``--out`` given: that folder, or a one-line error)."""
    folder, k = base, 1
    while (index := read_index(folder)) is not None and index.get("key") != key:
        if explicit:
            raise ReftError(f"{folder} holds another sweep ({index.get('command') or 'see its sweep.json'}): rerun that "
                            "command to continue it, or choose another --out")
        k += 1
        folder = base.with_name(f"{base.name}-{k}")
    return folder.absolute()


def read_index(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / INDEX
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ReftError(f"{path} is not a readable sweep index ({e}); move it away to start the sweep afresh") from None


def _acquire(folder: Path, wait_s: float = 60.0) -> ExitStack:
    """The sweep folder's lock (reftx.runs.folder.locked), waited for while another process updates it."""
    deadline = time.monotonic() + wait_s
    while True:
        stack = ExitStack()
        try:
            stack.enter_context(locked(folder, "reftx sweep (sweep.json)"))
            return stack
        except ReftError as e:
            stack.close()
            if "is being written by" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def update_index(folder: Path, change: Any) -> dict[str, Any]:
    """Read sweep.json, ``change(data)`` it, write it back atomically, all under the folder's lock."""
    with _acquire(folder):
        data = read_index(folder) or {}
        change(data)
        data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        RunFolder(folder).json(INDEX, data)
    return data


def upsert(data: dict[str, Any], rec: dict[str, Any]) -> None:
    """Put a cell's record into the index, replacing the one of the same hash."""
    cells = data.setdefault("cells", [])
    for i, old in enumerate(cells):
        if old.get("hash") == rec["hash"]:
            cells[i] = {**old, **rec}
            return
    cells.append(rec)


def results_of(cell: Cell) -> dict[str, Any] | None:
    path = cell.run_dir / "results.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def record(cell: Cell, status: str, wall: float | None = None, error: str | None = None,
           metric_name: str | None = None, **extra: Any) -> dict[str, Any]:
    """A cell's line in sweep.json (a finished cell's wall time and metrics from its results.json)."""
    rec = {"run_dir": str(cell.run_dir), "cell": cell.name, "hash": cell.hash, "method": cell.method,
           "stage": cell.stage, "experiment": str(cell.experiment), "overrides": cell.overrides, "status": status,
           "wall_s": wall, "metric": None, "metric_name": metric_name, "metrics": None, "error": error, **extra}
    results = results_of(cell) if status == "done" else None
    if results:
        metrics = results.get("metrics") or {}
        name = metric_name or next(iter(metrics), None)
        rec.update(metric=metrics.get(name), metric_name=name, metrics=metrics, eval_split=results.get("eval_split"),
                   wall_s=results.get("wall_seconds", wall))
    return rec


def busy(folder: Path) -> bool:
    """Whether another process holds ``folder``'s write lock (a cell running elsewhere)."""
    if not (folder / ".lock").exists():
        return False
    try:
        with locked(folder, "reftx sweep (status)"):
            return False
    except ReftError as e:
        return "is being written by" in str(e)


def folder_status(cell: Cell) -> tuple[str, Path | bool]:
    """done | running | pending, and what to resume (the folder when it holds an unfinished run)."""
    st = state(cell.run_dir, cell.exp.to_dict())
    if st == "finished":
        return "done", False
    if st.startswith("another config"):
        raise ReftError(f"{cell.run_dir} holds {st}, not this cell's run: move it away and rerun the sweep")
    if busy(cell.run_dir):
        return "running", False
    return "pending", cell.run_dir if st == "unfinished" else False


def command_line(sw: Sweep, cell: Cell, resume: Any) -> str:
    """The self-contained ``reftx run`` line of a cell (``--emit commands``): absolute paths, from the
    working directory the sweep was planned in."""
    return f"cd {shlex.quote(os.getcwd())} && " + shlex.join(["reftx", *cell_argv(sw, cell, resume)])


def cell_argv(sw: Sweep, cell: Cell, resume: Any) -> list[str]:
    """``reftx``'s arguments that run ``cell`` (``--resume`` its folder when it holds a checkpoint)."""
    return [*(x for m in sw.imports for x in ("--import", m)), "run", str(cell.experiment), *cell.overrides,
            f"name={cell.name}", f"output_dir={sw.folder}", *(["--resume", str(resume)] if resume else [])]


__all__ = ["Cell", "Sweep", "busy", "cell_argv", "command_line", "folder_status", "load_cell", "plan", "read_index",
           "record", "results_of", "then_items", "update_index", "upsert", "validate_cell"]
