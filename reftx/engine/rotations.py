"""Orthonormal bases (LoReFT's R) and the one batched QR per forward that orthonormalises them.

R is parametrised by a free matrix A (R = qr(A).Qᵀ with signs fixed), so decoupled weight decay on
A cannot collapse R (DESIGN.md, footguns). The hooks orthonormalise every basis of a forward in one
batched reduced QR per (shape, dtype, device) bucket (``shared_rotations``); the forward math is
that of ``torch.nn.utils.parametrizations.orthogonal``'s constraint, with a cheaper parametrization.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def orthonormalize(a: Tensor) -> Tensor:
    """Rows-orthonormal basis from free matrices. a: (..., d, r) -> (..., r, d).

    Computed in float32 (QR has no bf16 kernel on CPU) and returned in a's dtype.
    """
    q, u = torch.linalg.qr(a.float(), mode="reduced")
    sign = torch.sign(torch.diagonal(u, dim1=-2, dim2=-1))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return (q * sign.unsqueeze(-2)).transpose(-1, -2).to(a.dtype)


class OrthoBasis(nn.Module):
    """R in R^{r x d} with orthonormal rows, parametrized by A in R^{d x r} (R = qr(A).Qᵀ)."""

    no_decay = ("weight",)

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, rank))
        nn.init.orthogonal_(self.weight)
        self._cached: Tensor | None = None

    def matrix(self) -> Tensor:
        """R, shape (rank, dim)."""
        if self._cached is not None:
            return self._cached
        return orthonormalize(self.weight)


@contextmanager
def shared_rotations(bases: Iterable[OrthoBasis]) -> Iterator[list[tuple[OrthoBasis, Tensor]]]:
    """Orthonormalise every basis in one batched QR per (shape, dtype, device) for one forward;
    yields the (basis, R) pairs, which ``reuse_rotations`` puts back for a checkpointed layer's
    recomputation (reftx.engine.checkpointing)."""
    buckets: dict[tuple, list[OrthoBasis]] = defaultdict(list)
    for b in bases:
        w = b.weight
        buckets[(tuple(w.shape), w.dtype, w.device)].append(b)
    pairs: list[tuple[OrthoBasis, Tensor]] = []
    for group in buckets.values():
        rs = orthonormalize(torch.stack([b.weight for b in group]))
        pairs += zip(group, rs.unbind(0))
    with reuse_rotations(pairs):
        yield pairs


@contextmanager
def reuse_rotations(pairs: list[tuple[OrthoBasis, Tensor]]) -> Iterator[list[tuple[OrthoBasis, Tensor]]]:
    """Within the block, each basis of ``pairs`` returns its given R; afterwards what it returned before."""
    before = [(b, b._cached) for b, _ in pairs]
    try:
        for b, r in pairs:
            b._cached = r
        yield pairs
    finally:
        for b, r in before:
            b._cached = r


__all__ = ["OrthoBasis", "orthonormalize", "reuse_rotations", "shared_rotations"]
