"""Per-example outcomes: every metric's value on every evaluated example, so runs that share an eval
set can be compared example by example (paired tests: ``reftx report``, reftx.runs.report).

``score_metrics`` (reftx.eval.metrics) computes each metric's per-example values before it
aggregates them; while :func:`recording` is open it also records them here, under the key each
value is aggregated into (``accuracy``, ``svamp/accuracy_llm_adapters``, ``rougeL_recall_forget``),
for the examples being recorded (matched by identity, so a task may score subsets of them). A task
needs no code for this: whatever it reports through ``score_metrics`` is recorded. What it reports
otherwise is a set-level number with no per-example value (TOFU's ``forget_quality``,
``model_utility``, ``privleak``, ``gate_*``); a report compares those over seeds only.

A value is what the metric's ``compute`` returned, made JSON-safe (tuples become lists): a number
for a metric aggregated by the mean, and for any other aggregate the ingredients it takes (logs'
F1 and AUROC: ``[predicted class, gold class, p(anomaly)]``), whose metric name is kept in
``aggregates`` so that a paired bootstrap can re-aggregate resampled examples.

``reftx.eval.generate.evaluate`` (what every command evaluates through) opens the recording and
returns :class:`Predictions`: the predictions as before (a list of strings), carrying the outcomes
to ``samples.jsonl`` (reftx.recipes.summary.write_samples), each row with its :func:`example_ids`.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_ACTIVE: ContextVar[Recorder | None] = ContextVar("reftx_outcomes", default=None)


def example_ids(examples: Sequence[Any]) -> list[str]:
    """A stable id of each example: the first 12 hex digits of the SHA-256 of its prompt, target and
    gold answer, so the same eval example has the same id in every run (whatever its order or the
    file it came from); a repeat of the same content within ``examples`` gets ``-2``, ``-3``, ...
    in order of appearance."""
    seen: dict[str, int] = {}
    out = []
    for ex in examples:
        text = json.dumps([ex.prompt, ex.target, str(ex.gold)], ensure_ascii=False)
        base = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out


def plain(value: Any) -> Any:
    """``value`` as JSON data: tuples and lists element-wise, numbers as int/float (bools as 0/1),
    dicts by key; anything else (a tensor's item, a numpy scalar) through ``float`` or ``str``."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class Recorder:
    """The outcomes of one evaluation: ``rows[i]`` maps a metric key to example i's value;
    ``aggregates`` maps the keys whose aggregate is not the mean to their metric's name."""

    def __init__(self, examples: Sequence[Any]):
        self.rows: list[dict[str, Any]] = [{} for _ in examples]
        self.aggregates: dict[str, str] = {}
        self._index: dict[int, list[int]] = {}
        for i, ex in enumerate(examples):
            self._index.setdefault(id(ex), []).append(i)

    def add(self, key: str, name: str, averaged: bool, examples: Sequence[Any], values: Sequence[Any]) -> None:
        hit = False
        for ex, value in zip(examples, values, strict=True):
            if value is None:
                continue
            for i in self._index.get(id(ex), ()):
                self.rows[i][key] = plain(value)
                hit = True
        if hit and not averaged:
            self.aggregates[key] = name


@contextmanager
def recording(examples: Sequence[Any]) -> Iterator[Recorder]:
    """Record the per-example values ``score_metrics`` computes for ``examples`` within the block."""
    rec = Recorder(examples)
    token = _ACTIVE.set(rec)
    try:
        yield rec
    finally:
        _ACTIVE.reset(token)


def record(key: str, name: str, averaged: bool, examples: Sequence[Any], values: Sequence[Any]) -> None:
    """Record ``values`` (one per example, None: not applicable) of metric ``name`` under ``key`` when
    a recording is open (score_metrics calls this); ``averaged``: its aggregate is the mean."""
    rec = _ACTIVE.get()
    if rec is not None:
        rec.add(key, name, averaged, examples, values)


class Predictions(list):
    """An evaluation's predictions (a list, as ``Task.evaluate`` returns them) carrying each example's
    outcomes (``outcomes[i]``: metric key -> value) and ``aggregates`` (see the module docstring)."""

    def __init__(self, predictions: Sequence[Any], outcomes: list[dict[str, Any]], aggregates: dict[str, str]):
        super().__init__(predictions)
        if len(outcomes) != len(self):
            raise ValueError(f"{len(outcomes)} outcome rows for {len(self)} predictions")
        self.outcomes = outcomes
        self.aggregates = aggregates


__all__ = ["Predictions", "Recorder", "example_ids", "plain", "record", "recording"]
