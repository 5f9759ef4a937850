"""TopK-ReFT: LoReFT that edits only the k largest subspace coordinates of each row (methods/README.md)."""
from dataclasses import dataclass

import torch
from torch import Tensor

from reftx.core.errors import ConfigError
from reftx.core.intervention import Context
from reftx.parts import Delta, SubspaceConfig, register_primitive, subspace


@dataclass(frozen=True)
class TopKReftConfig(SubspaceConfig):
    """SubspaceConfig (rank, activation, dropout, gates, bound) plus
    k: how many of the r coordinates of the edit each row keeps (1 <= k <= rank)."""

    k: int = 2

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.k <= self.rank:
            raise ConfigError("k", f"must be in [1, rank={self.rank}], got {self.k}")


def keep_top_k(delta: Delta, z: Tensor, ctx: Context) -> Tensor:
    """Zero all but the k largest-magnitude coordinates of each row of the (n, r) edit."""
    keep = z.abs().topk(delta.config.k, dim=-1).indices
    sparse = torch.zeros_like(z).scatter(-1, keep, z.gather(-1, keep))
    ctx.record("kept_norm_share", sparse.norm(dim=-1) / z.norm(dim=-1).clamp_min(1e-12))
    return sparse


# LoReFT's R, W h + b and − R h, with the top-k step after any basis gate
register_primitive("topk_reft", TopKReftConfig, subspace(True, "linear", True, on_coordinates=keep_top_k),
                   "h' = h + Rᵀ top_k(W h + b − R h): the other r − k coordinates of the edit are zeroed.")
