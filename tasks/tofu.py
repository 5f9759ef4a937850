"""tofu_unlearn: TOFU (Maini et al. 2024) forget/retain sets for unlearning, minimal (METHODS.md §4).

Data: ``{data_dir}/tofu`` (see shared/data/SOURCES.md). ``forget01/05/10.json`` are one JSON array
of {prompt, response}; ``full.json`` and ``retain99/95/90.json`` are several JSON arrays (one per
line) of {question, answer}; the retain set of forgetNN is its complement retain(100−NN).
``idontknow.jsonl`` holds one refusal per line (plain text, not JSON).

Splits (every example carries ``info["gate_label"]``: 1 forget, 0 retain, which GRUN's gate loss
and the unlearning objectives read):
* ``train``: the whole forget set plus ``n_retain`` retain examples (default: as many as the forget
  set), a subset fixed by ``seed``. With ``idk: true`` every forget target is replaced by a random
  line of idontknow.jsonl (the IDK objective); the gold answer stays the real one.
* ``retain``: the whole retain set; ``forget``: the whole forget set (real answers).
* ``eval``: the forget set plus as many retain examples, drawn from those *not* in ``train``.

Metric: ROUGE-L recall of the generated answer against the gold answer (longest common
subsequence of lowercased whitespace tokens over the gold length), overall and per set
(``rougeL_recall_forget`` / ``rougeL_recall_retain``). TOFU's own scorer (rouge_score with
punctuation stripped and stemming) comes with the full TOFU evaluation in a later issue, as do
answer probability, truth ratio, forget quality and model utility.

Not here: TOFU's first stage (finetuning the base model on ``full``) — a later issue.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from reftx.errors import ConfigError, DataError
from reftx.task import Example, Task, register_task

RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
IDK_FILE = "idontknow.jsonl"
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
    text = path.read_text(encoding="utf-8")
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
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise DataError(f"{path}: no lines")
    return lines


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a)·len(b)) DP)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, 1):
            cur = row[j]
            row[j] = prev + 1 if x == y else max(row[j], row[j - 1])
            prev = cur
    return row[-1]


def rouge_l_recall(prediction: str, reference: str) -> float:
    """LCS(prediction, reference) / len(reference) over lowercased whitespace tokens (0 if empty)."""
    ref = reference.lower().split()
    return lcs_length(prediction.lower().split(), ref) / len(ref) if ref else 0.0


@register_task("tofu_unlearn")
class TofuUnlearn(Task):
    """TOFU forget/retain data for unlearning. Metrics: ROUGE-L recall, overall and per set."""

    @dataclass(frozen=True)
    class Options:
        forget: Literal["forget01", "forget05", "forget10"] = "forget01"  # forget set; retain = the rest
        n_retain: int | None = None  # retain examples in the train split; null: as many as the forget set
        idk: bool = False  # train on "I don't know" answers for the forget set (idontknow.jsonl)
        seed: int = 0  # seed of the retain subset and of the IDK answers

        def __post_init__(self) -> None:
            if self.n_retain is not None and self.n_retain < 1:
                raise ConfigError("n_retain", f"must be >= 1 (or null), got {self.n_retain}")

    splits = ("train", "retain", "forget", "eval")

    def __init__(self, options: Any = None, data_dir: str | Path | None = None):
        super().__init__(options, data_dir)
        self._sets: tuple[list[QA], list[QA]] | None = None

    def _forget_retain(self) -> tuple[list[QA], list[QA]]:
        if self._sets is None:
            root = self.data_dir / "tofu"
            forget = read_qa(root / f"{self.options.forget}.json", ("prompt", "response"))
            retain = read_qa(root / f"{RETAIN_OF[self.options.forget]}.json", ("question", "answer"))
            self._sets = forget, retain
        return self._sets

    def _retain_subsets(self, n_retain: int, n_forget: int) -> tuple[list[int], list[int]]:
        """Indices of the train retain subset and of the (disjoint) eval retain subset."""
        order = list(range(n_retain))
        random.Random(f"{self.options.seed}:tofu-retain").shuffle(order)
        n = self.options.n_retain or n_forget
        if n > n_retain:
            raise ConfigError("task.options.n_retain", f"the retain set has only {n_retain} examples, asked {n}")
        return sorted(order[:n]), sorted(order[n:n + n_forget])

    def load(self, split: str) -> list[Example]:
        forget, retain = self._forget_retain()
        train_idx, eval_idx = self._retain_subsets(len(retain), len(forget))
        if split == "forget":
            return [_example(q, 1.0) for q in forget]
        if split == "retain":
            return [_example(q, 0.0) for q in retain]
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

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        recalls = [rouge_l_recall(p, str(ex.gold)) for p, ex in zip(predictions, examples, strict=True)]
        out = {"rougeL_recall": sum(recalls) / len(recalls) if recalls else 0.0}
        for tag, label in (("forget", 1.0), ("retain", 0.0)):
            part = [r for r, ex in zip(recalls, examples) if ex.info.get("gate_label") == label]
            if part:
                out[f"rougeL_recall_{tag}"] = sum(part) / len(part)
        return out


def _example(q: QA, gate_label: float, target: str | None = None) -> Example:
    return Example(q.question, q.answer if target is None else target, answer=q.answer,
                   info={"gate_label": gate_label},
                   meta={"file": q.file, "line": q.line, "index": q.index,
                         "set": "forget" if gate_label else "retain"})
