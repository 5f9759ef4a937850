"""A bank of independent interventions at one site, routed per example (the editing engine's slots).

``slot_bank`` holds ``slots`` copies of one primitive (``inner``, built with ``options``). Each
row gathered at the site goes to the copy named by ``example_info["edit_slot"]`` of its example
(slot 0 when absent, e.g. in ``generate``), so K edits train side by side in one forward, each
with its own parameters, and none sees another's rows: with a loss that is a sum of per-slot
losses, slot k's gradient is the gradient of its own loss alone.

``example_info["edit_pos"]`` (optional) restricts an example to one prompt token: with
``positions: all_prompt`` the site gathers the example's prompt tokens in order, and only the
row at index ``edit_pos`` (0 = the first prompt token) is edited; -1 edits them all. This is how
the last subject token is edited without per-call position tensors (reftx/recipes/edit/engine.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from reftx.core.intervention import INTERVENTIONS, Context, Intervention, make_intervention, register_intervention

EDIT_SLOT = "edit_slot"
EDIT_POS = "edit_pos"


@dataclass(frozen=True)
class SlotBankConfig:
    """inner: the primitive of every slot; slots: how many copies; options: the inner primitive's options."""

    inner: str = "loreft"
    slots: int = 1
    options: dict[str, Any] = field(default_factory=dict)


def row_rank(batch_index: Tensor) -> Tensor:
    """Index of each row among the rows of its example (rows grouped by example, in order)."""
    n = batch_index.numel()
    counts = torch.bincount(batch_index)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(n, device=batch_index.device) - starts[batch_index]


@register_intervention("slot_bank")  # an engine detail: resolvable, never listed (INTERVENTIONS.hide below)
class SlotBank(Intervention):
    """``slots`` independent copies of ``inner``; row i is edited by copy example_info["edit_slot"]."""

    Config = SlotBankConfig

    def __init__(self, config: SlotBankConfig, dim: int):
        super().__init__(config, dim)
        if config.slots < 1:
            raise ValueError(f"slot_bank needs slots >= 1, got {config.slots}")
        self.slots = nn.ModuleList(self.fresh() for _ in range(config.slots))

    def fresh(self) -> Intervention:
        """A newly initialised copy of the inner primitive (uses the global torch RNG)."""
        return make_intervention(self.config.inner, dict(self.config.options), self.dim, "options.")

    def reset(self, slot: int, seed: int) -> None:
        """Re-initialise one slot exactly as a fresh primitive built after ``torch.manual_seed(seed)``."""
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            fresh = self.fresh().to(next(self.slots[slot].parameters()).device)
        finally:
            torch.random.set_rng_state(state)
        self.slots[slot].load_state_dict(fresh.state_dict())

    def forward(self, h: Tensor, ctx: Context) -> Tensor:
        info = ctx.example_info
        bi = ctx.batch_index
        slot = info[EDIT_SLOT].to(h.device)[bi].long() if EDIT_SLOT in info else torch.zeros_like(bi)
        keep = torch.ones_like(bi, dtype=torch.bool)
        if EDIT_POS in info:
            pos = info[EDIT_POS].to(h.device)[bi].long()
            keep = (pos < 0) | (row_rank(bi) == pos)
        out = h.clone()
        for k in torch.unique(slot[keep]).tolist():
            rows = ((slot == k) & keep).nonzero().squeeze(1)
            out[rows] = self.slots[k](h[rows], ctx.at(ctx.key, ctx.layer, bi[rows]))
        return out

    def no_decay_parameters(self) -> set[str]:
        return {f"slots.{k}.{n}" for k, m in enumerate(self.slots) for n in m.no_decay_parameters()}


INTERVENTIONS.hide("slot_bank")

__all__ = ["EDIT_POS", "EDIT_SLOT", "SlotBank", "row_rank"]
