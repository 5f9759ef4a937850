"""Where each token of one vLLM forward sits: its request, its absolute position, the request's
prompt length and adapter; and, per (adapter, position selector), the flat rows to edit.

vLLM flattens the scheduled tokens of every request into one (T, H) batch. The model runner knows,
for the forward it is about to run, ``query_start_loc`` (request r owns tokens ``[q[r], q[r+1])``),
the absolute ``positions`` of the tokens (prompt and generated alike: a chunk of a long prompt, a
prefix-cache continuation or a decode step all continue at ``num_computed_tokens``) and each
request's ``num_prompt_tokens``. That is enough to place reftx's schedules without a loop over
tokens: every position part of a request is one contiguous range of absolute positions,

* prompt parts (``first``/``last``/``last_prompt``/``all_prompt``): the rows reftx's own
  ``engine.positions.part_rows`` gives an unpadded prompt of that length (so a short prompt splits
  ``{first: p, last: s}`` exactly as ``ReftModel`` does);
* ``all``: every position; ``{generated: n}``: ``[L, L + n)`` (``[L, inf)`` for -1): generated token
  i at absolute position ``L + i``, the token ``ReftModel.generate`` edits at its i-th decode input;

so a token is edited when its position falls in its request's range and its request uses the adapter.
Ranges are built once per forward and part, masks once per (adapter, selector), shared by every layer.
"""
from __future__ import annotations

import torch
from torch import Tensor

from reftx.engine import positions as P
from reftx.engine.generation import PROMPT_PARTS
from reftx.engine.schedule import PositionSpec

FAR = 2 ** 62  # "no end" for ranges that run to the end of the sequence


class Placement:
    """One forward's token layout. ``positions`` (T,) absolute positions (T may include padding
    past the last request); ``starts`` (R+1,) query_start_loc; ``prompt_lens`` (R,) and
    ``adapters`` (R,) long (-1: the base model)."""

    def __init__(self, positions: Tensor, starts: Tensor, prompt_lens: Tensor, adapters: Tensor) -> None:
        n_req = prompt_lens.shape[0]
        tokens = positions.shape[0]
        ends = starts[1:n_req + 1].to(torch.long)
        self.num_reqs = n_req
        self.req = torch.bucketize(torch.arange(tokens), ends, right=True)  # R: padding, no request
        none = torch.full((1,), -1, dtype=torch.long)
        self.adapter = torch.cat([adapters.long(), none])[self.req]
        self.pos = positions.long()
        self.prompt_lens = prompt_lens.long()
        self._ranges: dict[tuple[PositionSpec, str], tuple[Tensor, Tensor]] = {}
        self._rows: dict[tuple[int, PositionSpec, tuple[str, ...]], Tensor] = {}

    def ranges(self, spec: PositionSpec, part: str) -> tuple[Tensor, Tensor]:
        """Per request, the absolute positions ``[lo, hi)`` that ``part`` of ``spec`` edits."""
        key = (spec, part)
        if key not in self._ranges:
            self._ranges[key] = _ranges(self.prompt_lens, spec, part)
        return self._ranges[key]

    def rows(self, adapter: int, spec: PositionSpec, parts: tuple[str, ...]) -> Tensor:
        """The flat token indices of ``adapter``'s requests that a group with ``spec``/``parts`` edits."""
        key = (adapter, spec, parts)
        if key not in self._rows:
            mine = self.adapter == adapter
            hit = torch.zeros_like(mine)
            req = self.req.clamp(max=max(self.num_reqs - 1, 0))
            for part in parts:
                lo, hi = self.ranges(spec, part)
                hit |= (self.pos >= lo[req]) & (self.pos < hi[req])
            self._rows[key] = (mine & hit).nonzero().squeeze(1)
        return self._rows[key]


def _ranges(prompt_lens: Tensor, spec: PositionSpec, part: str) -> tuple[Tensor, Tensor]:
    if part in PROMPT_PARTS:
        n_req = prompt_lens.shape[0]
        zero = torch.zeros_like(prompt_lens)
        width = int(prompt_lens.max()) if n_req else 0
        b, p = P.part_rows(P.Spans(zero, prompt_lens, prompt_lens, width), spec, part)
        count = torch.bincount(b, minlength=n_req)
        lo = torch.full_like(prompt_lens, FAR).scatter_reduce(0, b, p, reduce="amin")
        lo = torch.where(count > 0, lo, zero)
        return lo, lo + count  # every prompt part is one contiguous run
    if part == "all":
        return torch.zeros_like(prompt_lens), torch.full_like(prompt_lens, FAR)
    n = spec.generated  # a generated part
    return prompt_lens, (torch.full_like(prompt_lens, FAR) if n < 0 else prompt_lens + n)
