"""commonsense: the eight-task commonsense suite of LLM-Adapters / ReFT (METHODS.md §7), one dataset
per experiment.

Data: ``{data_dir}/commonsense/<folder>/{train,test}.json`` in the LLM-Adapters format (see
shared/data/SOURCES.md): BoolQ, ARC-Easy, ARC-Challenge and OpenBookQA have both splits; PIQA,
SIQA and WinoGrande only ``test`` (training on them is a clear "data file not found" error). Note
that LLM-Adapters' BoolQ has the question only, no passage.

Every instruction ends with its answer labels, e.g. "Answer format: answer1/answer2/answer3/answer4"
(BoolQ: true/false; PIQA: solution1/solution2; WinoGrande: option1/option2); the target is
"the correct answer is <label>" and the gold is the label.

Scoring (``scoring``):
* ``generate``: greedy generation, then two rules (both reported):
  - ``accuracy``: LLM-Adapters ``commonsense_evaluate.py`` (AGI-Edgerunners/LLM-Adapters 8166572,
    ``extract_answer`` lines 265-296, compared at lines 89-93): the first match of the label
    alternation (``true|false``, ``answer1|...|answer5``, ...) in the stripped output,
    case-sensitive, no word boundaries, must equal the gold. One named difference: reftx's
    alternation is the item's own labels (its "Answer format" line), LLM-Adapters' a fixed set per
    dataset (answer1-answer5 for ARC, OBQA and SIQA); they differ only when an output names a label
    the item does not have ("answer4" on a 3-option ARC question). (reftx first read the label
    after the *last* "the correct answer is", case-insensitively; no published result used it.)
  - ``accuracy_pyreft``: pyreft ``examples/loreft/compute_metrics.py`` (stanfordnlp/pyreft dafd099),
    the scorer of the ReFT paper's commonsense table: ``extract_output`` (lines 84-93) keeps what
    follows the first "the correct answer is " (trigger from ``task_config.py`` line 12; none: an
    empty answer), left-stripped, and lines 231-235 count it correct when it equals the gold after
    ``strip()``. So "the correct answer is true." (a period) and "true, the correct answer is false"
    disagree between the two rules. pyreft searches the decoded prompt + response, reftx the
    response: the same here, since no instruction of the shipped files holds the phrase.
* ``loglik``: no generation; each option's continuation "the correct answer is <label>" is scored
  with teacher forcing (``reftx.eval.scoring.multiple_choice``, summed log-probability) and the most
  likely one is the prediction. The shared prefix adds the same amount to every option, so this
  ranks the labels given the phrase, about one forward pass per option: much cheaper on a CPU.
  Both rules read the same label from such a prediction.
Metrics: ``accuracy`` and ``accuracy_pyreft``; with ``generate`` also ``answered`` (share of outputs
naming a label).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from reftx.core.errors import DataError
from reftx.eval.metrics import mean_float32, register_metric
from reftx.data.examples import Example
from reftx.eval.task import Task, register_task

from ._llm_adapters import Record, Template, read_file, read_hub

FOLDERS = {"boolq": "boolq", "arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge", "openbookqa": "openbookqa",
           "piqa": "piqa", "social_i_qa": "social_i_qa", "winogrande": "winogrande"}
PHRASE = "the correct answer is"
_FORMAT = re.compile(r"Answer format:\s*([\w]+(?:/[\w]+)+)")


def answer_options(instruction: str, where: str) -> list[str]:
    """The labels of "Answer format: a/b/c" at the end of an instruction."""
    found = _FORMAT.findall(instruction)
    if not found:
        raise DataError(f"{where}: no 'Answer format: a/b/...' line in the instruction")
    return found[-1].split("/")


def extract_label(text: str, options: list[str]) -> str | None:
    """LLM-Adapters' rule: the first match of the labels' alternation (in ``options`` order) in the
    stripped output, case-sensitive and without word boundaries; None when no label appears."""
    found = re.findall("|".join(re.escape(o) for o in options), text.strip())
    return found[0] if found else None


@register_metric("commonsense_accuracy", aggregate=mean_float32, key="accuracy")
def commonsense_accuracy(prediction: str, example: Example) -> float:
    """Commonsense accuracy: the first answer label in the output (LLM-Adapters' rule) is the gold."""
    return float(extract_label(prediction, example.meta["options"]) == example.gold)


def pyreft_answer(text: str) -> str | None:
    """pyreft's reading: what follows the first "the correct answer is ", stripped (None without it)."""
    start = text.find(f"{PHRASE} ")
    return None if start < 0 else text[start + len(PHRASE) + 1:].strip()


@register_metric("commonsense_accuracy_pyreft", aggregate=mean_float32, key="accuracy_pyreft")
def commonsense_accuracy_pyreft(prediction: str, example: Example) -> float:
    """Commonsense accuracy by pyreft's rule: the whole text after the first "the correct answer is " is the gold."""
    return float(pyreft_answer(prediction) == str(example.gold).strip())


@register_metric("commonsense_answered", aggregate=mean_float32, key="answered")
def commonsense_answered(prediction: str, example: Example) -> float:
    """Share of commonsense outputs naming any answer label (generated answers only)."""
    return float(extract_label(prediction, example.meta["options"]) is not None)


Dataset = Literal["boolq", "arc_easy", "arc_challenge", "openbookqa", "piqa", "social_i_qa", "winogrande"]


@register_task("commonsense")
class Commonsense(Task):
    """One commonsense dataset in the LLM-Adapters format. Metrics: accuracy (LLM-Adapters' first label) and accuracy_pyreft (pyreft's exact match after "the correct answer is")."""

    @dataclass(frozen=True)
    class Options:
        dataset: Dataset = "boolq"  # which dataset: boolq, arc_easy, arc_challenge, openbookqa, piqa, social_i_qa or winogrande (train split: boolq, arc_*, openbookqa only)
        scoring: Literal["generate", "loglik"] = "generate"  # exact match of generated labels, or option log-likelihood
        template: Template = "plain"  # prompt: plain (the instruction) or alpaca (the LLM-Adapters/ReFT prompt)
        hub_id: str = ""  # a Hub dataset with LLM-Adapters columns: its train/test splits replace the local files (online only)

    splits = ("train", "test")
    metrics = ("commonsense_accuracy", "commonsense_accuracy_pyreft", "commonsense_answered")

    def __init__(self, options: Any = None, data_dir: str | Path | None = None):
        super().__init__(options, data_dir)
        self.generate = self.options.scoring == "generate"  # the runner skips "before" generations otherwise
        if not self.generate:  # every log-likelihood pick names a label: "answered" says nothing
            self.metrics = ("commonsense_accuracy", "commonsense_accuracy_pyreft")

    def load(self, split: str) -> list[Example]:
        if self.options.hub_id:
            records = read_hub(self.options.hub_id, split)
        else:
            records = read_file(self.data_dir / "commonsense" / FOLDERS[self.options.dataset] / f"{split}.json")
        return [self._example(r) for r in records]

    def _example(self, r: Record) -> Example:
        where = f"{r.file}:{r.line}"
        options = answer_options(r.instruction, where)
        if r.answer not in options:
            raise DataError(f"{where}: answer {r.answer!r} is not one of the options {options}")
        return Example(r.prompt(self.options.template), f"{PHRASE} {r.answer}", answer=r.answer,
                       meta={"options": options, "file": r.file, "line": r.line})

    def evaluate(self, model: Any, tokenizer: Any, examples: list[Example], cfg: Any, chat: bool,
                 show_progress: bool = True, references: Any = None) -> tuple[dict[str, float], list[str]]:
        """Generate (``scoring: generate``) or pick the most likely label (``loglik``), then ``score``."""
        if self.options.scoring == "generate":
            return super().evaluate(model, tokenizer, examples, cfg, chat, show_progress)
        from reftx.eval.scoring import multiple_choice

        options = [ex.meta["options"] for ex in examples]
        picks = multiple_choice(model, tokenizer, [ex.prompt for ex in examples],
                                [[f"{PHRASE} {o}" for o in opts] for opts in options], chat, cfg.batch_size)
        preds = [f"{PHRASE} {opts[i]}" for opts, i in zip(options, picks)]
        return self.score(preds, examples), preds
