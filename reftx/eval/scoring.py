"""Teacher-forced scoring of continuations: the one place that turns (prompt, continuation) pairs
into log-probabilities and argmax tokens. Every likelihood-based metric in the zoo builds on it:
option log-likelihood for multiple choice (commonsense, WMDP-style MCQ), answer probability and
truth ratio (TOFU), token accuracy of an edited fact and argmax agreement for locality
(knowledge editing).

    scores = score_continuations(model, tok, ["The capital of France is"], [" Paris"])
    scores[0].logprob, scores[0].token_accuracy, scores[0].argmax

Batches are sorted by length and padded on the right; the interventions see the prompt span
through ``prompt_lengths`` (positions such as ``last`` or ``prompt: true`` mean the prompt's
tokens, never the continuation's).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reftx.data.encoding import Encoded, collate_train, encode, pad_id
from reftx.engine.positions import IGNORE
from reftx.data.examples import Example


@dataclass(frozen=True)
class ContinuationScore:
    """Scores of one continuation given its prompt (teacher forcing).

    logprobs: log p(token_i | prompt, tokens_<i) for each continuation token.
    argmax:   the model's most likely token at each of those positions.
    targets:  the continuation's token ids.
    """

    logprobs: tuple[float, ...]
    argmax: tuple[int, ...]
    targets: tuple[int, ...]

    @property
    def logprob(self) -> float:
        """Summed log-probability of the continuation."""
        return float(sum(self.logprobs))

    @property
    def n_tokens(self) -> int:
        return len(self.targets)

    @property
    def mean_logprob(self) -> float:
        """Length-normalised log-probability (0.0 for an empty continuation)."""
        return self.logprob / self.n_tokens if self.targets else 0.0

    @property
    def token_accuracy(self) -> float:
        """Share of continuation tokens that are the argmax (EasyEdit's reliability per edit)."""
        if not self.targets:
            return 0.0
        return sum(a == t for a, t in zip(self.argmax, self.targets)) / len(self.targets)


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / T) at ``tokens``, in float32: logits (..., V), tokens (...) -> (...). The one
    per-token log-probability of reftx: scoring, GRPO's sampling and ratios, NLFT's token weights."""
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, tokens[..., None]).squeeze(-1)


def label_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(label_{t+1} | ..t) at every position: logits (B, T, V), labels (B, T) -> (B, T − 1);
    0 where the next label is -100."""
    target = labels[:, 1:]
    return token_logprobs(logits[:, :-1], target.clamp(min=0)).masked_fill(target == IGNORE, 0.0)


def score_continuations(model: Any, tokenizer: Any, prompts: list[str], continuations: list[str],
                        chat: bool = False, batch_size: int = 16, max_length: int = 1024,
                        example_info: list[dict[str, float]] | None = None) -> list[ContinuationScore]:
    """Teacher-forced log-probabilities and argmax tokens of ``continuations[i]`` after ``prompts[i]``.

    The continuation is tokenised on its own (include a leading space where the text needs one)
    and gets no end token. ``model`` is a ReftModel (interventions applied) or a plain causal LM.
    ``example_info``: per-pair floats passed to the primitives (e.g. an edit id), as in training.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    infos = example_info or [{} for _ in prompts]
    encoded = [encode(tokenizer, Example(p, c, info=dict(i)), max_length, chat, end_token=False)
               for p, c, i in zip(prompts, continuations, infos)]
    return score_encoded(model, tokenizer, encoded, batch_size)


def score_encoded(model: Any, tokenizer: Any, encoded: list[Encoded], batch_size: int = 16
                  ) -> list[ContinuationScore]:
    """``score_continuations`` on rows already tokenised: each row's continuation is its labelled
    tail (labels -100 on the prompt), and ``prompt_len`` is where the interventions' prompt ends
    (reftx.recipes.lm_eval scores lm-eval's (context, continuation) token pairs through this)."""
    out: list[ContinuationScore | None] = [None] * len(encoded)
    for idx, labels, result in batched_forward(model, tokenizer, encoded, batch_size):
        logits = result.logits[:, :-1].float()
        target = labels[:, 1:]
        tok_lp = token_logprobs(logits, target.clamp(min=0))
        best = logits.argmax(-1)
        for row, i in enumerate(idx):
            keep = target[row] != IGNORE
            out[i] = ContinuationScore(tuple(tok_lp[row][keep].tolist()), tuple(best[row][keep].tolist()),
                                       tuple(target[row][keep].tolist()))
    return out  # type: ignore[return-value]


def batched_forward(model: Any, tokenizer: Any, encoded: list[Encoded], batch_size: int
                    ) -> Iterator[tuple[list[int], Tensor, Any]]:
    """Eval-mode, no-grad forwards over ``encoded`` in length-sorted, right-padded batches.

    Yields (indices into ``encoded``, labels (B, T) on the model's device, model output). A
    ReftModel also gets each row's prompt length and the examples' ``example_info``; a plain
    model gets input ids and the attention mask only. The model's train/eval mode is restored.
    """
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    device = next(model.parameters()).device
    reft = hasattr(model, "named_interventions")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                batch = collate_train([encoded[i] for i in idx], pad_id(tokenizer))
                kwargs: dict[str, Any] = {"input_ids": batch["input_ids"].to(device),
                                          "attention_mask": batch["attention_mask"].to(device)}
                if reft:  # tell the interventions where each prompt ends, and what each example carries
                    kwargs["prompt_lengths"] = batch["prompt_lengths"].to(device)
                    if "example_info" in batch:
                        kwargs["example_info"] = {k: v.to(device) for k, v in batch["example_info"].items()}
                yield idx, batch["labels"].to(device), model(**kwargs)
    finally:
        model.train(was_training)


def choose(scores: list[ContinuationScore], normalize: bool = False) -> int:
    """Index of the best-scoring option (summed log-probability, or per-token mean)."""
    values = [s.mean_logprob if normalize else s.logprob for s in scores]
    return max(range(len(values)), key=values.__getitem__)


def multiple_choice(model: Any, tokenizer: Any, prompts: list[str], options: list[list[str]],
                    chat: bool = False, batch_size: int = 16, normalize: bool = False) -> list[int]:
    """For each prompt, the index of its most likely option (one batched pass over all pairs)."""
    flat_p = [p for p, opts in zip(prompts, options) for _ in opts]
    flat_c = [c for opts in options for c in opts]
    flat = score_continuations(model, tokenizer, flat_p, flat_c, chat, batch_size)
    picks, k = [], 0
    for opts in options:
        picks.append(choose(flat[k:k + len(opts)], normalize))
        k += len(opts)
    return picks


__all__ = ["ContinuationScore", "batched_forward", "choose", "label_logprobs", "multiple_choice", "score_continuations",
           "score_encoded", "token_logprobs"]
