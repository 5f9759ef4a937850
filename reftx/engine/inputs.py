"""Checks of what a ReftModel is given, each a one-line error naming the argument and the fix.

The forward check reads shapes and dtypes only (no device sync, no per-example loop), so it costs
nothing next to a forward. The base check runs once, when interventions are attached or loaded.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from reftx.core.errors import DataError, ReftError


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def check_forward(input_ids: Any, inputs_embeds: Any, labels: Any, token_labels: bool) -> None:
    """Reject inputs the base would answer with a raw torch error or, worse, accept.

    input_ids: (B, T) integer token ids; inputs_embeds: (B, T, H) instead of them. Neither may be
    empty (B = 0 or T = 0). labels: (B, ...) one entry per row; for a language model
    (``token_labels``) exactly (B, T) integers, one label per token (-100 = no loss there)."""
    if input_ids is not None:
        if not isinstance(input_ids, Tensor):
            raise DataError(f"input_ids: expected a tensor of token ids of shape (batch, seq_len), got "
                            f"{type(input_ids).__name__}; wrap it with torch.tensor(...)")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise DataError(f"input_ids: token ids must be integers, got dtype {input_ids.dtype}; convert them "
                            "with input_ids.long() (vectors go in inputs_embeds= instead)")
        if input_ids.dim() != 2:
            raise DataError(f"input_ids: expected shape (batch, seq_len), got {_shape(input_ids)}; pass one row "
                            "per example (input_ids.unsqueeze(0) for a single example)")
    x = input_ids if input_ids is not None else inputs_embeds
    if isinstance(x, Tensor) and x.dim() >= 2 and x.shape[0] * x.shape[1] == 0:
        name = "input_ids" if input_ids is not None else "inputs_embeds"
        if x.shape[0] == 0:
            raise DataError(f"{name}: the batch is empty (shape {_shape(x)}, no rows); skip empty batches "
                            "before calling the model (e.g. after filtering examples)")
        raise DataError(f"{name}: every row is empty (shape {_shape(x)}, no tokens); check that encoding and "
                        "truncation (max_length) leave at least one token per example")
    if isinstance(labels, Tensor) and isinstance(x, Tensor) and x.dim() >= 2:
        _check_labels(labels, x, "input_ids" if input_ids is not None else "inputs_embeds", token_labels)


def _check_labels(labels: Tensor, x: Tensor, name: str, token_labels: bool) -> None:
    want = _shape(x)[:2]
    if token_labels and _shape(labels) != want:
        raise DataError(f"labels: shape {_shape(labels)} does not match {name} {want}; a language model takes "
                        "one label per token (the input ids, -100 where no loss is wanted), padded exactly "
                        f"like {name}")
    if not token_labels and (labels.shape[0] != want[0] if labels.dim() else want[0] != 1):
        raise DataError(f"labels: shape {_shape(labels)} does not match the batch of {want[0]} rows in "
                        f"{name} {want}; pass one label per example")
    if token_labels and (labels.is_floating_point() or labels.is_complex()):
        raise DataError(f"labels: token labels must be integers, got dtype {labels.dtype}; convert them with "
                        "labels.long()")


def check_real_weights(base: nn.Module) -> None:
    """Refuse a base whose weights are not loaded (parameters on the meta device): interventions
    would be created there and saved weights could not be read onto it."""
    params = list(base.parameters())
    meta = sum(p.is_meta for p in params)
    # accelerate's offloading keeps some weights on meta and loads them per forward: that is fine,
    # as long as the first parameter (where the interventions are created) is real
    offloaded = getattr(base, "hf_device_map", None) is not None
    if meta and (params[0].is_meta or not offloaded):
        raise ReftError(f"the base model has no real weights: {meta} of {len(params)} parameters are on the meta "
                        "device (built under init_empty_weights / torch.device('meta'), or loaded with "
                        "device_map='meta'); load it with its weights (e.g. reftx.load_model(name) or "
                        "AutoModelForCausalLM.from_pretrained(name)) before attaching or loading interventions")


def detached_error(call: str) -> ReftError:
    """The error for a ReftModel used after ``detach()``."""
    return ReftError(f"ReftModel.{call}: this ReftModel was detached (detach() removed its hooks and gave the base "
                     "back, so it no longer runs these interventions); attach again with reftx.attach(base, "
                     "interventions) or reftx.ReftModel.from_pretrained(base, directory), and to keep trained "
                     "weights call save_pretrained before detach()")


def gradient_checkpointing(base: nn.Module) -> bool:
    """Whether ``base`` has gradient (activation) checkpointing switched on (reftx.engine.checkpointing replays
    the edits in its recomputation)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(base), name) or name in vars(base):
            return bool(getattr(base, name))
    return False


__all__ = ["check_forward", "check_real_weights", "detached_error", "gradient_checkpointing"]
