"""Sequence classification on a frozen model: the head's input (pooling), class logits of examples,
and the metrics of a binary detector (registered as metrics by the tasks that report them, e.g.
tasks/logs.py).

A task with a class per example gives each ``Example`` an empty target and ``info={"label": k}``;
the whole text is the prompt, so intervention positions such as ``{first: 3, last: 3}`` mean the
text's own tokens. The model is an ``AutoModelForSequenceClassification`` (``model.task:
sequence-classification``); its head trains with the interventions when ``model.train_modules``
names it (``score`` on decoders, ``classifier`` on BERT), and the ``classify`` objective
(reftx.train.objectives.common) trains on cross-entropy against ``example_info["label"]``.

``model.pooling`` picks what the head reads:

| pooling | decoders (llama, qwen, mistral, gemma3, gpt2)      | BERT                               | RoBERTa                 |
|---------|-----------------------------------------------------|------------------------------------|-------------------------|
| `model` | the last non-padding token (transformers' own)      | [CLS] through the pooler (own)     | [CLS] (own)             |
| `mean`  | masked mean of the final states (after the norm)    | masked mean; the pooler is skipped | masked mean             |

``mean`` is installed with hooks (``reftx.engine.hooks.install_mean_pooling``): on decoders and RoBERTa
the module that reads token states (``score``, ``classifier``) gets the mean at every position (so
whichever position transformers picks holds it); on BERT the pooler's output is replaced by the
mean. The head's parameter names are unchanged, so checkpoints and peft's ``modules_to_save`` work
as usual.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reftx.data.encoding import encode
from reftx.core.errors import ConfigError, DataError
from reftx.engine.hooks import install_mean_pooling
from reftx.eval.scoring import batched_forward
from reftx.data.examples import Example

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
    """(N, C) float32 logits of a sequence-classification model (a ReftModel, reftx.integrations.peft's model or a
    plain transformers one) for each example's prompt, encoded as in training (no end token, the
    start cut when longer than ``max_length``, right padding)."""
    enc = [encode(tokenizer, ex, max_length, chat, end_token=False) for ex in examples]
    out: list[Tensor | None] = [None] * len(enc)
    for idx, _, result in batched_forward(model, tokenizer, enc, batch_size):
        logits = result.logits.float().cpu()
        for row, i in enumerate(idx):
            out[i] = logits[row]
    return torch.stack(out)  # type: ignore[arg-type]


BINARY = ("precision", "recall", "f1", "accuracy", "auroc")  # binary_metric's names


def binary_metric(name: str, preds: Tensor, labels: Tensor, prob: Tensor | None = None) -> float:
    """One metric of a binary detector, positive class 1 (e.g. "anomaly"), by torchmetrics'
    ``binary_*`` functions: ``precision``, ``recall``, ``f1`` and ``accuracy`` of the (N,) 0/1
    ``preds`` against the (N,) ``labels``, or ``auroc`` of the (N,) scores ``prob`` = p(1).
    Precision (or F1) is 0 when nothing (or nothing right) is predicted positive; AUROC is NaN
    when ``labels`` hold one class only."""
    from torchmetrics.functional.classification import (
        binary_accuracy,
        binary_auroc,
        binary_f1_score,
        binary_precision,
        binary_recall,
    )

    labels = labels.long()
    if name == "auroc":
        if prob is None:
            raise ValueError("auroc needs the scores prob = p(1)")
        both = bool(labels.any()) and not bool(labels.all())
        return float(binary_auroc(prob, labels)) if both else float("nan")
    fns = {"precision": binary_precision, "recall": binary_recall, "f1": binary_f1_score, "accuracy": binary_accuracy}
    if name not in fns:
        raise ValueError(f"unknown binary metric {name!r}; valid: {', '.join(BINARY)}")
    return float(fns[name](preds.long(), labels))


def class_predictions(logits: Tensor) -> list[tuple[int, float]]:
    """(argmax class, softmax p(class 1)) of each row of (N, 2) logits: the per-example
    predictions that binary metrics read (computed for the whole batch at once)."""
    scores = logits.float()
    return list(zip(scores.argmax(-1).tolist(), scores.softmax(-1)[:, 1].tolist()))


def binary_metrics(logits_or_preds: Tensor, labels: Tensor) -> dict[str, float]:
    """Precision, recall and F1 of the positive class (1, e.g. "anomaly"), accuracy, and AUROC
    (each as :func:`binary_metric` computes it).

    ``logits_or_preds``: (N, 2) logits (prediction = argmax; AUROC from softmax p(1)) or (N,)
    0/1 predictions (no AUROC).
    """
    scores = logits_or_preds.float()
    preds = scores.argmax(-1) if scores.ndim == 2 else scores.long()
    prob = scores.softmax(-1)[:, 1] if scores.ndim == 2 else None
    return {k: binary_metric(k, preds, labels, prob) for k in BINARY if k != "auroc" or prob is not None}


__all__ = ["BINARY", "LABEL", "POOLINGS", "binary_metric", "binary_metrics", "class_logits", "class_predictions",
           "labels_of", "set_pooling"]
