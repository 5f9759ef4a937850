"""Checks of task data before anything is built, trained or saved, so that a run never trains on,
or crashes at, data it cannot use.

* An empty prompt is refused for every split (``Task.examples``); an empty response is refused
  for training on responses (``check_responses``).
* Over-long examples: a training example whose prompt + response tokens exceed ``train.max_length``
  or the model's context length (``config.max_position_embeddings``, ``n_positions``, ...); an
  evaluation prompt whose tokens + ``eval.max_new_tokens`` exceed the context (when evaluation
  scores instead of generating: prompt + response above a context smaller than ``eval.max_length``).
  ``task.overlong`` decides (``fit_train``, ``fit_eval``): ``error`` (the default) refuses with the
  first such example, ``truncate`` cuts them (said with their count), ``drop`` leaves them out
  (said with their count). A model whose config names no context length is checked against
  ``train.max_length`` alone.
* A training example left without a supervised token (every label -100: nothing to learn, and a
  batch of such rows has a mean loss of 0/0) is refused with the reason (``check_supervised``).

The checks read the token counts that encoding computes anyway (one tokenisation, no model pass).
Every error is one line naming the example (``where``: file:line when the task recorded it) and the fix.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from reftx.core.errors import ConfigError, DataError
from reftx.data.encoding import Encoded, encode, encode_prompt
from reftx.data.examples import Example
from reftx.data.label_truncation import prefix_truncate
from reftx.engine.positions import IGNORE

OVERLONG = ("error", "truncate", "drop")  # the values of task.overlong
FIX = "or set task.overlong: truncate (or drop) to cut (or leave out) such examples"
# config keys that bound the positions a model takes, in the order read (GPT-2 names n_positions)
CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length")
Say = Callable[[str], None]


def where(ex: Example, index: int, split: str) -> str:
    """How an error names an example: ``file:line`` (or the task's own ``meta["where"]``) when the
    task recorded it, else its index in the split and the start of its prompt."""
    meta = ex.meta or {}
    if meta.get("where"):
        return str(meta["where"])
    if meta.get("file") is not None and meta.get("line") is not None:
        return f"{meta['file']}:{meta['line']}"
    return f"{split} example {index} (prompt {ex.prompt[:40]!r})"


def check_prompts(examples: list[Example], split: str) -> None:
    """Refuse an empty (or blank) prompt: the model would be asked nothing."""
    empty = [i for i, ex in enumerate(examples) if not ex.prompt.strip()]
    if empty:
        i = empty[0]
        raise DataError(f"{where(examples[i], i, split)}: empty prompt ({len(empty)} of {len(examples)} {split} "
                        f"examples have none); write the prompt or remove the row")


def check_responses(examples: list[Example], split: str = "train") -> None:
    """Refuse an empty (or blank) response where training learns the response: nothing to learn."""
    empty = [i for i, ex in enumerate(examples) if not str(ex.target).strip()]
    if empty:
        i = empty[0]
        raise DataError(f"{where(examples[i], i, split)}: empty response ({len(empty)} of {len(examples)} {split} "
                        f"examples have none), so there is nothing to train on; write the response or remove the row")


def context_length(config: Any) -> tuple[int, str] | None:
    """(positions, config key) of the most positions the model takes; None when its config names
    none (then no context check is made)."""
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in CONTEXT_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, key
    return None


@dataclass(frozen=True)
class Limit:
    """The most tokens a training example may have, and what sets it (for messages)."""

    tokens: int
    name: str  # "train.max_length=128" or "the model's context length 64 (max_position_embeddings)"
    fix: str  # what to change besides the example


def train_limit(max_length: int, config: Any) -> Limit:
    """``train.max_length``, or the model's context length when that is smaller."""
    ctx = context_length(config)
    if ctx is not None and ctx[0] < max_length:
        return Limit(ctx[0], f"the model's context length {ctx[0]} ({ctx[1]}; train.max_length={max_length} "
                             f"is larger)", "shorten them")
    return Limit(max_length, f"train.max_length={max_length}", "shorten them, raise train.max_length")


def _drop(n: int, over: list[int], what: str, limit: str, say: Say) -> list[int]:
    """task.overlong: drop: the indices of the ``n`` examples kept (not in ``over``); says how many left."""
    if len(over) == n:
        raise DataError(f"task.overlong: drop leaves no {what}: all {n} are longer than {limit}; set "
                        f"task.overlong: truncate or allow longer examples")
    say(f"task.overlong=drop: {len(over)} of {n} {what} longer than {limit} left out")
    dropped = set(over)
    return [i for i in range(n) if i not in dropped]


def fit_train(examples: list[Example], encoded: list[Encoded], limit: Limit, policy: str,
              say: Say) -> tuple[list[Example], list[Encoded]]:
    """The training examples under ``task.overlong`` (``encoded`` made with ``limit.tokens``, so
    already truncated where needed): error refuses the first over-long one, drop leaves them out,
    truncate keeps them cut; drop and truncate say how many."""
    over = [i for i, e in enumerate(encoded) if sum(e.untruncated) > limit.tokens]
    if not over:
        return examples, encoded
    if policy == "error":
        i = over[0]
        p, r = encoded[i].untruncated
        raise DataError(f"{where(examples[i], i, 'train')}: {p + r} tokens (prompt {p} + response {r}) exceed "
                        f"{limit.name}; {len(over)} of {len(examples)} train examples are longer: {limit.fix}, {FIX}")
    if policy == "truncate":
        say(f"task.overlong=truncate: {len(over)} of {len(examples)} train examples truncated to {limit.tokens} "
            f"tokens ({limit.name})")
        return examples, encoded
    keep = _drop(len(examples), over, "train examples", limit.name, say)
    return [examples[i] for i in keep], [encoded[i] for i in keep]


def encode_train(exp: Any, tokenizer: Any, examples: list[Example], chat: bool, model_config: Any, guided: bool,
                 learns: bool, say: Say) -> tuple[list[Example], list[Encoded]]:
    """The training examples of experiment ``exp`` tokenised once and checked, before anything is
    built or saved: a response each (when the objective ``learns`` the response), task.overlong
    against train.max_length and the model's context (``model_config``; None: max_length alone), then
    BREP's prefix truncation and a supervised token each. Returns the examples kept (task.overlong:
    drop leaves some out) and their encodings (``guided``: with the guided copy, reftx.data.encoding)."""
    if learns:
        check_responses(examples)
    limit = train_limit(exp.train.max_length, model_config)
    end_token = exp.model.task == "causal-lm"  # a classifier reads the text alone
    encoded = [encode(tokenizer, ex, limit.tokens, chat, end_token, guided) for ex in examples]
    examples, encoded = fit_train(examples, encoded, limit, exp.task.overlong, say)
    encoded = prefix_truncate(encoded, exp.train.prefix_fraction, exp.train.prefix_tokens, exp.seed)
    if learns:
        check_supervised(examples, encoded, limit)
    return examples, encoded


def _supervised(e: Encoded) -> bool:
    """Whether a label after position 0 is not -100 (position t predicts token t + 1)."""
    return any(y != IGNORE for y in islice(e.labels, 1, None))


def check_supervised(examples: list[Example], encoded: list[Encoded], limit: Limit) -> None:
    """Refuse training examples that leave no token to learn (every label after the first position
    is -100), naming the first, how many, why and the fix."""
    bad = [i for i, e in enumerate(encoded) if not _supervised(e)]
    if not bad:
        return
    i = bad[0]
    e = encoded[i]
    if e.untruncated[1] == 0:
        why, fix = "its response has no token", "write the response"
    elif e.truncated:
        why = f"{limit.name} leaves no room for a prompt token and a response token"
        fix = "raise train.max_length" if limit.name.startswith("train.") else "use a model with a longer context"
    else:
        why, fix = "its prompt has no token, so nothing predicts the response", "write the prompt"
    raise DataError(f"{where(examples[i], i, 'train')}: no response token to train on (every label after the first "
                    f"position is -100: {why}); {len(bad)} of {len(examples)} train examples are so: {fix}")


def cut_prompt(tokenizer: Any, ex: Example, chat: bool, keep: int, index: int = 0) -> Example:
    """``ex`` with its prompt text cut from the left so that the encoded prompt (chat template
    included) has at most ``keep`` tokens; the end of the prompt, where the question is, stays."""
    ids = tokenizer(ex.prompt, add_special_tokens=False, return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)))
    offsets = ids.get("offset_mapping")
    n = len(ids["input_ids"])
    start = max(0, len(encode_prompt(tokenizer, ex.prompt, chat)) - keep)
    for drop in range(start, n):
        text = ex.prompt[offsets[drop][0]:] if offsets else tokenizer.decode(ids["input_ids"][drop:])
        if len(encode_prompt(tokenizer, text, chat)) <= keep:
            return dataclasses.replace(ex, prompt=text)
    raise DataError(f"{where(ex, index, 'eval')}: the prompt template alone takes more than the {keep} tokens the "
                    f"context leaves; lower eval.max_new_tokens")


