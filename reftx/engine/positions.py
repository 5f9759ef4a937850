"""Index tensors for the scheduled positions of one forward pass.

Every example row b is described by its ``Spans``: three indices into the (padded) sequence
(named spans, not bounds: "bound" in reftx means a norm bound on an edit, reftx.parts.norm_bounds):
``start`` (first non-padding token), ``prompt_end`` (one past the last prompt
token) and ``end`` (one past the last non-padding token). Left and right
padding are both just different ``start``/``end``.

The prompt ends where the labels start: the first position from ``start`` whose
label is not -100. Without labels the whole non-padding span is the prompt.
An explicit ``prompt_lengths`` (B,) overrides both.

``rows(...)`` returns the flat (batch, position) indices of every edited slot,
built with tensor ops only (no Python loop over examples); padded slots never
appear in them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from reftx.engine.schedule import PositionSpec

IGNORE = -100


@dataclass(frozen=True)
class Spans:
    start: Tensor  # (B,) long
    prompt_end: Tensor  # (B,) long
    end: Tensor  # (B,) long
    seq_len: int


def _first_true(x: Tensor, default: Tensor) -> Tensor:
    """Index of the first True along dim 1, or ``default`` where a row has none."""
    return torch.where(x.any(1), x.int().argmax(1), default)


def spans(
    attention_mask: Tensor | None,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    labels: Tensor | None = None,
    prompt_lengths: Tensor | None = None,
    prompt_end: int | None = None,
) -> Spans:
    """Start, prompt end and end of every row. ``prompt_end`` (absolute, shared) is for generation."""
    if attention_mask is None:
        mask = torch.ones(batch_size, seq_len, dtype=torch.bool, device=device)
    else:
        if attention_mask.shape != (batch_size, seq_len):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(batch_size, seq_len)}")
        mask = attention_mask.bool()
    full = torch.full((batch_size,), seq_len, dtype=torch.long, device=device)
    start = _first_true(mask, full)
    end = seq_len - _first_true(mask.flip(1), full)
    if prompt_lengths is not None:
        pl = torch.as_tensor(prompt_lengths, device=device).long().reshape(-1)
        if pl.shape[0] != batch_size:
            raise ValueError(f"prompt_lengths has {pl.shape[0]} entries for a batch of {batch_size}")
        if bool((pl < 1).any()) or bool((pl > end - start).any()):
            raise ValueError(f"prompt_lengths must be in [1, number of non-padding tokens]; got {pl.tolist()} "
                             f"for lengths {(end - start).tolist()}")
        pend = start + pl
    elif prompt_end is not None:
        pend = torch.clamp(torch.full_like(start, prompt_end), max=end)
    elif labels is not None and labels.dim() == 2 and labels.shape == (batch_size, seq_len):
        idx = torch.arange(seq_len, device=device)
        response = (labels != IGNORE) & mask & (idx >= start[:, None])
        pend = _first_true(response, end)
    else:
        pend = end
    return Spans(start, pend, end, seq_len)


def _grid(offset: Tensor, count: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Flat (batch, position) of ``offset[b] + j`` for ``j < count[b]``, j < width."""
    j = torch.arange(width, device=offset.device)
    b, jj = (j[None, :] < count[:, None]).nonzero(as_tuple=True)
    return b, offset[b] + jj


def part_rows(bd: Spans, spec: PositionSpec, part: str) -> tuple[Tensor, Tensor]:
    """Rows of one position part in a full (non-cached) forward."""
    length = bd.prompt_end - bd.start
    if part in ("first", "last"):
        p, s = spec.first, spec.last
        if p > 0 and s > 0:
            short = length < p + s
            p_eff = torch.where(short, torch.clamp(length // 2, max=p), p)
            s_eff = torch.where(short, torch.clamp(length - p_eff, max=s), s)
        else:
            p_eff, s_eff = torch.clamp(length, max=p), torch.clamp(length, max=s)
        if part == "first":
            return _grid(bd.start, p_eff, p)
        return _grid(bd.prompt_end - s_eff, s_eff, s)
    if part == "last_prompt":
        return _grid(bd.prompt_end - 1, (length > 0).long(), 1)
    if part == "all_prompt":
        return _grid(bd.start, length, bd.seq_len)
    if part == "all":
        return _grid(bd.start, bd.end - bd.start, bd.seq_len)
    # a generated part: the first n tokens after the prompt
    rest = bd.end - bd.prompt_end
    count = rest if spec.generated < 0 else torch.clamp(rest, max=spec.generated)
    return _grid(bd.prompt_end, count, bd.seq_len if spec.generated < 0 else spec.generated)


def explicit_rows(positions: Tensor, attention_mask: Tensor | None, seq_len: int) -> tuple[Tensor, Tensor]:
    """Rows from a user-given (B, K) position tensor; -1 marks an unused slot."""
    positions = torch.as_tensor(positions)
    if positions.dim() != 2:
        raise ValueError(f"intervention_positions must have shape (batch, k), got {tuple(positions.shape)}")
    if bool(((positions < -1) | (positions >= seq_len)).any()):
        raise ValueError(f"intervention_positions must be in [0, {seq_len}) or -1 for none")
    b, j = (positions >= 0).nonzero(as_tuple=True)
    p = positions[b, j]
    if attention_mask is not None and not bool(attention_mask[b, p].bool().all()):
        raise ValueError("intervention_positions point at padding (attention_mask is 0 there)")
    return b, p
