"""What ``reftx report`` reads: run folders and sweep folders, grouped into the things compared.

A path given to the report is one of
* a run folder: ``config.yaml`` and ``results.json`` (``reftx run``, ``baseline``, ``edit``, ``adopt``),
  with its per-example outcomes from ``samples.jsonl`` (or ``edits.jsonl``): rows with an ``id``
  and ``metrics`` (reftx.eval.outcomes; rows written before they existed give none, and such a
  run is compared over seeds only);
* a sweep folder: ``sweep.json`` lists its cells (of a sweep that chose on dev, ``--select ... --then``,
  only the ``--then`` cells: the selection cells were scored on dev, and the choice already used them), ``{"cells": [{"run_dir": ..., "status": ...}, ...]}``
  (other keys are ignored); a ``run_dir`` is read as given when absolute, else relative to the sweep
  folder, else to the working directory, so cells are found wherever they ran; one that no longer
  exists is looked for in the sweep folder under its own name (the sweep folder was copied or moved,
  e.g. from a cluster or a worktree into the repository, with its cells inside it). A cell that is not
  ``done`` or holds no results is a missing cell: named in the report's notes, never silently
  averaged away;
* a folder of run folders (e.g. ``runs/``): each subfolder that holds a finished run.

Groups: the runs that differ only in ``seed`` (and ``name``, ``output_dir``) form one group (also
by ``method``: the base model of ``reftx baseline`` is never grouped with a trained run of its
config), labelled by its runs' name (or the prefix their names share), disambiguated by method,
then by the config keys that differ between groups. ``by``: group by dotted config keys instead (``train.lr``,
``interventions.0.kind``) or the derived ``method`` / ``name``. A group's seeds are its runs'
``seed`` values; two runs of one group with the same seed are an error naming both.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reftx.core.errors import ConfigError, ReftError, did_you_mean

NOT_GROUPED = ("seed", "name", "output_dir")  # config keys that do not make runs different things
NOT_EVAL = ("n_train", "train_split")  # task keys that do not change the eval set
DERIVED = ("method", "name")


@dataclass
class Run:
    """A finished run: its folder, resolved config, results and per-example outcomes by example id."""

    path: Path
    config: dict[str, Any]
    results: dict[str, Any]
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    aggregates: dict[str, str] = field(default_factory=dict)
    sweep_method: str | None = None  # the method label of the sweep cell it was read from (sweep.json), if any

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def metrics(self) -> dict[str, Any]:
        return self.results.get("metrics") or {}

    @property
    def method(self) -> str:
        """``base`` for a model evaluated as it is (reftx baseline), else the intervention kinds (+lora)."""
        if self.results.get("trainable_parameters") == 0 and "train" not in self.results and "mode" not in self.results:
            return "base"
        kinds = list(dict.fromkeys(str(iv.get("kind")) for iv in self.config.get("interventions") or []))
        return "+".join(kinds + (["lora"] if self.config.get("lora") else [])) or "none"

    @property
    def eval_key(self) -> str:
        """What fixes the eval set: the task section without its training-only keys."""
        task = {k: v for k, v in (self.config.get("task") or {}).items() if k not in NOT_EVAL}
        return json.dumps(task, sort_keys=True, default=str)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ReftError(f"cannot read {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise ReftError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); the file is damaged: rerun what wrote it"
                        ) from None


def _read_outcomes(folder: Path, run: Run) -> None:
    """The run's per-example outcomes from samples.jsonl or edits.jsonl (rows merged by id)."""
    for name in ("samples.jsonl", "edits.jsonl"):
        path = folder / name
        if not path.is_file():
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReftError(f"{path}:{lineno}: invalid JSON ({e.msg}); the file is damaged: rerun the run"
                                ) from None
            if isinstance(row, dict) and "id" in row and isinstance(row.get("metrics"), dict):
                run.outcomes.setdefault(str(row["id"]), {}).update(row["metrics"])
                run.aggregates.update(row.get("aggregates") or {})
        return


def load_run(folder: Path) -> Run:
    """A finished run folder; a one-line error naming what is missing otherwise."""
    folder = Path(folder)
    if not (folder / "config.yaml").is_file():
        raise ReftError(f"{folder} holds no config.yaml, so it is not a run folder; give the folder reftx run printed")
    if not (folder / "results.json").is_file():
        raise ReftError(f"{folder} holds no results.json: the run has not finished; finish it with "
                        f"reftx run --resume {folder}")
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        raise ReftError(f"{folder / 'config.yaml'}: invalid YAML ({str(e).splitlines()[0]})") from None
    results = _read_json(folder / "results.json")
    if not isinstance(config, dict) or not isinstance(results, dict) or not isinstance(results.get("metrics"), dict):
        raise ReftError(f"{folder}: config.yaml or results.json is not what reftx writes (no metrics); rerun the run")
    run = Run(folder, config, results)
    _read_outcomes(folder, run)
    return run


