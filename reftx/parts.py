"""Shared parts that primitives are composed from.

* ``OrthoBasis``: a rank-r basis R (r x d) with orthonormal rows.
* ``FreeBasis``: an unconstrained r x d projection.
* ``BiasSource`` / ``nn.Linear``: the "target" inside the subspace (b, or W h + b).
* ``DeltaIntervention``: ``h + dropout(σ(g(h)) · Δ(h))``, an edit Δ with the shared modifiers
  (input gate, dropout, magnitude bound on the edit's bias), configured by ``DeltaConfig``.
* ``SubspaceIntervention``: Δ(h) = Rᵀ (s(h) ⊙ (act(source(h)) − [R h])), the whole ReFT
  family (LoReFT, DiReFT, NoReFT, ...) as one recipe with flags, s a per-basis gate (BaFT).
* ``ScaleBiasIntervention``: Δ(h) = (a − 1) ⊙ h + c, elementwise scale and bias (RED, BREP).

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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .intervention import Context, Intervention
from .registry import Registry

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


# -- modifiers: registries filled by reftx/basis_gates.py, reftx/input_gates.py, reftx/norm_bounds.py ----------
BASIS_GATES: Registry[Callable[..., nn.Module]] = Registry("basis gate")
INPUT_GATES: Registry[Callable[..., nn.Module]] = Registry("input gate")
BOUNDS: Registry[Callable[..., nn.Module]] = Registry("bound")


def _modifier(registry: Registry, name: str, field: str, *args: Any) -> nn.Module | None:
    return None if name == "none" else registry.get(name, field)(*args)


@dataclass(frozen=True)
class DeltaConfig:
    """Modifiers every edit accepts (all off by default).

    dropout: dropout probability on the edit Δ(h); never on h itself.
    input_gate: scale the edit by σ(g(h)), one scalar per row (GRUN): none | linear | mlp.
    gate_loss_weight: λ of the BCE loss pulling σ(g(h)) to each example's ``gate_label``
      (1 forget, 0 retain), summed over the sites; needs ``example_info["gate_label"]``.
    bound: restrain the edit's bias c: none | pid (loss multiplier, BREP's reference code) |
      project (onto ||c|| <= bound_tau after each step) | hinge (λ·max(0, ||c|| − τ)²).
    bound_tau: τ, the norm bound. bound_lambda: λ of the hinge penalty.
    """

    dropout: float = 0.0
    input_gate: Literal["none", "linear", "mlp"] = "none"
    gate_loss_weight: float = 0.0
    bound: Literal["none", "pid", "project", "hinge"] = "none"
    bound_tau: float = 1.0
    bound_lambda: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.gate_loss_weight < 0:
            raise ConfigError("gate_loss_weight", f"must be >= 0, got {self.gate_loss_weight}")
        if self.gate_loss_weight > 0 and self.input_gate == "none":
            raise ConfigError("gate_loss_weight", "needs an input_gate (linear or mlp)")
        if self.bound_tau <= 0:
            raise ConfigError("bound_tau", f"must be > 0, got {self.bound_tau}")


class DeltaIntervention(Intervention):
    """``h' = h + dropout(σ(g(h)) · Δ(h))``: an edit Δ plus the shared modifiers.

    Subclasses implement ``delta(h, ctx) -> (n, d)`` and ``bias()`` (the parameter a bound
    restrains, or None). The gate, dropout and bound come from ``DeltaConfig``.
    """

    Config = DeltaConfig

    def __init__(self, config: DeltaConfig, dim: int):
        super().__init__(config, dim)
        self.input_gate = _modifier(INPUT_GATES, config.input_gate, "input_gate", dim, config)
        self.bound: nn.Module | None = None  # set by _init_bound once the bias exists

    def _init_bound(self) -> None:
        if self.config.bound != "none":
            if self.bias() is None:
                raise ConfigError("bound", f"{self.kind!r} has no bias to bound")
            self.bound = _modifier(BOUNDS, self.config.bound, "bound", self.config)

    def delta(self, h: Tensor, ctx: Context) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def bias(self) -> nn.Parameter | None:
        return None

    def forward(self, h: Tensor, ctx: Context) -> Tensor:
        d = self.delta(h, ctx)
        if self.input_gate is not None:
            d = self.input_gate(h, ctx) * d
        if self.config.dropout > 0:
            d = F.dropout(d, self.config.dropout, self.training)
        return h + d

    def parameter_losses(self) -> dict[str, Tensor]:
        return self.bound.loss(self.bias()) if self.bound is not None else {}

    def loss_scale(self) -> Tensor | None:
        return self.bound.loss_scale() if self.bound is not None else None

    def after_optimizer_step(self) -> None:
        if self.bound is not None:
            self.bound.after_step(self.bias())


@dataclass(frozen=True)
class SubspaceConfig(DeltaConfig):
    """The subspace family: every DeltaConfig modifier, plus

    rank: r, the subspace dimension (1 <= r <= hidden width).
    activation: applied to the target ``W h + b`` (identity in the ReFT paper).
    basis_gate: per-basis weights s(h) in the subspace (BaFT): none | sigmoid | softmax | topk.
    basis_topk: k for the topk gate (0: rank // 2).
    basis_gate_input: what the gate's router reads: raw (h itself) | unit (h / ‖h‖₂, so the size of
      one optimiser step on the router does not grow with the norm of the hidden states).
    """

    rank: int = 4
    activation: Activation = "identity"
    basis_gate: Literal["none", "sigmoid", "softmax", "topk"] = "none"
    basis_topk: int = 0
    basis_gate_input: Literal["raw", "unit"] = "raw"

    def __post_init__(self):
        super().__post_init__()
        if self.rank < 1:
            raise ConfigError("rank", f"must be >= 1, got {self.rank}")
        if not 0 <= self.basis_topk <= self.rank:
            raise ConfigError("basis_topk", f"must be in [0, rank={self.rank}], got {self.basis_topk}")


class SubspaceIntervention(DeltaIntervention):
    """``Δ(h) = Bᵀ (s(h) ⊙ (act(T(h)) − [B h]))``.

    Class flags select the family member:
      orthogonal: B has orthonormal rows (``OrthoBasis``) or is free (``FreeBasis``);
      source:     T(h) = W h + b ("linear") or the constant b ("bias");
      subtract:   whether the current coordinates B h are subtracted.
    ``basis_gate`` maps h (n, d) to per-basis weights s(h) in [0, 1]^r (BaFT); none: s ≡ 1.
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
        self.basis_gate = _modifier(BASIS_GATES, config.basis_gate, "basis_gate", dim, config)
        self._init_bound()

    def bias(self) -> nn.Parameter:
        return self.source.bias

    def coordinates(self, h: Tensor, basis: Tensor, ctx: Context) -> Tensor:
        """The edit in subspace coordinates, shape (n, r)."""
        z = self.act(self.source(h))
        if self.subtract:
            z = z - h @ basis.T
        if self.basis_gate is not None:
            z = z * self.basis_weights(h, ctx)
        return z

    def basis_weights(self, h: Tensor, ctx: Context) -> Tensor:
        """s(h), shape (n, r): the basis gate's weights (override to add losses on them, as BaFT does)."""
        return self.basis_gate(h, ctx)

    def delta(self, h: Tensor, ctx: Context) -> Tensor:
        basis = self.basis.matrix()
        return self.coordinates(h, basis, ctx) @ basis


class ScaleBiasIntervention(DeltaIntervention):
    """Elementwise scale and bias (RED, BREP): ``h' = a ⊙ h + c``, i.e. ``Δ(h) = (a − 1) ⊙ h + c``.

    a starts at 1 and c at 0, so the edit starts as the identity. Width = the site's width.
    """

    Config = DeltaConfig

    def __init__(self, config: DeltaConfig, dim: int):
        super().__init__(config, dim)
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))
        self._init_bound()

    def bias(self) -> nn.Parameter:
        return self.shift

    def delta(self, h: Tensor, ctx: Context) -> Tensor:
        return (self.scale - 1) * h + self.shift


__all__ = [
    "ACTIVATIONS",
    "BASIS_GATES",
    "BOUNDS",
    "DeltaConfig",
    "DeltaIntervention",
    "INPUT_GATES",
    "ScaleBiasIntervention",
    "BiasSource",
    "FreeBasis",
    "OrthoBasis",
    "SubspaceConfig",
    "SubspaceIntervention",
    "orthonormalize",
    "shared_rotations",
]