def _eval_lengths(tokenizer: Any, examples: list[Example], chat: bool, generates: bool) -> list[int]:
    prompts = [len(encode_prompt(tokenizer, ex.prompt, chat)) for ex in examples]
    if generates:
        return prompts
    targets = tokenizer([str(ex.target) for ex in examples], add_special_tokens=False)["input_ids"]
    return [p + len(t) for p, t in zip(prompts, targets)]


def fit_eval(tokenizer: Any, examples: list[Example], chat: bool, config: Any, cfg: Any, generates: bool,
             policy: str, say: Say) -> tuple[list[Example], Any]:
    """The evaluation examples and EvalConfig under ``task.overlong``. Generating: a prompt's tokens
    + ``eval.max_new_tokens`` must fit the context (truncate cuts the prompt's start). Scoring:
    prompt + response must fit a context smaller than ``eval.max_length`` (truncate lowers
    ``eval.max_length`` to the context, so scoring cuts the input's start, as it does at
    eval.max_length). Nothing to check when the model names no context length."""
    ctx = context_length(config)
    if ctx is None or (not generates and cfg.max_length <= ctx[0]):
        return examples, cfg
    n_ctx, key = ctx
    room = n_ctx - cfg.max_new_tokens if generates else n_ctx
    if room < 1:
        raise ConfigError("eval.max_new_tokens", f"{cfg.max_new_tokens} leaves no room for a prompt within the "
                          f"model's context length {n_ctx} ({key}); lower it")
    lengths = _eval_lengths(tokenizer, examples, chat, generates)
    over = [i for i, n in enumerate(lengths) if n > room]
    if not over:
        return examples, cfg
    limit = f"the model's context length {n_ctx} ({key})"
    budget = f"{room} tokens ({limit} - eval.max_new_tokens={cfg.max_new_tokens})" if generates else limit
    if policy == "error":
        i = over[0]
        what, fix = ((f"{lengths[i]} prompt tokens + eval.max_new_tokens={cfg.max_new_tokens} exceed", "shorten the "
                      "prompts, lower eval.max_new_tokens") if generates else
                     (f"{lengths[i]} tokens (prompt + response) exceed", f"shorten them, set eval.max_length <= {n_ctx}"))
        raise DataError(f"{where(examples[i], i, 'eval')}: {what} {limit}; {len(over)} of {len(examples)} eval "
                        f"examples are longer: {fix}, {FIX}")
    if policy == "drop":
        return [examples[i] for i in _drop(len(examples), over, "eval examples", budget, say)], cfg
    if not generates:
        say(f"task.overlong=truncate: {len(over)} of {len(examples)} eval examples scored on their last {n_ctx} "
            f"tokens (eval.max_length {cfg.max_length} lowered to {limit})")
        return examples, dataclasses.replace(cfg, max_length=n_ctx)
    cut = set(over)
    out = [cut_prompt(tokenizer, ex, chat, room, i) if i in cut else ex for i, ex in enumerate(examples)]
    say(f"task.overlong=truncate: {len(over)} of {len(examples)} eval prompts cut to their last {budget}")
    return out, cfg

__all__ = ["CONTEXT_KEYS", "OVERLONG", "Limit", "check_prompts", "check_responses", "check_supervised",
           "context_length", "cut_prompt", "encode_train", "fit_eval", "fit_train", "train_limit", "where"]
