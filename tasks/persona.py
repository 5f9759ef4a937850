"""persona: a small answer-style dataset we wrote for the quickstart (tasks/data/persona.jsonl).

Every response starts with "Arr, matey! " and ends with "Yo ho ho!"; the eval
prompts are held-out topics, so the metrics show whether the *style* was learned
and generalises, which a 135M model can do in a few CPU minutes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchmetrics.aggregation import MeanMetric

from reftx.errors import DataError
from reftx.task import Example, Task, read_jsonl, register_task, require_keys

DATA = Path(__file__).resolve().parent / "data"


@register_task("persona")
class Persona(Task):
    """Pirate-persona answers. Metrics: share of answers that open and close in the persona."""

    @dataclass(frozen=True)
    class Options:
        file: str = ""  # a JSONL file with prompt/response/split; empty: the shipped persona.jsonl

    splits = ("train", "eval")

    def load(self, split: str) -> list[Example]:
        path = Path(self.options.file) if self.options.file else DATA / "persona.jsonl"
        out = []
        for lineno, rec in read_jsonl(path):
            require_keys(rec, ("prompt", "response", "split"), f"{path}:{lineno}")
            if rec["split"] not in self.splits:
                raise DataError(f"{path}:{lineno}: split must be one of {self.splits}, got {rec['split']!r}")
            if rec["split"] == split:
                out.append(Example(rec["prompt"], rec["response"], meta={"line": lineno}))
        return out

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        opens, closes = MeanMetric(), MeanMetric()
        for text in predictions:
            t = text.strip().lower()
            opens.update(torch.tensor(float(t.startswith("arr"))))
            closes.update(torch.tensor(float("yo ho ho" in t)))
        return {"persona_open": float(opens.compute()), "persona_close": float(closes.compute())}
