"""mcq (tasks/mcq.py): the WMDP-format loader on the shipped sample, prompt format, errors, argmax scoring."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import reftx.tasks  # noqa: F401  (registers the zoo)
from reftx.core.errors import DataError
from reftx.config.schema import EvalConfig
from reftx.eval.task import get_task
from reftx.tasks.mcq import format_question


def test_sample_file_and_prompt():
    exs = get_task("mcq").load("test")
    assert len(exs) == 6 and [e.gold for e in exs] == ["B", "A", "C", "D", "B", "C"]
    assert [e.meta["n_choices"] for e in exs] == [4, 4, 4, 4, 2, 3]
    assert exs[4].prompt == ("The following are multiple choice questions (with answers).\n\n"
                             "What is 7 times 8?\nA. 54\nB. 56\nAnswer:")
    assert format_question(" Q? ", ["x", "y"], "biology").startswith(
        "The following are multiple choice questions (with answers) about biology.\n\nQ?\nA. x\n")


def test_json_array_file(tmp_path):
    path = tmp_path / "wmdp.json"
    path.write_text(json.dumps([{"question": "q", "choices": ["a", "b"], "answer": 0}] * 3))
    assert [e.gold for e in get_task("mcq", {"file": str(path)}).load("test")] == ["A", "A", "A"]


@pytest.mark.parametrize("rec, message", [
    ({"question": "q", "choices": ["a"], "answer": 0}, r"mcq\.jsonl:2: 'choices' must be a list of 2 to 26 strings"),
    ({"question": "q", "choices": ["a", 3], "answer": 0}, "'choices' must be a list"),
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, r"'answer' must be a choice index in 0\.\.1, got 2"),
    ({"question": "q", "choices": ["a", "b"], "answer": True}, "'answer' must be a choice index"),
    ({"choices": ["a", "b"], "answer": 0}, "expected an object with a string field 'question'"),
])
def test_bad_rows(tmp_path, rec, message):
    path = tmp_path / "mcq.jsonl"
    path.write_text(json.dumps({"question": "ok", "choices": ["a", "b"], "answer": 1}) + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(DataError, match=message):
        get_task("mcq", {"file": str(path)}).load("test")
    with pytest.raises(DataError, match="data file not found"):
        get_task("mcq", {"file": str(tmp_path / "none.jsonl")}).load("test")


class Prefers(nn.Module):
    """A causal LM that always puts most probability on one token id."""

    def __init__(self, vocab: int, token: int):
        super().__init__()
        self.vocab, self.token = vocab, token
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kw):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token] = 5.0

        class Out:
            pass

        out = Out()
        out.logits = logits + 0 * self.p
        return out


@pytest.mark.parametrize("letter, accuracy", [("B", 2 / 6), ("C", 2 / 6), ("D", 1 / 6)])
def test_argmax_over_letters(tiny_dir, letter, accuracy):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    (token,) = tok(f" {letter}", add_special_tokens=False)["input_ids"]
    task = get_task("mcq")
    exs = task.load("test")
    metrics, preds = task.evaluate(Prefers(len(tok), token), tok, exs, EvalConfig(batch_size=4), False, False)
    # a letter beyond a question's choices is never picked: those fall back to the first option (ties)
    assert preds == [letter if ex.meta["n_choices"] > "ABCD".index(letter) else "A" for ex in exs]
    assert metrics == pytest.approx({"accuracy": accuracy})
