"""Basis gates: per-basis weights s(h) in [0, 1]^r inside a subspace edit (BaFT, METHODS.md §2).

``reftx.parts.compose.subspace`` builds one as ``BASIS_GATES.get(config.basis_gate)(dim, config)`` and
multiplies the subspace coordinates by ``gate(h, ctx)``: h (n, d) -> s (n, r). Every gate reads
the same router logits ℓ(h) = A h + c (``nn.Linear(d, r)``, kept as ``router``):

| name      | s_k(h)                                                       |
|-----------|--------------------------------------------------------------|
| `sigmoid` | σ(ℓ_k): BaFT's default, each basis on or off independently   |
| `softmax` | exp(ℓ_k) / Σ_j exp(ℓ_j): the weights sum to 1 (scale below)  |
| `topk`    | σ(ℓ_k) for the k largest ℓ_k of the row, 0 for the others    |

Every gate records its weights as ``basis_weights`` (logged as ``rec/<group key>/basis_weights``,
the mean usage of the bases at that site).

Initialisation (A = 0, so a fresh gate ignores its input):
* sigmoid, topk: c = log 9, so every weight starts at σ(log 9) = 0.9: a fresh BaFT is LoReFT with
  its edit scaled by 0.9, close to LoReFT but not saturated (σ' = 0.09 there, so the gate can
  still learn; c = +∞ would be LoReFT exactly and never learn).
* softmax: c = 0, so s_k = 1/r. The weights always sum to 1 over the r bases, so the edit starts
  at 1/r of LoReFT's and a softmax-gated edit mixes bases rather than switching each one on.
* topk: k = ``basis_topk`` (0: max(1, rank // 2)). The k bases are the k largest logits, ties
  broken by basis index (a stable sort), so a fresh gate keeps bases 0..k-1 for every input.
  Gradients flow through the kept weights only (the selection is a constant mask); the kept
  bases' rows of A learn first, and a dropped basis takes over an input once the kept logits
  fall below its own.

Router input (``basis_gate_input``): ``raw`` reads h as it is; ``unit`` reads h / ‖h‖₂. Residual
states are large (SmolLM2-135M at layer 15: ‖h‖₁ ≈ 2,000 per token, ≈ 60,000 on the first token),
and Adam's first steps move each weight by about lr whatever the gradient's size, so one step on a
raw-input router can move a logit by lr·‖h‖₁ (10 at lr 5e-3, far more on the first token) and
saturate the sigmoid, where σ' underflows and the gate stops learning. With unit inputs one step
moves a logit by at most lr·√d.

The router bias c is kept out of weight decay: decay would drag every weight toward σ(0) = 0.5.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reftx.core.intervention import Context
from reftx.parts.compose import BASIS_GATES

INIT_WEIGHT = 0.9  # every sigmoid / topk basis weight of a fresh gate


class BasisGate(nn.Module):
    """Router logits ℓ(h) = A h + c, or A h/‖h‖ + c (A = 0 at init); subclasses map them to weights."""

    no_decay = ("router.bias",)
    init_bias: float = math.log(INIT_WEIGHT / (1 - INIT_WEIGHT))

    def __init__(self, dim: int, config: object):
        super().__init__()
        self.rank = int(config.rank)
        self.router = nn.Linear(dim, self.rank)
        nn.init.zeros_(self.router.weight)
        nn.init.constant_(self.router.bias, self.init_bias)
        self.unit_input = getattr(config, "basis_gate_input", "raw") == "unit"

    def weights(self, logits: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, h: Tensor, ctx: Context) -> Tensor:
        """h (n, d) -> s (n, r) in [0, 1]."""
        x = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-6) if self.unit_input else h
        s = self.weights(self.router(x))
        ctx.record("basis_weights", s)
        return s


@BASIS_GATES.register("sigmoid")
class SigmoidGate(BasisGate):
    """s_k = σ(a_kᵀ h + c_k)."""

    def weights(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)


@BASIS_GATES.register("softmax")
class SoftmaxGate(BasisGate):
    """s = softmax(A h + c) over the r bases (sums to 1; 1/r each at init)."""

    init_bias = 0.0

    def weights(self, logits: Tensor) -> Tensor:
        return torch.softmax(logits, dim=-1)


@BASIS_GATES.register("topk")
class TopKGate(BasisGate):
    """s_k = σ(a_kᵀ h + c_k) for the k largest logits of the row, 0 elsewhere."""

    def __init__(self, dim: int, config: object):
        super().__init__(dim, config)
        self.k = int(getattr(config, "basis_topk", 0)) or max(1, self.rank // 2)

    def weights(self, logits: Tensor) -> Tensor:
        keep = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., : self.k]
        mask = torch.zeros_like(logits).scatter(-1, keep, 1.0)
        return torch.sigmoid(logits) * mask


__all__ = ["BasisGate", "INIT_WEIGHT", "SigmoidGate", "SoftmaxGate", "TopKGate"]


# -- losses on basis usage (BaFT's balance and locality terms; also the knowledge-editing loop's) --
def switch_balance(s: Tensor, rows: Tensor) -> Tensor:
    """r · Σ_k f_k · P_k over the rows with ``rows`` = 1. s: (n, r), rows: (n,) of 0/1."""
    r = s.shape[-1]
    s, rows = s.float(), rows.float()
    n = rows.sum().clamp_min(1.0)
    f = (F.one_hot(s.detach().argmax(-1), r).float() * rows[:, None]).sum(0) / n
    share = s / s.sum(-1, keepdim=True).clamp_min(1e-12)
    p = (share * rows[:, None]).sum(0) / n
    return r * (f * p).sum()


def variance_balance(s: Tensor, rows: Tensor) -> Tensor:
    """Var_k(u_k), u_k = mean of s_k over the rows with ``rows`` = 1 (population variance)."""
    rows = rows.float()
    u = (s.float() * rows[:, None]).sum(0) / rows.sum().clamp_min(1.0)
    return u.var(unbiased=False)


def locality_gate_loss(s: Tensor, loc: Tensor, margin: float = 0.0) -> Tensor:
    """Mean of max(s − margin, 0) over the locality rows (``loc`` = 1) and every basis; 0 without
    locality rows. margin 0 gives the mean of s (the gates are >= 0)."""
    loc = loc.float()
    excess = (s.float() - margin).clamp_min(0.0)
    return (excess * loc[:, None]).sum() / (loc.sum() * s.shape[-1]).clamp_min(1.0)
