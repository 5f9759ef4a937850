"""Examples: what a task turns its data into, and what encoding, training and scoring consume."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One prompt and its gold response.

    prompt: the user-facing prompt text (the chat template, if any, is applied later).
    target: the response trained on with teacher forcing.
    answer: what ``score`` compares against (defaults to ``target``).
    info:   per-example numbers passed to primitives and objectives as ``example_info``
            (e.g. ``gate_label`` 1 forget / 0 retain for GRUN); every example of a batch
            must have the same keys.
    meta:   anything else the task keeps (source file and line, ids, options...).
    guidance: natural-language guidance about the response (a reference answer, a verdict), for
            objectives that score the response with and without it in the prompt (reftx.train.objectives.nlft);
            ``reftx.data.encoding.encode`` puts it in front of the prompt only when asked.
    """

    prompt: str
    target: str = ""
    answer: Any = None
    info: dict[str, float] = field(default_factory=dict, compare=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    guidance: str = field(default="", compare=False)

    @property
    def gold(self) -> Any:
        return self.target if self.answer is None else self.answer


__all__ = ["Example"]
