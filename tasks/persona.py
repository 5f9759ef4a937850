"""persona: a small answer-style dataset we wrote for the quickstart (tasks/data/persona.jsonl).

Every response starts with "Arr, matey! " and ends with "Yo ho ho!"; the eval
prompts are held-out topics, so the metrics show whether the *style* was learned
and generalises, which a 135M model can do in a few CPU minutes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reftx.core.errors import DataError
from reftx.eval.metrics import mean_float32, register_metric
from reftx.data.examples import Example
from reftx.eval.task import Task, read_jsonl, register_task, require_keys

DATA = Path(__file__).resolve().parent / "data"


@register_metric("persona_open", aggregate=mean_float32)
def persona_open(prediction: str, example: Example) -> float:
    """Share of answers that open in the persona: the stripped, lowercased answer starts with "arr"."""
    return float(prediction.strip().lower().startswith("arr"))


@register_metric("persona_close", aggregate=mean_float32)
def persona_close(prediction: str, example: Example) -> float:
    """Share of answers that close in the persona: "yo ho ho" anywhere in the lowercased answer."""
    return float("yo ho ho" in prediction.strip().lower())


@register_task("persona")
class Persona(Task):
    """Pirate-persona answers. Metrics: share of answers that open and close in the persona, and
    distinct_2 (reftx.eval.metrics), so answers that loop on persona phrases do not pass for a persona."""

    @dataclass(frozen=True)
    class Options:
        file: str = ""  # a JSONL file with prompt/response/split; empty: the shipped persona.jsonl

    splits = ("train", "eval")
    metrics = ("persona_open", "persona_close", "distinct_2")  # distinct_2: a loop of persona phrases is no persona

    def load(self, split: str) -> list[Example]:
        path = Path(self.options.file) if self.options.file else DATA / "persona.jsonl"
        out = []
        for lineno, rec in read_jsonl(path):
            require_keys(rec, ("prompt", "response", "split"), f"{path}:{lineno}")
            if rec["split"] not in self.splits:
                raise DataError(f"{path}:{lineno}: split must be one of {self.splits}, got {rec['split']!r}")
            if rec["split"] == split:
                out.append(Example(rec["prompt"], rec["response"], meta={"file": str(path), "line": lineno}))
        return out
