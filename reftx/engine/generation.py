"""Where each forward of a ``generate`` call sits in the sequence, without trusting keyword names.

transformers changes what ``generate`` hands to the model between minor releases (5.24: the KV
cache arrives as ``cache=``, no ``cache_position``, no ``attention_mask`` when nothing is padded).
reftx therefore never infers prefill versus decode from those names. A :class:`GenerationState`
is opened by ``ReftModel.generate`` from its *own* arguments (prompt width, mask, a user-supplied
cache) and then places every forward it drives from two counts it keeps itself:

* ``consumed``: prompt tokens already run. Forwards run the prompt until all ``width`` prompt
  tokens are consumed (one prefill forward, several with ``prefill_chunk_size``; a continuation of
  a user-supplied cache starts at that cache's length; under assisted decoding the forward that
  finishes the prompt also carries the first candidate tokens).
* ``generated``: tokens appended so far, read from a stopping criterion that ``generate`` calls
  after every step with the whole sequence (exact under assisted decoding, where a step may
  append several tokens) and otherwise counted (one per forward).

After the prefill the sequence holds ``L = width + generated`` tokens. A forward whose input is at
least ``L`` long and that carries no non-empty cache re-runs the whole sequence (``use_cache=False``:
offset 0); any other forward continues the cache at offset ``L - 1`` (the last token). Any
``transformers.Cache`` found among the forward's arguments (by type, whatever its keyword) is a
cross-check: if its length disagrees with the offset, the forward fails loudly instead of silently
editing the wrong tokens. Assisted decoding (an assistant model or prompt lookup, known from
generate's own arguments) is the one exception: how many verified tokens the cache keeps is decided
inside transformers and differs between releases, so there the cache length places the window and
the counts bound it (see ``_assisted_window``).

Every forward then covers the absolute positions ``[offset, offset + s)`` of one virtual sequence
``prompt ++ generated``; :func:`window_rows` turns a position part into local row indices of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import StoppingCriteria
from transformers.cache_utils import Cache

from reftx.engine import positions as P
from reftx.core.errors import DataError, ReftError
from reftx.engine.schedule import PositionSpec

PROMPT_PARTS = ("first", "last", "last_prompt", "all_prompt")


def find_cache(args: tuple, kwargs: dict) -> Cache | None:
    """The first ``transformers.Cache`` among a call's arguments, whatever its keyword."""
    for v in (*args, *kwargs.values()):
        if isinstance(v, Cache):
            return v
    return None


def cache_length(cache: Cache | None) -> int | None:
    if cache is None:
        return None
    return int(cache.get_seq_length())


def check_left_padded(mask: Tensor) -> None:
    """Refuse a (B, T) generate mask that is not left-padded: every row must be zeros, then ones.

    ``generate`` appends each new token after the last column, so a right-padded row would continue
    after its padding, and a 0 between 1s would hide a prompt token. One vectorised test (a 1
    followed by a 0 anywhere) and one sync; the row and column are found only when it fails."""
    drop = mask[:, 1:] < mask[:, :-1]  # (B, T-1): position j is a token, j + 1 is not
    if not bool(drop.any()):
        return
    row = int(drop.any(1).nonzero()[0, 0])
    col = int(drop[row].nonzero()[0, 0])  # the row's last token before a 0
    later = (mask[row, col + 1:] != 0).nonzero()
    if later.numel():
        hole = col + 1
        raise DataError(f"generate: attention_mask row {row} has a 0 at position {hole} between tokens (1s); a "
                        "prompt must be one contiguous run of tokens with padding only on the left: mask no "
                        "token inside a prompt (and set tokenizer.padding_side = \"left\")")
    pad = mask.shape[1] - col - 1
    raise DataError(f"generate: attention_mask is right-padded (row {row} ends in {pad} padding token"
                    f"{'s' if pad != 1 else ''}), but new tokens are appended after the last column; generation "
                    "needs left padding: set tokenizer.padding_side = \"left\" before tokenizing the prompts")


@dataclass
class Window:
    """One forward of a generate call: input positions ``[offset, offset + length)``."""

    offset: int
    length: int
    prefill: bool


