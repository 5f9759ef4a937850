"""Sequence classification on a frozen model: the head's input (pooling), class logits of examples,
and the metrics of a binary detector.

A task with a class per example gives each ``Example`` an empty target and ``info={"label": k}``;
the whole text is the prompt, so intervention positions such as ``{first: 3, last: 3}`` mean the
text's own tokens. The model is an ``AutoModelForSequenceClassification`` (``model.task:
sequence-classification``); its head trains with the interventions when ``model.train_modules``
names it (``score`` on decoders, ``classifier`` on BERT), and the ``classify`` objective
(reftx.objectives) trains on cross-entropy against ``example_info["label"]``.

``model.pooling`` picks what the head reads:

| pooling | decoders (llama, qwen, mistral, gemma3, gpt2)      | BERT                               | RoBERTa                 |
|---------|-----------------------------------------------------|------------------------------------|-------------------------|
| `model` | the last non-padding token (transformers' own)      | [CLS] through the pooler (own)     | [CLS] (own)             |
| `mean`  | masked mean of the final states (after the norm)    | masked mean; the pooler is skipped | masked mean             |

``mean`` is installed with hooks (``reftx.hooks.install_mean_pooling``): on decoders and RoBERTa
the module that reads token states (``score``, ``classifier``) gets the mean at every position (so
whichever position transformers picks holds it); on BERT the pooler's output is replaced by the
mean. The head's parameter names are unchanged, so checkpoints and peft's ``modules_to_save`` work
as usual.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .data import encode
from .errors import ConfigError, DataError
from .hooks import install_mean_pooling
from .scoring import batched_forward
from .task import Example

LABEL = "label"  # the example_info key holding the class index
POOLINGS = ("model", "mean")
_DECODERS = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gpt2")


def set_pooling(model: nn.Module, pooling: str) -> nn.Module:
    """Make the classification head of ``model`` read ``pooling`` states (see the module doc); in place."""
    if pooling not in POOLINGS:
        raise ConfigError("model.pooling", f"must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if pooling == "model":
        return model
    mt = model.config.model_type
    if mt in _DECODERS or mt == "roberta":  # the head reads token states: give it the mean everywhere
        install_mean_pooling(model, model.score if mt in _DECODERS else model.classifier, "input")
    elif mt == "bert":  # the pooler's output becomes the mean
        install_mean_pooling(model, model.bert.pooler, "output")
    else:
        raise ConfigError("model.pooling", f"mean pooling is not available for model_type {mt!r} "
                                           f"(supported: {', '.join((*_DECODERS, 'bert', 'roberta'))})")
    return model


def labels_of(examples: list[Example]) -> Tensor:
    """(N,) long class indices from ``info["label"]``; a missing label raises DataError."""
    missing = [i for i, ex in enumerate(examples) if LABEL not in ex.info]
    if missing:
        raise DataError(f"examples {missing[:5]} carry no info[{LABEL!r}]: not a classification task")
    return torch.tensor([int(ex.info[LABEL]) for ex in examples], dtype=torch.long)


def class_logits(model: Any, tokenizer: Any, examples: list[Example], chat: bool = False,
                 batch_size: int = 16, max_length: int = 512) -> Tensor:
    """(N, C) float32 logits of a sequence-classification model (a ReftModel, reftx.lora's model or a
    plain transformers one) for each example's prompt, encoded as in training (no end token, the
    start cut when longer than ``max_length``, right padding)."""
    enc = [encode(tokenizer, ex, max_length, chat, end_token=False) for ex in examples]
    out: list[Tensor | None] = [None] * len(enc)
    for idx, _, result in batched_forward(model, tokenizer, enc, batch_size):
        logits = result.logits.float().cpu()
        for row, i in enumerate(idx):
            out[i] = logits[row]
    return torch.stack(out)  # type: ignore[arg-type]


def binary_metrics(logits_or_preds: Tensor, labels: Tensor) -> dict[str, float]:
    """Precision, recall and F1 of the positive class (1, e.g. "anomaly"), accuracy, and AUROC.

    ``logits_or_preds``: (N, 2) logits (prediction = argmax; AUROC from softmax p(1)) or (N,)
    0/1 predictions (no AUROC). Precision (or F1) is 0 when nothing (or nothing right) is
    predicted positive; AUROC is NaN when ``labels`` hold one class only.
    """
    from torchmetrics.functional.classification import (
        binary_accuracy,
        binary_auroc,
        binary_f1_score,
        binary_precision,
        binary_recall,
    )

    labels = labels.long()
    scores = logits_or_preds.float()
    preds = scores.argmax(-1) if scores.ndim == 2 else scores.long()
    out = {"precision": binary_precision(preds, labels), "recall": binary_recall(preds, labels),
           "f1": binary_f1_score(preds, labels), "accuracy": binary_accuracy(preds, labels)}
    if scores.ndim == 2:
        both = bool(labels.any()) and not bool(labels.all())
        prob = scores.softmax(-1)[:, 1]
        out["auroc"] = binary_auroc(prob, labels) if both else torch.tensor(float("nan"))
    return {k: float(v) for k, v in out.items()}


__all__ = ["LABEL", "POOLINGS", "binary_metrics", "class_logits", "labels_of", "set_pooling"]
