"""reftx/data/pairs: (prompt, response) lists as a run builds them, on the default tokenizer."""
from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import reftx
from reftx.data.pairs import prompt_batch, train_batch

PAIRS = [("What is the capital of France?", "Paris."), ("Name a colour.", "Blue, as the deep sea.")]


def test_train_batch_supervises_exactly_each_response_and_pads_right(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    batch = train_batch(tok, PAIRS)
    for row, (prompt, response) in enumerate(PAIRS):
        n = int(batch["attention_mask"][row].sum())
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()  # right-padded
        chat_prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                              add_generation_prompt=True)
        prompt_ids = tok(chat_prompt, add_special_tokens=False)["input_ids"]
        assert batch["input_ids"][row, :len(prompt_ids)].tolist() == prompt_ids
        assert int(batch["prompt_lengths"][row]) == len(prompt_ids)
        supervised = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert supervised == batch["input_ids"][row, len(prompt_ids):n].tolist()
        assert tok.decode(supervised[:-1]) == response and supervised[-1] == tok.eos_token_id
    plain = train_batch(tok, PAIRS, chat=False)
    assert tok.decode(plain["input_ids"][0, :int(plain["prompt_lengths"][0])]).endswith(PAIRS[0][0])


def test_prompt_batch_is_left_padded_and_generates_as_one_by_one(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.padding_side = "right"  # ignored: generation batches are left-padded
    model = reftx.attach(AutoModelForCausalLM.from_pretrained(tiny_dir).eval(),
                         [{"kind": "loreft", "rank": 2, "layers": [1], "positions": {"last": 2}}])
    batch = prompt_batch(tok, [p for p, _ in PAIRS])
    mask = batch["attention_mask"]
    assert mask[:, -1].all() and not mask[int(mask.sum(1).argmin()), 0]  # the shorter row starts with padding
    out = model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    for row, (prompt, _) in enumerate(PAIRS):
        alone = prompt_batch(tok, [prompt])
        ref = model.generate(**alone, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        assert out[row, -3:].tolist() == ref[0, -3:].tolist()


def test_empty_and_overlong_pairs_are_named(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    with pytest.raises(reftx.DataError, match=r"^pair 1: the response is ''; give non-empty text"):
        train_batch(tok, [PAIRS[0], ("Name a colour.", "")])
    with pytest.raises(reftx.DataError, match=r"^pair 0: \d+ tokens \(prompt \d+ \+ response \d+\) exceed max_length=8"):
        train_batch(tok, PAIRS, max_length=8)
