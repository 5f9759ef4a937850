"""(prompt, response) lists as batches, built exactly as a reftx run builds them: the Python path
for pyreft-style scripts.

    batch = reftx.data.pairs.train_batch(tok, [("What is 2+2?", "4"), ...])   # labels -100 on prompts
    out = model(**batch)                                                   # out.loss
    gen = reftx.data.pairs.prompt_batch(tok, ["What is 3+3?"])             # left-padded for generate

The tokenizer's chat template is applied when it has one (``chat=None``; True/False force it), the
response ends with EOS (the chat template's end of turn), training batches are right-padded and
generation batches left-padded whatever ``tokenizer.padding_side`` says.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from reftx.core.errors import DataError
from reftx.data.encoding import collate_prompts, collate_train, encode, encode_prompt, pad_id, use_chat
from reftx.data.examples import Example


def _check(texts: Sequence[str], what: str) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"pair {i}: the {what} is {text!r}; give non-empty text (or leave the pair out)")


def train_batch(tokenizer: Any, pairs: Sequence[tuple[str, str]], *, chat: bool | None = None,
                max_length: int = 512) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` (-100 on prompt and padding) and
    ``prompt_lengths`` for (prompt, response) pairs; a pair longer than ``max_length`` is a DataError
    naming it (the run's default policy, ``task.overlong: error``)."""
    _check([p for p, _ in pairs], "prompt")
    _check([r for _, r in pairs], "response")
    chat = use_chat(tokenizer, chat)
    encoded = [encode(tokenizer, Example(prompt=p, target=r), max_length, chat) for p, r in pairs]
    for i, e in enumerate(encoded):
        if e.truncated:
            raise DataError(f"pair {i}: {sum(e.untruncated)} tokens (prompt {e.untruncated[0]} + response "
                            f"{e.untruncated[1]}) exceed max_length={max_length}; raise max_length or shorten it")
    return collate_train(encoded, pad_id(tokenizer))


def prompt_batch(tokenizer: Any, prompts: Sequence[str], *, chat: bool | None = None) -> dict[str, Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` for ``ReftModel.generate`` (which refuses
    right padding), each prompt formatted as ``train_batch`` formats it."""
    _check(prompts, "prompt")
    chat = use_chat(tokenizer, chat)
    return collate_prompts([encode_prompt(tokenizer, p, chat) for p in prompts], pad_id(tokenizer))


__all__ = ["prompt_batch", "train_batch"]