def _cell_dir(sweep: Path, run_dir: str) -> Path:
    p = Path(run_dir)
    if p.is_absolute():
        return p if p.exists() or not (sweep / p.name).exists() else sweep / p.name
    return sweep / p if (sweep / p).exists() or not p.exists() else p


def read_sweep(sweep: Path, notes: list[str]) -> list[Run]:
    """The finished cells of a sweep folder; each missing one is named in ``notes``."""
    index = _read_json(sweep / "sweep.json")
    cells = index.get("cells") if isinstance(index, dict) else None
    if not isinstance(cells, list):
        raise ReftError(f"{sweep / 'sweep.json'} has no list of cells ('cells'); it is not a reftx sweep index")
    runs = []
    select = index.get("select")  # --select ... --then: the grid cells were scored on dev, where the choice was made
    left_out = 0
    for i, cell in enumerate(cells):
        where = f"{sweep} cell {i}"
        if isinstance(select, dict) and isinstance(cell, dict) and cell.get("stage") == "grid":
            left_out += 1
            continue
        if not isinstance(cell, dict) or not isinstance(cell.get("run_dir"), str):
            notes.append(f"missing: {where}: no run_dir in sweep.json")
            continue
        folder = _cell_dir(sweep, cell["run_dir"])
        label = f"{where} ({cell.get('hash', '?')}, {folder})"
        status = cell.get("status", "done")
        if status != "done":
            error = f" ({cell['error']})" if cell.get("error") else ""
            notes.append(f"missing: {label}: status {status}{error}")
        elif not (folder / "results.json").is_file():
            notes.append(f"missing: {label}: no results.json")
        else:
            run = load_run(folder)
            run.sweep_method = cell.get("method") if isinstance(cell.get("method"), str) else None
            runs.append(run)
    if left_out:
        notes.append(f"{sweep}: its {left_out} selection-stage cells (scored on {select.get('on', 'dev')}, "
                     "where the choice was made) are left out; the report reads its --then cells")
    return runs


def collect(paths: list[str | Path]) -> tuple[list[Run], list[str]]:
    """Every finished run under ``paths`` (see the module docstring) and the notes on missing cells."""
    runs: list[Run] = []
    notes: list[str] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ReftError(f"no run or sweep folder at {p}; give run folders (reftx run prints them) or sweep folders")
        if (p / "sweep.json").is_file():
            runs += read_sweep(p, notes)
        elif (p / "config.yaml").is_file():
            runs.append(load_run(p))
        else:
            found = sorted(d for d in p.iterdir() if d.is_dir() and (d / "config.yaml").is_file())
            if not found:
                raise ReftError(f"{p} is not a run folder (no config.yaml), a sweep folder (no sweep.json) nor a "
                                "folder of runs; give the folders reftx run or reftx sweep printed")
            for d in found:
                if (d / "results.json").is_file():
                    runs.append(load_run(d))
                else:
                    notes.append(f"missing: {d}: no results.json (unfinished)")
    seen: dict[Path, Run] = {}
    for r in runs:  # a run given twice counts once; the reading through its sweep (with its label) wins
        key = r.path.resolve()
        if key not in seen or (r.sweep_method and not seen[key].sweep_method):
            seen[key] = r
    unique = list(seen.values())
    if not unique:
        raise ReftError("no finished run to report: " + ("; ".join(notes) or "the folders hold none"))
    return unique, notes


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{dotted.key: leaf}`` (list items by index)."""
    if isinstance(d, dict):
        items = d.items()
    elif isinstance(d, list) and d:
        items = enumerate(d)
    else:
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in items:
        out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


@dataclass
class Group:
    """Runs of one setting over seeds (sorted by seed), with the label the report shows."""

    label: str
    runs: list[Run]

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]

    @property
    def eval_key(self) -> str:
        return self.runs[0].eval_key

    @property
    def ids(self) -> frozenset[str]:
        """The eval set's example ids (empty when no run recorded per-example outcomes)."""
        return next((frozenset(r.outcomes) for r in self.runs if r.outcomes), frozenset())


def _value(run: Run, key: str, flat: dict[str, Any]) -> Any:
    """``method``: the sweep cell's method label where the run was read from a sweep folder (so a
    sweep's ablations of one kind stay apart), else the intervention kinds; ``name``: the run's name."""
    if key == "method":
        return run.sweep_method or run.method
    return run.config.get("name") if key == "name" else flat.get(key, "(absent)")


def _keys(runs: list[Run], by: list[str] | None) -> list[tuple]:
    """Each run's group key: the ``by`` values, or (method, hash of the config without seed, name, output_dir)."""
    flats = [flatten(r.config) for r in runs]
    if not by:
        return [(r.method, _hash({k: v for k, v in r.config.items() if k not in NOT_GROUPED})) for r in runs]
    known = set().union(*flats) | set(DERIVED)
    for key in by:
        if key not in known:
            raise ConfigError("--by", f"no run's config has the key {key!r}{did_you_mean(key, known)}; give a dotted "
                              "config key (e.g. train.lr, interventions.0.kind) or method or name")
    return [tuple(_value(r, k, f) for k in by) for r, f in zip(runs, flats)]


