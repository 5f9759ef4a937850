"""Training objectives: how a batch becomes a loss. The loop calls one by name (``train.objective``).

An objective is ``fn(model, batch, options) -> (loss, logs, out)`` registered with
``@register_objective("name")``: ``model`` is the (possibly DDP-wrapped) ReftModel,
``batch`` the collated dict (input_ids, attention_mask, labels, example_info),
``options`` the dict ``train.objective_options``; ``logs`` are floats for metrics.jsonl.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from .registry import Registry

Objective = Callable[[Any, dict[str, Any], dict[str, Any]], tuple[Tensor, dict[str, float], Any]]
OBJECTIVES: Registry[Objective] = Registry("objective")


def register_objective(name: str) -> Callable[[Objective], Objective]:
    return OBJECTIVES.register(name)


@register_objective("nll")
def nll(model: Any, batch: dict[str, Any], options: dict[str, Any]) -> tuple[Tensor, dict[str, float], Any]:
    """Causal-LM negative log-likelihood of the response tokens (plus the primitives' auxiliary losses)."""
    out = model(**batch)
    return out.loss, {}, out
