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
        self._slot: tuple[Tensor, int] | None = None  # (the forward's batched R, this basis's index in it)

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
    buckets: dict[tuple, list[tuple[OrthoBasis, Tensor]]] = defaultdict(list)
    for b in bases:
        w = b.weight
        buckets[(tuple(w.shape), w.dtype, w.device)].append((b, w))
    pairs: list[tuple[OrthoBasis, Tensor]] = []
    slots: list[tuple[Tensor, int]] = []
    for bucket in buckets.values():
        group = [b for b, _ in bucket]
        rs = orthonormalize(torch.stack([w for _, w in bucket]))
        pairs += zip(group, rs.unbind(0))
        slots += [(rs, i) for i in range(len(group))]
    with reuse_rotations(pairs, slots):
        yield pairs


@contextmanager
def reuse_rotations(pairs: list[tuple[OrthoBasis, Tensor]],
                    slots: list[tuple[Tensor, int]] | None = None) -> Iterator[list[tuple[OrthoBasis, Tensor]]]:
    """Within the block, each basis of ``pairs`` returns its given R (and ``stacked_matrices`` finds
    it in its ``slots`` entry: the batched R it is a row of); afterwards what it returned before.
    The attributes are written to the modules' ``__dict__`` directly: ``nn.Module.__setattr__`` was
    a visible share of a forward with 64 bases (benchmarks/README.md, setting c)."""
    slots = slots or [None] * len(pairs)
    before = [(b.__dict__, b._cached, b.__dict__.get("_slot")) for b, _ in pairs]
    try:
        for (b, r), slot in zip(pairs, slots):
            d = b.__dict__
            d["_cached"], d["_slot"] = r, slot
        yield pairs
    finally:
        for d, r, slot in before:
            d["_cached"], d["_slot"] = r, slot


def stacked_matrices(bases: list[OrthoBasis]) -> Tensor:
    """The R of each of ``bases``, stacked: (N, r, d). Where this forward orthonormalised them together
    and in this order (``shared_rotations``), that is a slice of the batched QR's output itself, the
    same values as stacking them again without the copy and its backward node; else a ``stack``."""
    slot = bases[0].__dict__.get("_slot")  # any basis kind: only an OrthoBasis in a forward has one
    if slot is not None:
        rs, start = slot
        slots = [b.__dict__.get("_slot") for b in bases]
        if all(s is not None and s[0] is rs and s[1] == start + i for i, s in enumerate(slots)):
            return rs[start:start + len(bases)]
    return torch.stack([b.matrix() for b in bases])


__all__ = ["OrthoBasis", "orthonormalize", "reuse_rotations", "shared_rotations", "stacked_matrices"]
