"""TopK-ReFT: LoReFT that edits only the k largest subspace coordinates of each row (methods/README.md)."""
from dataclasses import dataclass

import torch
from torch import Tensor

from reftx.errors import ConfigError
from reftx.intervention import Context, register_intervention
from reftx.parts import SubspaceConfig, SubspaceIntervention


@dataclass(frozen=True)
class TopKReftConfig(SubspaceConfig):
    """SubspaceConfig (rank, activation, dropout, gates, bound) plus
    k: how many of the r coordinates of the edit each row keeps (1 <= k <= rank)."""

    k: int = 2

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.k <= self.rank:
            raise ConfigError("k", f"must be in [1, rank={self.rank}], got {self.k}")


@register_intervention("topk_reft")
class TopKReFT(SubspaceIntervention):
    """h' = h + Rᵀ top_k(W h + b − R h): the other r − k coordinates of the edit are zeroed."""

    Config = TopKReftConfig
    orthogonal, source_kind, subtract = True, "linear", True  # LoReFT's R, W h + b and − R h

    def coordinates(self, h: Tensor, basis: Tensor, ctx: Context) -> Tensor:
        z = super().coordinates(h, basis, ctx)  # (n, r), after any basis gate
        keep = z.abs().topk(self.config.k, dim=-1).indices
        sparse = torch.zeros_like(z).scatter(-1, keep, z.gather(-1, keep))
        ctx.record("kept_norm_share", sparse.norm(dim=-1) / z.norm(dim=-1).clamp_min(1e-12))
        return sparse
