"""Batched forms of the composed edits' rules: k interventions of one composition, each on its own
block of rows, in a few batched matmuls (``Delta.forward_stacked``, run by reftx.engine.stacked).

Each form computes what the rule computes for every block (tests/contract/test_stacked.py); the
parameters stay where they are (one module per intervention, the saved keys unchanged) and are
stacked per forward, a cheap copy whose backward splits the gradient back.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

Stacked = Callable[[list[Any], Tensor], Tensor]


def _stack(mods: list[Any], get: Callable[[Any], Tensor]) -> Tensor:
    return torch.stack([get(m) for m in mods])


def stacked_subspace(source: str, subtract: bool) -> Stacked:
    """``h + Bᵀ(act(T(h)) − [B h])`` for k blocks: h (k, n, d) -> (k, n, d). With the identity
    activation and a linear target, ``W h + b − B h`` is one ``baddbmm`` with ``W − B`` (as the
    hand-written floor of benchmarks/overhead.py does), equal to the rule up to float rounding."""

    def run(mods: list[Any], h: Tensor) -> Tensor:
        basis = _stack(mods, lambda m: m.basis.matrix())  # (k, r, d)
        dtype, h = h.dtype, h.to(basis.dtype)  # as cast_call: in the parameters' dtype, back in h's
        act = mods[0].act
        bias = _stack(mods, lambda m: m.source.bias).unsqueeze(1)  # (k, 1, r)
        fused = False
        if source == "linear":
            weight = _stack(mods, lambda m: m.source.weight)  # (k, r, d)
            fused = subtract and isinstance(act, nn.Identity)
            z = torch.baddbmm(bias, h, (weight - basis if fused else weight).transpose(1, 2))
        else:
            z = bias
        if not fused:
            z = act(z)
            if subtract:
                z = z - torch.bmm(h, basis.transpose(1, 2))
        return torch.baddbmm(h, z.expand(h.shape[0], h.shape[1], -1), basis).to(dtype)

    return run


def stacked_scale_bias(mods: list[Any], h: Tensor) -> Tensor:
    """``h + ((a − 1) ⊙ h + c)`` for k blocks: the rule's own elementwise ops, so bit for bit."""
    if mods[0].scale.dtype != h.dtype:
        return stacked_scale_bias(mods, h.to(mods[0].scale.dtype)).to(h.dtype)
    scale = _stack(mods, lambda m: m.scale).unsqueeze(1)
    shift = _stack(mods, lambda m: m.shift).unsqueeze(1)
    return h + ((scale - 1) * h + shift)


__all__ = ["stacked_scale_bias", "stacked_subspace"]
