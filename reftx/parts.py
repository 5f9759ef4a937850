"""Shared parts that primitives are composed from.

* ``OrthoBasis``: a rank-r basis R (r x d) with orthonormal rows.
* ``FreeBasis``: an unconstrained r x d projection.
* ``BiasSource`` / ``nn.Linear``: the "target" inside the subspace (b, or W h + b).
* ``SubspaceIntervention``: ``h + dropout(Rᵀ (gate(h) ⊙ (act(source(h)) − [R h])))``,
  the whole ReFT family (LoReFT, DiReFT, NoReFT, ...) as one recipe with flags.

Orthonormality is kept by a QR parametrization: the parameter is a free d x r
matrix A, and R = Qᵀ where A = QU is its reduced QR with diag(U) > 0 (the sign
fix makes the map smooth and unique). This is the same constraint as torch's
Householder ``orthogonal`` parametrization with a different, cheaper map: all
bases of one model are orthonormalised together in one batched QR per forward
(``shared_rotations``), and weight decay only rescales A, which leaves R
unchanged, so R can never collapse to zero under AdamW.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .intervention import Context, Intervention

ACTIVATIONS = {
    "identity": nn.Identity,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
Activation = Literal["identity", "relu", "gelu", "silu", "tanh", "sigmoid"]


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


class FreeBasis(nn.Module):
    """An unconstrained projection W in R^{r x d} (initialised like ``nn.Linear(d, r)``)."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rank, dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def matrix(self) -> Tensor:
        return self.weight


class BiasSource(nn.Module):
    """A learned constant b in R^r, the target of ConsReFT and LoBiReFT (zero at init)."""

    def __init__(self, rank: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(rank))

    def forward(self, h: Tensor) -> Tensor:
        return self.bias.expand(*h.shape[:-1], -1)


@contextmanager
def shared_rotations(bases: Iterable[OrthoBasis]) -> Iterator[None]:
    """Orthonormalise every basis in one batched QR per (shape, dtype, device) for one forward."""
    buckets: dict[tuple, list[OrthoBasis]] = defaultdict(list)
    for b in bases:
        w = b.weight
        buckets[(tuple(w.shape), w.dtype, w.device)].append(b)
    try:
        for group in buckets.values():
            rs = orthonormalize(torch.stack([b.weight for b in group]))
            for b, r in zip(group, rs.unbind(0)):
                b._cached = r
        yield
    finally:
        for group in buckets.values():
            for b in group:
                b._cached = None


@dataclass(frozen=True)
class SubspaceConfig:
    """Options shared by the subspace family.

    rank: r, the subspace dimension (1 <= r <= hidden width).
    activation: applied to the target ``W h + b`` (identity in the ReFT paper).
    dropout: dropout probability on the edit ``Rᵀ(...)``; never on h itself.
    """

    rank: int = 4
    activation: Activation = "identity"
    dropout: float = 0.0

    def __post_init__(self):
        if self.rank < 1:
            raise ConfigError("rank", f"must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")


class SubspaceIntervention(Intervention):
    """``h' = h + dropout(Bᵀ (s(h) ⊙ (act(T(h)) − [B h])))``.

    Class flags select the family member:
      orthogonal: B has orthonormal rows (``OrthoBasis``) or is free (``FreeBasis``);
      source:     T(h) = W h + b ("linear") or the constant b ("bias");
      subtract:   whether the current coordinates B h are subtracted.
    ``basis_gate`` (None here) is a module mapping h (n, d) to per-basis weights
    s(h) in [0, 1]^r; BaFT sets it. With no gate, s ≡ 1.
    """

    Config = SubspaceConfig
    orthogonal: ClassVar[bool] = True
    source_kind: ClassVar[Literal["linear", "bias"]] = "linear"
    subtract: ClassVar[bool] = True

    def __init__(self, config: SubspaceConfig, dim: int):
        super().__init__(config, dim)
        if config.rank > dim:
            raise ConfigError("rank", f"rank {config.rank} is larger than the hidden width {dim} at this site")
        self.basis = (OrthoBasis if self.orthogonal else FreeBasis)(dim, config.rank)
        self.source = nn.Linear(dim, config.rank) if self.source_kind == "linear" else BiasSource(config.rank)
        self.act = ACTIVATIONS[config.activation]()
        self.basis_gate: nn.Module | None = None

    def coordinates(self, h: Tensor, basis: Tensor, ctx: Context) -> Tensor:
        """The edit in subspace coordinates, shape (n, r)."""
        z = self.act(self.source(h))
        if self.subtract:
            z = z - h @ basis.T
        if self.basis_gate is not None:
            z = z * self.basis_gate(h, ctx)
        return z

    def delta(self, h: Tensor, ctx: Context) -> Tensor:
        """The edit added to h, shape (n, d), before dropout."""
        basis = self.basis.matrix()
        return self.coordinates(h, basis, ctx) @ basis

    def forward(self, h: Tensor, ctx: Context) -> Tensor:
        d = self.delta(h, ctx)
        if self.config.dropout > 0:
            d = F.dropout(d, self.config.dropout, self.training)
        return h + d


__all__ = [
    "ACTIVATIONS",
    "BiasSource",
    "FreeBasis",
    "OrthoBasis",
    "SubspaceConfig",
    "SubspaceIntervention",
    "orthonormalize",
    "shared_rotations",
]
