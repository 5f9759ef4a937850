"""BaFT (Liu et al., ICLR 2025): basis-level ReFT, LoReFT with an input-dependent weight per basis.

    h' = h + Rᵀ diag(s(h)) (W h + b − R h),   s(h) in [0, 1]^r from a basis gate

The gates (sigmoid, the default; softmax; topk) and their initialisation live in
``reftx/parts/basis_gates.py``. With s ≡ 1 this is LoReFT exactly (tests/unit/methods/test_baft.py).

Auxiliary losses, off by default (weight 0), added per site with ``ctx.add_loss`` (so, like every
gate loss, they are summed over the sites). Rows are the gathered positions of one forward;
rows of examples with ``example_info["locality"] == 1`` are *locality rows* (unrelated prompts).

* ``baft_balance`` = balance_weight · B(s) over the rows that are not locality rows, with
  balance_loss = ``switch``:   B = r · Σ_k f_k · P_k, where f_k is the share of rows whose largest
                 weight is basis k (a count: no gradient) and P_k the mean over rows of
                 s_k / Σ_j s_j, the share of the gate mass on basis k. B = 1 when usage is uniform,
                 up to r when one basis takes every row. P_k is normalised per row because sigmoid
                 weights do not sum to 1: with raw weights the loss would also fall by shrinking
                 every gate, which is the locality loss's job, not balancing.
               ``variance``: B = Var_k(u_k) (population variance over the r bases) of the mean
                 usage u_k = mean over rows of s_k: 0 when every basis is used equally on average.
* ``baft_locality`` = locality_weight · mean of max(s_k − m, 0) over the locality rows and all k,
  m = locality_margin (default 0: the mean of s_k): pulls the gates toward 0 on unrelated prompts
  (0 when the batch has no locality row). With m > 0 a gate at or below m feels no pull, so the
  loss cannot drive the router into saturation (σ' ≈ 0), where no edit's gradient could reopen
  it: the failure of sequential editing with m = 0 in docs/results.md. Needs
  ``example_info["locality"]`` in a training forward (train mode, gradients on: a DataError
  otherwise); in evaluation and generation, without it, nothing is added.

The objective ``baft_locality_kl`` (``train.objective: baft_locality_kl``) is the other locality
option: the NLL of the non-locality rows plus λ · KL(unedited ‖ edited) of the next-token
distributions on the locality rows, the unedited one from ``model.disabled()`` under no_grad.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from reftx.parts.basis_gates import locality_gate_loss, switch_balance, variance_balance
from reftx.core.errors import ConfigError, DataError
from reftx.core.intervention import Context
from reftx.train.objectives import register_objective
from reftx.parts import Delta, SubspaceConfig, register_primitive, subspace
from reftx.engine.model import unwrap
from reftx.data.encoding import prompt_lengths
from reftx.engine.positions import IGNORE

LOCALITY = "locality"  # the example_info key marking unrelated prompts (1) and edits (0)


@dataclass(frozen=True)
class BaftConfig(SubspaceConfig):
    """SubspaceConfig (rank, activation, dropout, input_gate, bound...) with a basis gate always on, plus

    basis_gate: sigmoid (default) | softmax | topk (basis_topk = k, 0: rank // 2).
    balance_loss: switch (r · Σ f_k P_k) | variance (Var_k of mean usage); see the module docstring.
    balance_weight: weight of the load-balancing loss (0: off).
    locality_weight: weight of the gate-toward-0 loss on locality rows (0: off).
    locality_margin: gates at or below it on locality rows are not pulled further (0: always pulled).
    """

    basis_gate: str = "sigmoid"
    balance_loss: Literal["switch", "variance"] = "switch"
    balance_weight: float = 0.0
    locality_weight: float = 0.0
    locality_margin: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.basis_gate == "none":
            raise ConfigError("basis_gate", "BaFT needs a basis gate (sigmoid, softmax or topk); "
                                            "without one it is loreft")
        for name in ("balance_weight", "locality_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.locality_margin < 1.0:
            raise ConfigError("locality_margin", f"must be in [0, 1) (a gate value), got {self.locality_margin}")


BALANCE = {"switch": switch_balance, "variance": variance_balance}


def _locality_rows(ctx: Context) -> Tensor | None:
    info = ctx.example_info.get(LOCALITY)
    return None if info is None else (info.to(ctx.batch_index.device)[ctx.batch_index] == 1)


def baft_losses(delta: Delta, s: Tensor, ctx: Context) -> None:
    """BaFT's two auxiliary losses on the basis weights s(h) (see the module docstring)."""
    cfg = delta.config
    loc = _locality_rows(ctx)
    if cfg.locality_weight > 0 and loc is None and delta.training and torch.is_grad_enabled():
        raise DataError(f"baft: locality_weight > 0 needs example_info[{LOCALITY!r}] (1 for unrelated "
                        f"prompts, 0 for edits) in training; this batch has {sorted(ctx.example_info)}")
    if cfg.balance_weight > 0:
        edit = torch.ones_like(s[:, 0]) if loc is None else (~loc).float()
        ctx.add_loss("baft_balance", cfg.balance_weight * BALANCE[cfg.balance_loss](s, edit))
    if cfg.locality_weight > 0 and loc is not None:
        ctx.add_loss("baft_locality", cfg.locality_weight * locality_gate_loss(s, loc, cfg.locality_margin))


# LoReFT's parts and rule, with the basis gate always on and its losses on s(h)
register_primitive("baft", BaftConfig, subspace(True, "linear", True, on_weights=baft_losses),
                   "h' = h + Rᵀ diag(s(h)) (W h + b − R h); trains R, W, b and the gate (A, c).")


@dataclass(frozen=True)
class KlOptions:
    """Options of baft_locality_kl."""

    weight: float = 1.0  # λ: weight of the KL term (>= 0)
    positions: Literal["all", "response"] = "all"  # all attended tokens of a locality row, or those whose next token is labelled
    locality_nll: bool = False  # also train the NLL of the locality rows' targets

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError("weight", f"must be a finite number >= 0, got {self.weight!r}")


def next_token_kl(ref_logits: Tensor, logits: Tensor, mask: Tensor) -> Tensor:
    """Mean over the positions with ``mask`` of KL(p_ref ‖ p) = Σ_v p_ref (log p_ref − log p).

    ref_logits, logits: (b, t, V); mask: (b, t) bool. 0 when the mask is empty."""
    ref = F.log_softmax(ref_logits.float(), -1)
    cur = F.log_softmax(logits.float(), -1)
    kl = (ref.exp() * (ref - cur)).sum(-1)
    mask = mask.float()
    return (kl * mask).sum() / mask.sum().clamp_min(1.0)


@register_objective("baft_locality_kl", KlOptions)
def baft_locality_kl(model: Any, batch: dict[str, Any],
                     options: KlOptions) -> tuple[Tensor, dict[str, float], Any]:
    """NLL on the edit rows + weight · KL(unedited ‖ edited)
    of the next-token distributions on the locality rows (``example_info["locality"] == 1``).

    options: weight (λ, default 1), positions (``all`` attended tokens of a locality row, or
    ``response``: those whose next token is labelled), locality_nll (also train the NLL of the
    locality rows' targets; default false: their labels are masked, their prompt spans kept).
    """
    opts = options
    info = batch.get("example_info") or {}
    if LOCALITY not in info:
        raise DataError(f"objective baft_locality_kl needs example_info[{LOCALITY!r}] (1 for unrelated prompts); "
                        f"this batch has {sorted(info)}")
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    loc = info[LOCALITY].to(ids.device) == 1
    call = dict(batch)
    if loc.any() and not opts.locality_nll:
        # mask the locality rows' labels, keeping every row's prompt span (read off the original labels)
        call["prompt_lengths"] = prompt_lengths(call).clamp_min(1)
        call["labels"] = labels.masked_fill(loc[:, None], IGNORE)
        if not bool((call["labels"] != IGNORE).any()):
            call["labels"] = None  # nothing but locality rows: no NLL term this step
    out = model(**call)
    nll = torch.zeros((), device=ids.device) if call["labels"] is None else out.loss
    kl = torch.zeros((), device=ids.device)
    if loc.any():
        where = mask.bool()
        if opts.positions == "response":
            where = where & F.pad(labels[:, 1:] != IGNORE, (0, 1), value=False)
        reft = unwrap(model)  # the reference pass needs no gradient sync
        with torch.no_grad(), reft.disabled():
            ref = reft(input_ids=ids[loc], attention_mask=mask[loc]).logits
        kl = next_token_kl(ref, out.logits[loc], where[loc])
    return nll + opts.weight * kl, {"nll": float(nll.detach()), "locality_kl": float(kl.detach()),
                  "locality_rows": float(loc.sum())}, out


__all__ = ["BaftConfig", "baft_losses", "locality_gate_loss", "next_token_kl", "switch_balance", "variance_balance"]
