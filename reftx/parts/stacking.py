"""Batched forms of the composed edits' rules: k interventions of one composition, each on its own
block of rows, in a few batched matmuls (``Delta.forward_stacked``, run by reftx.engine.stacked).

Each form computes what the rule computes for every block (tests/contract/test_stacked.py). The
parameters stay where they are (one module per intervention, the saved keys unchanged); once per
forward, ``params`` stacks those of *every* intervention of the composition in the model (all
layers at once: one ``stack`` per parameter, and for LoReFT one ``W − R`` for all of them), and
each site's stack edits with its slice (``apply``). Per layer that leaves what a hand-written
stacked implementation does: one or two batched matmuls, nothing re-stacked.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from reftx.engine.rotations import stacked_matrices

Params = tuple[Tensor, ...]


class Batched(NamedTuple):
    """A rule's batched form. ``params(mods)``: the parameters of N interventions of one composition,
    stacked along a new first dimension (N, ...), once per forward; ``apply(first, params, h)``: h
    (k, n, d), block i edited by intervention i of ``params`` (sliced to k), ``first`` the first of
    them (for its non-parameter parts, e.g. the activation) -> (k, n, d) in h's dtype."""

    params: Callable[[list[Any]], Params]
    apply: Callable[[Any, Params, Tensor], Tensor]


def _stack(mods: list[Any], get: Callable[[Any], Tensor]) -> Tensor:
    return torch.stack([get(m) for m in mods])


def stacked_subspace(source: str, subtract: bool) -> Batched:
    """``h + Bᵀ(act(T(h)) − [B h])`` for k blocks: h (k, n, d) -> (k, n, d). With the identity
    activation and a linear target, ``W h + b − B h`` is one ``baddbmm`` with ``W − B`` (as the
    hand-written floor of benchmarks/overhead.py does), equal to the rule up to float rounding."""

    def fused(m: Any) -> bool:
        return source == "linear" and subtract and isinstance(m.act, nn.Identity)

    def params(mods: list[Any]) -> Params:
        basis = stacked_matrices([m.basis for m in mods])  # (N, r, d): the forward's batched QR where it can
        bias = _stack(mods, lambda m: m.source.bias).unsqueeze(1)  # (N, 1, r)
        if source != "linear":
            return basis, bias
        weight = _stack(mods, lambda m: m.source.weight)  # (N, r, d)
        return basis, weight - basis if fused(mods[0]) else weight, bias

    def apply(first: Any, p: Params, h: Tensor) -> Tensor:
        basis, bias = p[0], p[-1]
        dtype, h = h.dtype, h.to(basis.dtype)  # as cast_call: in the parameters' dtype, back in h's
        if fused(first):  # p[1] is W − B
            z = torch.baddbmm(bias, h, p[1].transpose(1, 2))
        else:
            z = first.act(torch.baddbmm(bias, h, p[1].transpose(1, 2)) if source == "linear" else bias)
            if subtract:
                z = z - torch.bmm(h, basis.transpose(1, 2))
        return torch.baddbmm(h, z.expand(h.shape[0], h.shape[1], -1), basis).to(dtype)

    return Batched(params, apply)


def _scale_bias_params(mods: list[Any]) -> Params:
    return _stack(mods, lambda m: m.scale).unsqueeze(1), _stack(mods, lambda m: m.shift).unsqueeze(1)


def _scale_bias_apply(first: Any, p: Params, h: Tensor) -> Tensor:
    """``h + ((a − 1) ⊙ h + c)`` for k blocks: the rule's own elementwise ops, so bit for bit."""
    scale, shift = p
    if scale.dtype != h.dtype:
        return _scale_bias_apply(first, p, h.to(scale.dtype)).to(h.dtype)
    return h + ((scale - 1) * h + shift)


stacked_scale_bias = Batched(_scale_bias_params, _scale_bias_apply)

__all__ = ["Batched", "Params", "stacked_scale_bias", "stacked_subspace"]