def _name(runs: list[Run]) -> str:
    """The runs' name, or the prefix their names share ("lo" for lo0 and lo1; "loreft" for a sweep's
    loreft-3fa0... and loreft-3b1c...: cut back to a separator), else the first name."""
    names = [str(r.config.get("name", "run")) for r in runs]
    if len(set(names)) == 1:
        return names[0]
    prefix = os.path.commonprefix(names)
    cut = max(prefix.rfind(c) for c in "-_. ")
    prefix = (prefix[:cut] if cut > 0 else prefix).rstrip("-_. ")
    return prefix or names[0]


def _labels(groups: list[list[Run]], keys: list[tuple], by: list[str] | None) -> list[str]:
    """Names, then names with the method, then with the config keys that differ, then with a hash."""
    if by:
        return [str(k[0]) if len(by) == 1 and by[0] in DERIVED else ", ".join(f"{b}={v}" for b, v in zip(by, k))
                for k in keys]
    labels = [_name(g) for g in groups]
    if len(set(labels)) < len(labels):
        labels = [lab if g[0].method in lab else f"{lab} [{g[0].method}]" for lab, g in zip(labels, groups)]
    if len(set(labels)) < len(labels):
        flats = [{k: v for k, v in flatten(g[0].config).items() if k.split(".")[0] not in NOT_GROUPED}
                 for g in groups]
        differ = sorted(k for k in set().union(*flats) if len({str(f.get(k)) for f in flats}) > 1)
        labels = [lab + "".join(f" {k}={f.get(k)}" for k in differ[:3]) for lab, f in zip(labels, flats)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} #{k[1]}" for lab, k in zip(labels, keys)]
    return labels


def group_runs(runs: list[Run], by: list[str] | None = None) -> list[Group]:
    """The runs grouped (see the module docstring), in order of first appearance; each group's eval set
    checked (one eval set per group; groups with the same task section: the same examples)."""
    keys = _keys(runs, by)
    members: dict[tuple, list[Run]] = {}
    for key, run in zip(keys, runs):
        members.setdefault(key, []).append(run)
    order = list(members)
    groups = [Group(label, sorted(members[k], key=lambda r: str(r.seed)))
              for label, k in zip(_labels([members[k] for k in order], order, by), order)]
    for g in groups:
        seen: dict[str, Run] = {}
        for r in g.runs:
            if str(r.seed) in seen:
                raise ReftError(f"group {g.label!r} has two runs with seed {r.seed}: {seen[str(r.seed)].path} and "
                                f"{r.path}; they differ in more than the seed: group by a finer --by, or leave one out")
            seen[str(r.seed)] = r
    check_eval_sets(groups)
    return groups


def _mismatch(what: str, a: Run, b: Run) -> ReftError:
    only_a, only_b = set(a.outcomes) - set(b.outcomes), set(b.outcomes) - set(a.outcomes)
    return ReftError(f"{what}: {a.path} and {b.path} were scored on different eval examples ({len(only_a)} ids "
                     f"only in the first, {len(only_b)} only in the second, e.g. {sorted(only_a or only_b)[0]}); "
                     "evaluate both on the same set (same task section and task.eval_seed) or report them apart")


def check_eval_sets(groups: list[Group]) -> None:
    """One eval set per group, and the same examples in groups whose task sections agree."""
    for g in groups:
        first = g.runs[0]
        for r in g.runs[1:]:
            if r.eval_key != first.eval_key:
                raise ReftError(f"group {g.label!r}: {first.path} and {r.path} were evaluated on different eval sets "
                                "(their task sections differ); group by a finer --by, or report them apart")
        scored = [r for r in g.runs if r.outcomes]
        for r in scored[1:]:
            if set(r.outcomes) != set(scored[0].outcomes):
                raise _mismatch(f"group {g.label!r}", scored[0], r)
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            ra = next((r for r in a.runs if r.outcomes), None)
            rb = next((r for r in b.runs if r.outcomes), None)
            if a.eval_key == b.eval_key and ra and rb and set(ra.outcomes) != set(rb.outcomes):
                raise _mismatch(f"groups {a.label!r} and {b.label!r} (same task section)", ra, rb)


def shared(a: Group, b: Group) -> bool:
    """Whether two groups were scored on one eval set: the same example ids where both recorded
    them, else the same task section."""
    return a.ids == b.ids if a.ids and b.ids else a.eval_key == b.eval_key


__all__ = ["DERIVED", "Group", "NOT_EVAL", "NOT_GROUPED", "Run", "check_eval_sets", "collect", "flatten",
           "group_runs", "load_run", "read_sweep", "shared"]
