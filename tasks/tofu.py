"""tofu_unlearn: TOFU (Maini et al. 2024) forget/retain sets for unlearning and its evaluation (METHODS.md §4).

Data: ``{data_dir}/tofu`` (see shared/data/SOURCES.md). ``forget01/05/10.json`` are one JSON array
of {prompt, response}; ``full.json`` and ``retain99/95/90.json`` are several JSON arrays (one per
line) of {question, answer}; the retain set of forgetNN is its complement retain(100−NN).
``idontknow.jsonl`` holds one refusal per line (plain text, not JSON).

Reduced TOFU (``retain_authors: N``): TOFU has 200 fictitious authors of 20 questions each, in
file order; forget01/05/10 are the last 2/10/20 authors. With N set, the retain set is only the
first N authors (20·N questions): the stage-1 model (tasks/tofu_finetune.py) was finetuned on
just these and the forget set's authors.

Splits (every example carries ``info["gate_label"]``: 1 forget, 0 retain, which GRUN's gate loss
and the unlearning objectives read):
* ``train``: the whole forget set plus ``n_retain`` retain examples (default: as many as the forget
  set), a subset fixed by ``seed``, drawn from the retain questions that split ``tofu`` does *not*
  evaluate (held out by construction: ``eval_retain``). The unlearning objectives pair them in
  batches (reftx.data.pairing: each forget example with a retain one drawn at random, as
  open-unlearning's ForgetRetainDataset), so ``n_retain`` is the size of the retain pool. With
  ``idk: true`` every forget target is replaced by a random line of idontknow.jsonl (the IDK
  objective); the gold answer stays the real one.
* ``retain``: the whole retain set; ``forget``: the whole forget set (real answers).
* ``eval``: the forget set plus as many retain examples, drawn from those *not* in ``train``.
* ``tofu``: TOFU's evaluation sets (``meta["set"]``): ``forget`` (forgetNN_perturbed.json, the
  first ``n_forget_eval``), ``retain`` (retain_perturbed.json rows of retain authors, never in
  ``train``; open-unlearning instead trains on all of retainNN, these rows included),
  ``real_authors`` and ``world_facts`` (their _perturbed files), ``n_utility`` of each, fixed by
  ``seed``. Each carries its paraphrased and perturbed answers in ``meta``; evaluating it gives
  TOFU's metrics (tasks/tofu_metrics.py: answer probability, truth ratio, Forget Quality against
  ``retain_model``, Model Utility, mean gate value per set). With ``memorization: true`` it also
  holds set ``holdout`` (holdoutNN.json: questions on authors outside TOFU's training data, the
  first ``n_forget_eval``), and the evaluation adds open-unlearning's exact memorization,
  extraction strength, MIA AUCs (forget vs holdout) and privleak (docs/protocols.md).

Metric of the other splits: ROUGE-L recall of the generated answer against the gold answer
(longest common subsequence over the gold length, tokenised and stemmed as TOFU's scorer does:
``rouge_l_recall``), overall and per set (``rougeL_recall_forget`` / ``rougeL_recall_retain``);
split ``tofu`` uses the same recall.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from reftx.core.errors import ConfigError, DataError
from reftx.eval.metrics import score_metrics
from reftx.data.examples import Example
from reftx.eval.task import Loader, Task, read_text, register_task

from .tofu_metrics import SET_METRICS, evaluate_tofu
from .unlearning_metrics import MEMORIZATION_METRICS

RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
IDK_FILE = "idontknow.jsonl"
AUTHOR_QA, N_AUTHORS = 20, 200  # TOFU: 200 authors x 20 questions, grouped by author in file order
FORGET_AUTHORS = {"forget01": 2, "forget05": 10, "forget10": 20}  # the last authors of full.json
_WS = re.compile(r"\s*")


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    file: str
    line: int
    index: int  # position of the record in its file


def read_records(path: Path) -> list[tuple[int, int, Any]]:
    """(line, index, record) of every record in a file of one or more JSON arrays (one array
    pretty-printed over many lines, or one array per line). Malformed JSON raises DataError
    naming file:line."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    text = read_text(path)
    dec = json.JSONDecoder()
    out: list[tuple[int, int, Any]] = []
    seen, lineno = 0, 1  # line numbers counted incrementally: the files hold thousands of records

    def line(pos: int) -> int:
        nonlocal seen, lineno
        lineno += text.count("\n", seen, pos)
        seen = pos
        return lineno

    def skip(pos: int) -> int:
        return _WS.match(text, pos).end()

    def expect(pos: int, chars: str) -> str:
        if pos >= len(text) or text[pos] not in chars:
            got = "end of file" if pos >= len(text) else repr(text[pos])
            raise DataError(f"{path}:{line(min(pos, len(text)))}: expected {' or '.join(map(repr, chars))}, got {got}")
        return text[pos]

    pos = skip(0)
    while pos < len(text):
        expect(pos, "[")
        pos = skip(pos + 1)
        if pos < len(text) and text[pos] == "]":  # an empty array
            pos = skip(pos + 1)
            continue
        while True:
            try:
                rec, end = dec.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
            out.append((line(pos), len(out), rec))
            pos = skip(end)
            if expect(pos, ",]") == "]":
                pos = skip(pos + 1)
                break
            pos = skip(pos + 1)
    return out


