"""The cells of a sweep (``reftx sweep``): comma lists on the command line and the grid file format.

Command line: each ``key=value`` is a list of values separated by the commas at the top level of the
value: ``train.lr=1e-3,3e-3`` is two values, ``interventions.0.layers=[1,2],[3]`` two lists,
``task.options.file='a,b.jsonl'`` one quoted string. The cells are the product of the lists in the
order given (the last key varies fastest); a key with one value is set in every cell.

Grid file (``--grid FILE.yaml``): dotted keys mapped to their values (a list is the values swept, a
scalar one value; a key whose value is itself a list is written as a list of lists), and three words:

    seed: [0, 1, 2]                   # a product, as on the command line
    zip:                              # keys that advance together (lists of one length)
      train.lr: [1.0e-3, 3.0e-3]
      train.warmup: [0.0, 0.1]
    methods:                          # per-method blocks: the cells are every block's product
      - method: loreft                # the block's name: sweep.json's "method", what --select picks per
        train.lr: [1.0e-3, 3.0e-3]
      - method: lora
        experiment: lora.yaml         # the block's experiment file (relative to the grid file); default EXP
        lora.lr: [1.0e-4, 3.0e-4]
        zip: {...}                    # a block may zip its own keys

The top-level keys and ``zip`` apply to every block, the command line's lists to every cell. A key
given in two places (the top level and a block, or the grid and the command line) is refused by name,
as are ``name`` and ``output_dir`` (the sweep names each cell's folder). Whether a key exists in the
experiment is checked by the experiment's strict loader (reftx.config.schema.load_experiment), cell by
cell, before anything runs (reftx.recipes.sweep).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reftx.config.schema import Experiment
from reftx.core.convert import load_yaml, parse_value
from reftx.core.errors import ConfigError, unknown

RESERVED = ("zip", "methods")  # words of a grid file's top level
BLOCK_WORDS = ("method", "experiment", "zip")  # words of a methods: block
SET_BY_SWEEP = ("name", "output_dir")
Axis = list[list[str]]  # one dimension of a product: its options, each a list of "key=value" items


@dataclass
class Block:
    """One method's cells: the product of its axes, run on ``experiment`` (None: the sweep's EXP)."""

    method: str | None = None
    experiment: Path | None = None
    axes: list[Axis] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)  # key -> where it was given (for errors)

    def cells(self) -> list[list[str]]:
        """The override lists of the block's cells, in product order (the last axis fastest)."""
        return [[item for option in combo for item in option] for combo in itertools.product(*self.axes)]


def split_values(text: str, key: str = "") -> list[str]:
    """``text`` cut at its top-level commas (not inside [], {} or quotes); see the module docstring."""
    parts, depth, quote, start = [], 0, "", 0
    for i, c in enumerate(text):
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    if len(parts) > 1 and any(not p.strip() for p in parts):
        raise ConfigError(key, f"an empty value in the comma list {text!r}: remove the extra comma (write null "
                               "for a null value)")
    return [p.strip() for p in parts]


def spell(key: str, value: Any) -> str:
    """``key=value`` as the command line spells it: a plain word bare, anything else as JSON (YAML flow)."""
    if isinstance(value, str) and value and parse_value(value) == value and not any(c in value for c in ",[]{}#:'\""):
        return f"{key}={value}"
    return f"{key}={json.dumps(value, ensure_ascii=False)}"


def _check_key(key: Any, where: str, words: tuple[str, ...] = ()) -> str:
    """A dotted config key: its first part is an experiment field (did-you-mean otherwise)."""
    if not isinstance(key, str) or not key.strip() or any(not p for p in key.split(".")):
        raise ConfigError(where, f"a grid key is a dotted config path such as train.lr, got {key!r}")
    first = key.split(".")[0]
    fields = [f.name for f in dataclasses.fields(Experiment)]
    if first in SET_BY_SWEEP:
        raise ConfigError(f"{where}{key}", "is set by the sweep (each cell's folder is {sweep}/{method}-{hash}); "
                                           "choose the sweep's folder with --out")
    if first not in fields:
        raise unknown(f"{where}{key}", first, [*fields, *words], "grid key")
    return key