class _Progress(StoppingCriteria):
    """Never stops generation; records the sequence length ``generate`` has reached."""

    def __init__(self, state: GenerationState) -> None:
        self.state = state

    def __call__(self, input_ids: Tensor, scores: Any, **kwargs: Any) -> Tensor:
        self.state.observe(input_ids.shape[1])
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class GenerationState:
    """Per-``generate`` bookkeeping (see the module docstring). ``width`` is the padded prompt
    length in absolute positions; ``ids_len`` the width of the ``input_ids`` given to generate
    (what the stopping criterion's sequences start from); ``offset0`` the length of a
    user-supplied cache; ``mask`` the attention mask given to generate (or None)."""

    def __init__(self, width: int, ids_len: int, offset0: int = 0, mask: Tensor | None = None,
                 prompt_lengths: Tensor | None = None, assisted: bool = False) -> None:
        if offset0 >= width:
            raise ReftError(f"the cache passed to generate already holds {offset0} tokens but the prompt has "
                            f"{width}: pass the whole sequence (cached prefix + new tokens) as input_ids")
        self.width, self.ids_len = width, ids_len
        self.mask, self.prompt_lengths, self.assisted = mask, prompt_lengths, assisted
        self.consumed = offset0
        self.generated = 0
        self._observed: int | None = None
        self.prompt: P.Spans | None = None  # start / prompt_end of every (expanded) row, set at prefill

    def criterion(self) -> StoppingCriteria:
        return _Progress(self)

    def observe(self, seq_len: int) -> None:
        self._observed = seq_len - self.ids_len

    def locate(self, length: int, cache_len: int | None) -> Window:
        """Place a forward whose input has ``length`` tokens (``cache_len``: a cross-check)."""
        if self.consumed < self.width:
            # the forward that finishes the prompt may also carry candidate tokens (assisted decoding
            # verifies its first candidates together with the prompt): those are generated tokens 0, 1, ...
            w = Window(self.consumed, length, True)
            self.consumed = min(self.width, self.consumed + length)
        else:
            if self._observed is not None:
                self.generated, self._observed = self._observed, None
            else:
                self.generated += 1
            total = self.width + self.generated
            if self.assisted:
                return self._assisted_window(length, cache_len, total)
            full = length >= total and not cache_len
            w = Window(0 if full else total - 1, length, False)
        if cache_len is not None and cache_len != w.offset:
            raise ReftError(
                f"reftx placed this generate forward at offset {w.offset} ({self.width} prompt tokens, "
                f"{self.generated} generated, input of {length}) but the KV cache holds {cache_len} tokens. "
                "This transformers release drives generation in a way reftx does not know; refusing to "
                "edit the wrong tokens. Please report it with your transformers version.")
        return w

    def _assisted_window(self, length: int, cache_len: int | None, total: int) -> Window:
        """Assisted decoding: how many verified tokens the KV cache keeps is decided inside
        transformers' acceptance step and differs between releases (5.0 keeps one fewer than 5.24),
        so here the cache length places the window and the counts bound it: the input must hold
        the last token of the sequence (offset <= L - 1) and reach the sequence's end (offset +
        length >= L)."""
        if cache_len is None:
            raise ReftError("assisted decoding continues a KV cache, but none was found among the model's "
                            "arguments; reftx cannot place the candidate tokens")
        if not (cache_len <= total - 1 and cache_len + length >= total):
            raise ReftError(f"assisted decoding: the KV cache holds {cache_len} tokens and the input has {length}, "
                            f"which cannot continue a sequence of {total} tokens ({self.width} prompt, "
                            f"{self.generated} generated); refusing to edit the wrong tokens")
        return Window(cache_len, length, False)

    def open_prompt(self, batch: int, fwd_mask: Any, device: torch.device) -> P.Spans:
        """Prompt bounds of every row, from generate's own mask (expanded over beams / returned
        sequences), else the forward's mask, else all ones."""
        if self.prompt is not None and self.prompt.start.shape[0] == batch:
            return self.prompt
        mask = self.mask
        if mask is not None and mask.shape[0] != batch:
            if batch % mask.shape[0]:
                raise ReftError(f"generate's attention_mask has {mask.shape[0]} rows; the model runs {batch}")
            mask = mask.repeat_interleave(batch // mask.shape[0], dim=0)
        if mask is None and isinstance(fwd_mask, Tensor) and fwd_mask.dim() == 2 and fwd_mask.shape[0] == batch \
                and fwd_mask.shape[1] >= self.width:
            mask = fwd_mask
        if mask is not None:
            mask = mask[:, :self.width].to(device)
        pl = self.prompt_lengths
        if pl is not None:
            pl = torch.as_tensor(pl, device=device).reshape(-1)
            if pl.shape[0] != batch:
                pl = pl.repeat_interleave(batch // pl.shape[0])
        self.prompt = P.spans(mask, batch, self.width, device, None, pl, self.width)
        return self.prompt


def _tail_rows(batch: int, lo: int, hi: int, offset: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Every row at absolute positions [lo, hi), as local positions of a window at ``offset``."""
    count = max(0, hi - lo)
    b = torch.arange(batch, device=device).repeat_interleave(count)
    p = torch.arange(lo - offset, lo - offset + count, device=device).repeat(batch)
    return b, p


def window_rows(prompt: P.Spans, width: int, w: Window, spec: PositionSpec, part: str) -> tuple[Tensor, Tensor]:
    """Local (batch, position) rows of one position part inside the window ``w`` of a generate call.

    Prompt parts are the prompt's own rows (a window past the prompt has none); ``all`` is every
    non-padding position; a generated part is generated token i (absolute position width + i) for
    i < n (every i for n = -1)."""
    device = prompt.start.device
    batch = prompt.start.shape[0]
    end = w.offset + w.length
    if part in PROMPT_PARTS:
        if w.offset >= width:
            return _tail_rows(batch, 0, 0, 0, device)
        b, p = P.part_rows(prompt, spec, part)
        if w.offset or end < width:
            keep = (p >= w.offset) & (p < end)
            b, p = b[keep], p[keep] - w.offset
        return b, p
    if part == "all":
        if w.offset >= width:
            return _tail_rows(batch, w.offset, end, w.offset, device)
        full = P.Spans(prompt.start, prompt.prompt_end, torch.full_like(prompt.start, end), end)
        b, p = P.part_rows(full, spec, "all")
        keep = p >= w.offset
        return b[keep], p[keep] - w.offset
    n = spec.generated
    lo, hi = max(width, w.offset), end if n < 0 else min(end, width + n)
    return _tail_rows(batch, lo, hi, w.offset, device)


def open_generation(base: Any, args: tuple, kwargs: dict[str, Any], prompt_lengths: Tensor | None = None,
                    who: str = "ReftModel.generate") -> GenerationState:
    """The :class:`GenerationState` of one ``generate`` call, from that call's own arguments (input
    ids or embeddings, a left-padded mask, a user-supplied cache, assisted decoding); ``who`` names
    the caller in errors (ReftModel.generate, MultiReft.generate)."""
    ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
    embeds = kwargs.get("inputs_embeds")
    mask = kwargs.get("attention_mask")
    if ids is None and embeds is None:
        raise ValueError(f"{who} needs input_ids (or inputs_embeds)")
    if isinstance(mask, Tensor) and mask.dim() == 2:
        check_left_padded(mask)
    ids_len = ids.shape[1] if ids is not None else 0
    width = max(ids_len, embeds.shape[1] if embeds is not None else 0,
                mask.shape[1] if isinstance(mask, Tensor) and mask.dim() == 2 else 0)
    return GenerationState(width, ids_len, cache_length(find_cache((), kwargs)) or 0,
                           mask if isinstance(mask, Tensor) else None, prompt_lengths,
                           assisted=is_assisted(kwargs, base))


_ASSISTED = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")


def is_assisted(kwargs: dict[str, Any], base: Any) -> bool:
    """Whether a generate call (its own arguments, or the generation config it uses) is assisted."""
    cfg = kwargs.get("generation_config") or getattr(base, "generation_config", None)
    return any(kwargs.get(k) is not None for k in _ASSISTED) or \
        any(getattr(cfg, k, None) is not None for k in _ASSISTED[1:])