def read_qa(path: Path, keys: tuple[str, str]) -> list[QA]:
    """Question/answer pairs from ``path`` whose records use ``keys`` (e.g. prompt/response)."""
    out = []
    for line, index, rec in read_records(path):
        where = f"{path}:{line} (record {index})"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        bad = [k for k in keys if not isinstance(rec.get(k), str)]
        if bad:
            raise DataError(f"{where}: missing or non-string field(s) {', '.join(bad)}")
        out.append(QA(rec[keys[0]], rec[keys[1]], path.name, line, index))
    return out


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    lines = [ln.strip() for ln in read_text(path).splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise DataError(f"{path}: no lines")
    return lines


def author_of(q: QA) -> int:
    """The TOFU author (0..199) of a record of full/retainNN (file order) or forgetNN (the last authors)."""
    forget = FORGET_AUTHORS.get(Path(q.file).stem)
    return (N_AUTHORS - forget) + q.index // AUTHOR_QA if forget else q.index // AUTHOR_QA


def forget_authors(forget: str) -> range:
    """The authors of forget01/05/10: the last 2/10/20 of full.json."""
    return range(N_AUTHORS - FORGET_AUTHORS[forget], N_AUTHORS)


@register_task("tofu_unlearn")
class TofuUnlearn(Task):
    """TOFU forget/retain data for unlearning. Metrics: ROUGE-L recall per set; split tofu: TOFU's metrics."""

    @dataclass(frozen=True)
    class Options:
        forget: Literal["forget01", "forget05", "forget10"] = "forget01"  # forget set; retain = the rest
        n_retain: int | None = None  # retain examples in the train split (the pool the forget examples are paired with), never one split tofu evaluates; null: as many as the forget set
        idk: bool = False  # train on "I don't know" answers for the forget set (idontknow.jsonl)
        seed: int = 0  # seed of the retain subset, of the IDK answers and of the utility subsets
        retain_authors: int | None = None  # reduced TOFU: the retain set is authors 0..N-1 only; null: all
        n_forget_eval: int | None = None  # split tofu: the first N forget (and holdout) questions; null: all
        n_utility: int | None = 40  # split tofu: questions per utility set (retain, real/world); null: all
        retain_model: str | None = None  # split tofu: path of the retain-only model, for Forget Quality (null: none)
        truth_ratio: Literal["geometric", "arithmetic"] = "geometric"  # split tofu: P(false) as the geometric mean of the perturbed answers' normalised probabilities (open-unlearning) or the arithmetic mean (a TOFU script variant)
        memorization: bool = False  # split tofu: also open-unlearning's exact memorization, extraction strength, MIA AUCs (forget vs holdoutNN) and privleak (with retain_model)

        def __post_init__(self) -> None:
            for name in ("n_retain", "retain_authors", "n_forget_eval", "n_utility"):
                value = getattr(self, name)
                if value is not None and value < 1:
                    raise ConfigError(name, f"must be >= 1 (or null), got {value}")

    splits = ("train", "retain", "forget", "eval", "tofu")
    metrics = SET_METRICS + MEMORIZATION_METRICS  # rougel_recall on every split; split tofu the rest

    def __init__(self, options: Any = None, data_dir: str | Path | None = None):
        super().__init__(options, data_dir)
        self._sets: tuple[list[QA], list[QA]] | None = None

    def _forget_retain(self) -> tuple[list[QA], list[QA]]:
        if self._sets is None:
            root = self.data_dir / "tofu"
            forget = read_qa(root / f"{self.options.forget}.json", ("prompt", "response"))
            retain = read_qa(root / f"{RETAIN_OF[self.options.forget]}.json", ("question", "answer"))
            if self.options.retain_authors is not None:
                retain = [q for q in retain if author_of(q) < self.options.retain_authors]
            self._sets = forget, retain
        return self._sets

    def eval_retain(self) -> list[Perturbed]:
        """Split ``tofu``'s retain questions: the retain_perturbed.json rows whose question is in the
        retain set, ``n_utility`` of them fixed by ``seed``. The train split never holds them."""
        o = self.options
        retain_q = {q.question for q in self._forget_retain()[1]}
        rows = [r for r in read_perturbed(self.data_dir / "tofu" / "retain_perturbed.json", True)
                if r.question in retain_q]
        return _pick(rows, o.n_utility, f"{o.seed}:tofu-retain")

    def _retain_subsets(self, retain: list[QA], n_forget: int) -> tuple[list[int], list[int]]:
        """Indices of the train retain subset (drawn from the questions split tofu does not
        evaluate, so the two are disjoint by construction) and of the eval retain subset (not in train)."""
        held = {r.question for r in self.eval_retain()}
        order = list(range(len(retain)))
        random.Random(f"{self.options.seed}:tofu-retain").shuffle(order)
        pool = [i for i in order if retain[i].question not in held]
        n = self.options.n_retain or n_forget
        if n > len(pool):
            raise ConfigError("task.options.n_retain", f"{n} retain examples asked, but the retain set has "
                              f"{len(retain)} and {len(retain) - len(pool)} of them are split tofu's retain "
                              f"questions (held out of training): at most {len(pool)}; lower n_retain, "
                              f"n_utility or raise retain_authors")
        train = set(pool[:n])
        return sorted(train), sorted([i for i in order if i not in train][:n_forget])

    def load(self, split: str) -> list[Example]:
        if split == "tofu":
            return self._tofu_sets()
        forget, retain = self._forget_retain()
        if split == "forget":
            return [_example(q, 1.0) for q in forget]
        if split == "retain":
            return [_example(q, 0.0) for q in retain]
        train_idx, eval_idx = self._retain_subsets(retain, len(forget))
        if split == "eval":
            return [_example(q, 1.0) for q in forget] + [_example(retain[i], 0.0) for i in eval_idx]
        if split == "train":
            if self.options.idk:
                idk = read_lines(self.data_dir / "tofu" / IDK_FILE)
                rng = random.Random(f"{self.options.seed}:tofu-idk")
                out = [_example(q, 1.0, target=rng.choice(idk)) for q in forget]
            else:
                out = [_example(q, 1.0) for q in forget]
            return out + [_example(retain[i], 0.0) for i in train_idx]
        raise DataError(f"tofu_unlearn has no split {split!r}")  # pragma: no cover - checked by Task.examples

    def _tofu_sets(self) -> list[Example]:
        """TOFU's evaluation sets (split ``tofu``), each example tagged with its set in ``meta``."""
        o, root = self.options, self.data_dir / "tofu"
        forget = read_perturbed(root / f"{o.forget}_perturbed.json", True)[: o.n_forget_eval]
        out = [_tofu_example(r, "forget") for r in forget]
        for name, rows in (("retain", self.eval_retain()),
                           ("real_authors", _pick(read_perturbed(root / "real_authors_perturbed.json"), o.n_utility,
                                                  f"{o.seed}:tofu-real_authors")),
                           ("world_facts", _pick(read_perturbed(root / "world_facts_perturbed.json"), o.n_utility,
                                                 f"{o.seed}:tofu-world_facts"))):
            if not rows:
                raise DataError(f"tofu: no {name} questions to evaluate (retain_authors too small?)")
            out += [_tofu_example(r, name) for r in rows]
        if o.memorization:  # MIA non-members: as many holdout questions as forget questions
            holdout = read_qa(root / f"holdout{o.forget[-2:]}.json", ("question", "answer"))[: o.n_forget_eval]
            out += [Example(q.question, q.answer, info={"gate_label": 0.0},
                            meta={"set": "holdout", "file": q.file, "line": q.line, "index": q.index})
                    for q in holdout]
        return out

    def reference_models(self) -> dict[str, str]:
        """``{"retain_model": path}`` when ``retain_model`` is set: the reference of Forget Quality."""
        return {"retain_model": self.options.retain_model} if self.options.retain_model else {}

    def evaluate(self, model: Any, tokenizer: Any, examples: list[Example], cfg: Any, chat: bool,
                 show_progress: bool = True, references: dict[str, Loader] | None = None,
                 ) -> tuple[dict[str, float], list[str]]:
        """Split ``tofu``: TOFU's metrics (tasks/tofu_metrics.py; ``references["retain_model"]``
        loads the retain model when its values are not cached); other splits: ROUGE-L recall."""
        if not any("perturbed" in ex.meta for ex in examples):
            return super().evaluate(model, tokenizer, examples, cfg, chat, show_progress)

        return evaluate_tofu(model, tokenizer, examples, cfg, chat, self.options.retain_model,
                             f"{self.options.forget}:{self.options.n_forget_eval}", show_progress,
                             self.options.truth_ratio, (references or {}).get("retain_model"),
                             self.options.memorization)

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        """``rougeL_recall`` overall and per set (``rougeL_recall_forget`` / ``_retain``, by gate label)."""
        return score_metrics(["rougel_recall"], predictions, examples, by=_set_of, key="{metric}_{group}")


@dataclass(frozen=True)
class Perturbed:
    """A row of a TOFU *_perturbed file: the answer, a paraphrase of it and wrong (perturbed) answers.
    real_authors/world_facts have no paraphrase: the answer itself takes its place (as in TOFU)."""

    question: str
    answer: str
    paraphrased: str
    perturbed: tuple[str, ...]
    file: str
    line: int
    index: int


def read_perturbed(path: Path, paraphrased: bool = False) -> list[Perturbed]:
    """Rows of a *_perturbed file: question, answer, perturbed_answer (a list of strings) and, with
    ``paraphrased``, paraphrased_answer."""
    out = []
    for line, index, rec in read_records(path):
        where = f"{path}:{line} (record {index})"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        keys = ("question", "answer", "paraphrased_answer") if paraphrased else ("question", "answer")
        bad = [k for k in keys if not isinstance(rec.get(k), str)]
        pert = rec.get("perturbed_answer")
        if not isinstance(pert, list) or not pert or not all(isinstance(x, str) for x in pert):
            bad.append("perturbed_answer (a non-empty list of strings)")
        if bad:
            raise DataError(f"{where}: missing or malformed field(s) {', '.join(bad)}")
        para = rec["paraphrased_answer"] if paraphrased else rec["answer"]
        out.append(Perturbed(rec["question"], rec["answer"], para, tuple(pert), path.name, line, index))
    return out


def _pick(rows: list[Perturbed], n: int | None, seed: str) -> list[Perturbed]:
    """``n`` of ``rows`` (all when n is None or not smaller), in file order, fixed by ``seed``."""
    if n is None or n >= len(rows):
        return rows
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), n))]


def _set_of(example: Example) -> str | None:
    return {1.0: "forget", 0.0: "retain"}.get(example.info.get("gate_label"))


def _tofu_example(r: Perturbed, name: str) -> Example:
    return Example(r.question, r.answer, info={"gate_label": 1.0 if name == "forget" else 0.0},
                   meta={"set": name, "paraphrased": r.paraphrased, "perturbed": list(r.perturbed),
                         "file": r.file, "line": r.line, "index": r.index})


def _example(q: QA, gate_label: float, target: str | None = None) -> Example:
    return Example(q.question, q.answer if target is None else target, answer=q.answer,
                   info={"gate_label": gate_label},
                   meta={"file": q.file, "line": q.line, "index": q.index,
                         "set": "forget" if gate_label else "retain"})