def cli_axes(items: list[str]) -> tuple[list[Axis], dict[str, str]]:
    """The command line's ``key=a,b,c`` items as product axes, and where each key came from."""
    axes, origins = [], {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise ConfigError(key or item, f"malformed override {item!r}; expected key.path=value or key.path=a,b,c")
        _check_key(key, "")
        if key in origins:
            raise ConfigError(key, "is given twice on the command line: give its values once, as one comma list")
        origins[key] = "the command line"
        axes.append([[f"{key}={v}"] for v in split_values(raw, key)])
    return axes, origins


def _values(key: str, value: Any, where: str) -> list[Any]:
    """A grid key's values: a list as it is (not empty), a scalar as one value."""
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}{key}", "an empty list sweeps nothing: give at least one value")
        return value
    return [value]


def _zip_axis(zipped: Any, where: str, origins: dict[str, str], source: str) -> Axis:
    """One axis from a ``zip:`` mapping: option k takes value k of every key."""
    if not isinstance(zipped, dict) or not zipped:
        raise ConfigError(f"{where}zip", f"must map keys to lists of one length, got {zipped!r}")
    columns = {}
    for key, value in zipped.items():
        _add_origin(_check_key(key, f"{where}zip."), origins, f"{source} {where}zip")
        columns[key] = _values(key, value, f"{where}zip.")
    return zip_axes([[[spell(k, v)] for v in values] for k, values in columns.items()], list(columns), f"{where}zip")


def zip_axes(axes: list[Axis], keys: list[str], where: str) -> Axis:
    """One axis from one axis per key (``keys``), all of one length: option k joins option k of each
    (a grid file's ``zip:`` and ``reftx sweep --then-zip``)."""
    lengths = {k: len(a) for k, a in zip(keys, axes)}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise ConfigError(where, f"zipped keys advance together, so their lists need one length: {shown}")
    return [[item for option in options for item in option] for options in zip(*axes)]


def _add_origin(key: str, origins: dict[str, str], source: str) -> None:
    if key in origins:
        raise ConfigError(key, f"is given twice ({origins[key]} and {source}): give it in one place")
    origins[key] = source


def _axes(section: dict[str, Any], words: tuple[str, ...], where: str, origins: dict[str, str],
          source: str) -> list[Axis]:
    """The product axes of a grid section (its keys, then its zip)."""
    axes = []
    for key, value in section.items():
        if key in words:
            continue
        _add_origin(_check_key(key, where, words), origins, f"{source} {where.rstrip('.')}".strip())
        axes.append([[spell(key, v)] for v in _values(key, value, where)])
    if "zip" in section:
        axes.append(_zip_axis(section["zip"], where, origins, source))
    return axes


def _block(raw: Any, i: int, top: list[Axis], origins: dict[str, str], path: Path) -> Block:
    where = f"methods.{i}."
    if not isinstance(raw, dict):
        raise ConfigError(f"methods.{i}", f"a method block is a mapping with a method: name, got {raw!r}")
    name = raw.get("method")
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\0 "):
        raise ConfigError(f"{where}method", f"names the block with a plain word (it names the cells' folders), "
                                            f"got {name!r}")
    exp = raw.get("experiment")
    if exp is not None and (not isinstance(exp, str) or not exp):
        raise ConfigError(f"{where}experiment", f"is an experiment file path, got {exp!r}")
    mine = dict(origins)
    axes = _axes(raw, BLOCK_WORDS, where, mine, str(path))
    return Block(name, path.parent / exp if exp else None, [*top, *axes], mine)


def load_grid(path: str | Path | None, cli: list[str] = ()) -> list[Block]:
    """The blocks of a sweep: the grid file's (none: one block of the command line's lists alone), each
    with the command line's axes. Every structural mistake is a one-line ConfigError naming its key."""
    axes, origins = cli_axes(list(cli))
    if path is None:
        return [Block(None, None, axes, origins)]
    path = Path(path)
    data = load_yaml(path)
    top = [*axes, *_axes(data, RESERVED, "", origins, str(path))]
    methods = data.get("methods")
    if methods is None:
        return [Block(None, None, top, origins)]
    if not isinstance(methods, list) or not methods:
        raise ConfigError("methods", f"{path}: a list of method blocks ({{method: name, key: [values]}}), got {methods!r}")
    blocks = [_block(raw, i, top, origins, path) for i, raw in enumerate(methods)]
    names = [b.method for b in blocks]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"methods.{i}.method", f"{name!r} names two blocks ({path}): give each its own name")
    return blocks


__all__ = ["Block", "cli_axes", "load_grid", "spell", "split_values", "zip_axes"]
