"""The vLLM plugin's token placement equals reftx's own generate-time placement (no vLLM needed).

A vLLM forward is a flat list of (request, absolute position) tokens: whole prompts, prompt chunks
(chunked prefill, prefix-cache continuations) and decode steps, mixed. For every schedule family,
the rows ``Placement`` edits must be, request by request, exactly the positions
``reftx.engine.generation.window_rows`` edits in ``ReftModel.generate`` for a window at the same
place of a prompt of the same length."""
from __future__ import annotations

import pytest
import torch

from reftx.engine import positions as P
from reftx.engine.generation import Window, window_rows
from reftx.engine.schedule import parse_positions
from reftx.integrations.vllm.placement import Placement

SPECS = [{"first": 3, "last": 2}, {"last": 1}, {"first": 2}, "last_prompt", "all_prompt", "all",
         {"generated": 2}, {"generated": -1}, {"generated": 2, "prompt": True}]
# (prompt length, window offset, window length, adapter): prefill, chunks, decode steps, other adapters
LAYOUT = [(7, 0, 7, 0), (12, 0, 4, 0), (12, 4, 5, 0), (12, 9, 3, 0), (5, 5, 1, 0), (5, 6, 1, 0), (5, 9, 1, 0),
          (1, 0, 1, 0), (3, 3, 1, 0), (6, 0, 6, 1), (6, 7, 1, -1), (4, 0, 4, -1)]


def _expected(length: int, offset: int, size: int, spec) -> set[int]:
    """The absolute positions ReftModel.generate edits in a window [offset, offset + size)."""
    prompt = P.spans(None, 1, length, torch.device("cpu"), prompt_end=length)
    window = Window(offset, size, offset < length)
    out: set[int] = set()
    for part in spec.parts:
        _, p = window_rows(prompt, length, window, spec, part)
        out |= {offset + int(x) for x in p}
    return out


def _placement(layout, pad: int = 3) -> Placement:
    positions = torch.cat([torch.arange(o, o + n) for _, o, n, _ in layout] + [torch.zeros(pad, dtype=torch.long)])
    starts = torch.tensor([0] + [n for _, _, n, _ in layout]).cumsum(0).int()
    return Placement(positions, starts, torch.tensor([L for L, *_ in layout]), torch.tensor([a for *_, a in layout]))


@pytest.mark.parametrize("raw", SPECS, ids=str)
def test_rows_equal_generate_placement(raw):
    spec = parse_positions(raw)
    place = _placement(LAYOUT)
    rows = place.rows(0, spec, spec.parts)
    got: dict[int, set[int]] = {}
    for t in rows.tolist():
        got.setdefault(int(place.req[t]), set()).add(int(place.pos[t]))
    for r, (length, offset, size, adapter) in enumerate(LAYOUT):
        want = _expected(length, offset, size, spec) if adapter == 0 else set()
        assert got.get(r, set()) == want, (r, LAYOUT[r])


def test_padding_and_other_adapters_are_never_edited():
    spec = parse_positions("all")
    place = _placement(LAYOUT, pad=5)
    total = sum(n for _, _, n, _ in LAYOUT)
    assert place.rows(0, spec, spec.parts).max() < total
    assert place.rows(1, spec, spec.parts).tolist() == list(range(sum(n for _, _, n, _ in LAYOUT[:9]),
                                                                  sum(n for _, _, n, _ in LAYOUT[:10])))
    assert place.rows(2, spec, spec.parts).numel() == 0


def test_short_prompt_splits_first_last_as_reftx_does():
    # L = 3 with {first: 3, last: 2}: first' = min(3, 3 // 2) = 1 -> [0]; last' = min(2, 3 - 1) = 2 -> [1, 2]
    spec = parse_positions({"first": 3, "last": 2})
    place = _placement([(3, 0, 3, 0)], pad=0)
    assert place.rows(0, spec, ("first",)).tolist() == [0]
    assert place.rows(0, spec, ("last",)).tolist() == [1, 2]
