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

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .data import collate_train, encode
from .positions import IGNORE
from .task import Example


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


@torch.no_grad()
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
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[ContinuationScore | None] = [None] * len(encoded)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = collate_train([encoded[i] for i in idx], pad)
        labels = batch.pop("labels")
        kwargs: dict[str, Any] = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        if "example_info" in kwargs:
            kwargs["example_info"] = {k: v.to(device) for k, v in kwargs["example_info"].items()}
        if hasattr(model, "interventions"):  # a ReftModel: tell it where each prompt ends
            kwargs["prompt_lengths"] = torch.tensor([encoded[i].prompt_len for i in idx], device=device)
        else:
            kwargs.pop("example_info", None)
        logits = model(**kwargs).logits[:, :-1].float()
        target = labels[:, 1:].to(device)
        logp = F.log_softmax(logits, dim=-1)
        tok_lp = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        best = logits.argmax(-1)
        for row, i in enumerate(idx):
            keep = target[row] != IGNORE
            out[i] = ContinuationScore(tuple(tok_lp[row][keep].tolist()), tuple(best[row][keep].tolist()),
                                       tuple(target[row][keep].tolist()))
    model.train(was_training)
    return out  # type: ignore[return-value]


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


__all__ = ["ContinuationScore", "choose", "multiple_choice", "score_continuations"]
