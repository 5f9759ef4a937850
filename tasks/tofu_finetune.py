"""tofu_qa: TOFU's first stage (Maini et al. 2024) — finetune the base model on the fictitious authors.

Unlearning on TOFU starts from a model that knows the 200 fictitious authors of ``full.json``
(METHODS.md §4); the retain-only model (the same recipe without the forget authors) is the
reference of Forget Quality. This task serves both: QA pairs of ``full.json`` (prompt = question,
target = answer) of the kept authors.

Options: ``retain_authors: N`` gives the reduced TOFU of tasks/tofu.py: authors 0..N-1 plus the
authors of ``forget`` (null: all 200 authors); ``retain_only: true`` leaves the forget authors out
(the retain-only model). Splits: ``train`` (every kept pair) and ``eval`` (the same pairs: the
metric is how well the trained questions are answered, ROUGE-L recall of greedy answers).

The recipe ``reftx tofu-finetune`` (reftx/recipes/tofu_stage1.py) trains the experiment (a LoRA
adapter, ``lora: {mode: only}``), then merges the adapter into the weights and writes an ordinary
Hugging Face checkpoint (model + tokenizer, ``save_pretrained``) to ``{run_dir}/model``, which
unlearning experiments name as ``model.name``:

    reftx tofu-finetune experiments/unlearning/tofu_finetune.yaml [key=value ...]

This file is the task only (data and metric); it never trains or loads a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reftx.core.errors import ConfigError
from reftx.data.examples import Example
from reftx.eval.task import Task, register_task

from .tofu import N_AUTHORS, author_of, forget_authors, read_qa


@register_task("tofu_qa")
class TofuQA(Task):
    """Question/answer pairs of TOFU ``full.json`` (optionally reduced); metric ROUGE-L recall."""

    @dataclass(frozen=True)
    class Options:
        retain_authors: int | None = None  # reduced TOFU: authors 0..N-1 plus the forget set's; null: all 200
        forget: Literal["forget01", "forget05", "forget10"] = "forget01"  # the forget set unlearned later
        retain_only: bool = False  # leave the forget set's authors out: the retain-only model

        def __post_init__(self) -> None:
            if self.retain_authors is not None and not 1 <= self.retain_authors <= N_AUTHORS - 20:
                raise ConfigError("retain_authors", f"must be in 1..180 (or null), got {self.retain_authors}")

    splits = ("train", "eval")
    metrics = ("rougel_recall",)  # tasks/tofu_metrics.py

    def load(self, split: str) -> list[Example]:
        o, forget = self.options, forget_authors(self.options.forget)
        out = []
        for q in read_qa(self.data_dir / "tofu" / "full.json", ("question", "answer")):
            a = author_of(q)
            kept = a in forget or o.retain_authors is None or a < o.retain_authors
            if kept and not (o.retain_only and a in forget):
                out.append(Example(q.question, q.answer, meta={"file": q.file, "line": q.line, "index": q.index,
                                                                 "author": a}))
        return out
