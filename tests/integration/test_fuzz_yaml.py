"""Fuzz the YAML surface: seeded, deterministic perturbations of every shipped experiment
(``experiments/**/*.yaml``) go through what ``reftx validate`` and ``reftx plan`` do (load_experiment,
recipes.validate, the resolved config, its hash and the plan table; offline, no weights, no
training). Each case must end in a valid plan or in a ReftError whose message names a field (or
the file); any other exception is a failure. All failures are collected and reported together.

Perturbations: wrong types, missing keys, extreme numbers (0, -1, 1e308, nan, inf), unicode,
very long strings, markup, lists where scalars go and scalars where lists go, unknown keys.
Data files are read once per (task, options, split) and reused (``Task.examples`` memoised for
the test), so about a minute on 2 cores.
"""
from __future__ import annotations

import copy
import io
import random
import re
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import constants as hub_constants
from rich.console import Console

from reftx.config.hashing import config_hash
from reftx.config.schema import load_experiment
from reftx.core.convert import dump_yaml, load_yaml
from reftx.core.errors import ConfigError, ReftError
from reftx.eval.task import Task
from reftx.recipes import registry as recipes
from reftx.engine.plan_table import plan_table

REPO = Path(__file__).resolve().parents[2]
FILES = sorted((REPO / "experiments").rglob("*.yaml"))
PER_FILE = 20
EXTREMES = [0, -1, 1e308, -1e308, float("nan"), float("inf"), float("-inf"), 2**63, 0.5]
STRINGS = ["ünïcödé 漢字 🙂 \u202e", "x" * 4096, "", " ", "[/]", "[bold]", "../..", "null", "\t\n", "\x00"]
OTHER_TYPES = [7, 2.5, True, "seven", [1, 2], {"a": 1}, None]
OPS = ("type", "drop", "extreme", "string", "wrap", "unwrap", "unknown")


def _nodes(tree: Any, path: tuple = ()) -> list[tuple]:
    """The path of every node below the root (dict keys and list indices)."""
    out = [path] if path else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _nodes(v, (*path, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _nodes(v, (*path, i))
    return out


def _at(tree: Any, path: tuple) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def perturb(data: dict[str, Any], rng: random.Random) -> tuple[dict[str, Any], str]:
    """One to three perturbations of ``data`` (a copy) and their description, e.g. ``train.lr <- nan``."""
    data, said = copy.deepcopy(data), []
    for _ in range(rng.choice((1, 1, 2, 3))):
        if not _nodes(data):
            break
        said.append(_perturb_once(data, rng))
    return data, "; ".join(said)


def _perturb_once(data: dict[str, Any], rng: random.Random) -> str:
    """Change ``data`` in place at one random node; say what was done."""
    path = rng.choice(_nodes(data))
    parent, key = _at(data, path[:-1]), path[-1]
    value, op = parent[key], rng.choice(OPS)
    if op == "drop":
        del parent[key]
        return f"{_dotted(path)} removed"
    if op == "unknown":
        target = value if isinstance(value, dict) else parent if isinstance(parent, dict) else data
        target["zz_ünknown"] = copy.deepcopy(rng.choice(OTHER_TYPES))
        return f"unknown key near {_dotted(path)}"
    if op == "type":
        new = copy.deepcopy(rng.choice([v for v in OTHER_TYPES if type(v) is not type(value)]))
    elif op == "extreme":
        new = rng.choice(EXTREMES)
    elif op == "string":
        new = rng.choice(STRINGS)
    elif op == "wrap":
        new = [value]
    elif isinstance(value, list):  # unwrap: a scalar where a list goes
        new = value[0] if value else "x"
    elif isinstance(value, dict):
        new = next(iter(value.values()), "x")
    else:
        new = {"value": value}
    parent[key] = new
    return f"{_dotted(path)} <- {op} {str(new)[:40]!r}"


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def names_a_field(err: ReftError) -> bool:
    """A ConfigError carries its field; another ReftError names a dotted key, a file or a path."""
    if isinstance(err, ConfigError):
        return bool(err.field) and str(err).startswith(f"{err.field}: ")
    return re.search(r"\b[a-z_]+\.[a-z_0-9.]+\b|/", str(err)) is not None


def plan_as_printed(path: Path) -> None:
    """What ``reftx plan`` prints, into a buffer: the config, its hash and the groups."""
    exp = load_experiment(path)
    groups = recipes.validate(exp, notices=[])
    console = Console(file=io.StringIO(), width=100)
    console.print(dump_yaml(exp.to_dict()), markup=False)
    console.rule(config_hash(exp.to_dict()))
    console.print(plan_table(groups))


@pytest.fixture
def data_once(monkeypatch):
    """Task.examples memoised by (task, options, data dir, split, n, seed): a data file is parsed
    once, while every case still builds its task, options and splits."""
    real, seen = Task.examples, {}

    def examples(self: Task, split: str, n: int | None = None, seed: int = 0) -> list:
        key = (type(self), repr(self.options), str(self._data_dir), split, n, seed)
        if key not in seen:
            seen[key] = real(self, split, n, seed)
        return seen[key]

    monkeypatch.setattr(Task, "examples", examples)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # a fuzzed model.name is never looked up online


def test_fuzz_every_shipped_experiment(tmp_path, data_once, capsys):
    failures, outcomes = [], {"plan": 0, "error": 0}
    for file in FILES:
        base = load_yaml(file)
        rel = file.relative_to(REPO)
        for i in range(PER_FILE):
            data, what = perturb(base, random.Random(f"{rel}:{i}"))
            case = tmp_path / f"{i}" / file.name  # the same stem: the run name and prerequisites as shipped
            case.parent.mkdir(exist_ok=True)
            case.write_text(dump_yaml(data), encoding="utf-8")
            try:
                plan_as_printed(case)
                outcomes["plan"] += 1
            except ReftError as e:
                if names_a_field(e):
                    outcomes["error"] += 1
                else:
                    failures.append(f"{rel} #{i} ({what}): {type(e).__name__} names no field: {str(e)[:300]}")
            except Exception as e:  # noqa: BLE001 - every other exception is what this test looks for
                failures.append(f"{rel} #{i} ({what}): {type(e).__name__}: {str(e)[:300]}")
    total = outcomes["plan"] + outcomes["error"] + len(failures)
    with capsys.disabled():
        print(f"\nfuzz: {total} cases over {len(FILES)} experiments: {outcomes['plan']} valid plans, "
              f"{outcomes['error']} field-naming errors, {len(failures)} failures")
    assert total == PER_FILE * len(FILES)
    assert not failures, f"{len(failures)} of {total} cases failed:\n" + "\n".join(failures)
