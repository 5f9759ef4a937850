"""Position indices from attention masks, labels and prompt lengths (hand-computed)."""
from __future__ import annotations

import pytest
import torch

from reftx.engine import positions as P
from reftx.engine.schedule import parse_positions

MASK = torch.tensor([
    [1, 1, 1, 1, 1, 1, 1, 1],  # no padding
    [0, 0, 0, 1, 1, 1, 1, 1],  # left padded by 3
    [1, 1, 1, 1, 0, 0, 0, 0],  # right padded by 4
])
LABELS = torch.tensor([
    [-100, -100, -100, -100, -100, 5, 6, 7],  # prompt = 0..4, response 5..7
    [-100, -100, -100, -100, -100, -100, 9, 9],  # prompt = 3..5
    [-100, -100, 4, 4, -100, -100, -100, -100],  # prompt = 0..1, response 2..3
])


def rows(spec, mask=MASK, labels=LABELS, **kw):
    spec = parse_positions(spec)
    bd = P.spans(mask, mask.shape[0], mask.shape[1], torch.device("cpu"), labels, **kw)
    out = {}
    for part in spec.parts:
        b, p = P.part_rows(bd, spec, part)
        out[part] = [sorted(p[b == i].tolist()) for i in range(mask.shape[0])]
    return out


def test_bounds_left_and_right_padding():
    bd = P.spans(MASK, 3, 8, torch.device("cpu"), LABELS)
    assert bd.start.tolist() == [0, 3, 0]
    assert bd.end.tolist() == [8, 8, 4]
    assert bd.prompt_end.tolist() == [5, 6, 2]


def test_bounds_without_labels_is_whole_sequence():
    bd = P.spans(MASK, 3, 8, torch.device("cpu"))
    assert bd.prompt_end.tolist() == bd.end.tolist() == [8, 8, 4]


def test_first_last():
    assert rows({"first": 2, "last": 2}) == {
        "first": [[0, 1], [3], [0]],  # rows 1, 2: prompts of 3 and 2 < 4 -> first' = L // 2
        "last": [[3, 4], [4, 5], [1]],
    }


def test_short_prompt_uses_half_each_side():
    # prompt lengths 5, 3, 2 with first = last = 7: first' = L // 2, last' = L - first'
    r = rows({"first": 7, "last": 7})
    assert r["first"] == [[0, 1], [3], [0]]
    assert r["last"] == [[2, 3, 4], [4, 5], [1]]


def test_single_side_clamps_to_prompt():
    assert rows({"last": 4})["last"] == [[1, 2, 3, 4], [3, 4, 5], [0, 1]]


def test_other_modes():
    assert rows("last_prompt")["last_prompt"] == [[4], [5], [1]]
    assert rows("all_prompt")["all_prompt"] == [[0, 1, 2, 3, 4], [3, 4, 5], [0, 1]]
    assert rows("all")["all"] == [[0, 1, 2, 3, 4, 5, 6, 7], [3, 4, 5, 6, 7], [0, 1, 2, 3]]
    assert rows({"generated": 2})["gen2"] == [[5, 6], [6, 7], [2, 3]]
    assert rows({"generated": -1})["gen_all"] == [[5, 6, 7], [6, 7], [2, 3]]
    assert rows({"generated": 1, "prompt": True}) == {"all_prompt": [[0, 1, 2, 3, 4], [3, 4, 5], [0, 1]],
                                                     "gen1": [[5], [6], [2]]}


def test_prompt_lengths_override():
    r = rows("last_prompt", prompt_lengths=torch.tensor([1, 5, 4]))
    assert r["last_prompt"] == [[0], [7], [3]]
    with pytest.raises(ValueError, match="prompt_lengths must be in"):
        rows("last_prompt", prompt_lengths=torch.tensor([1, 6, 4]))  # row 1 has only 5 tokens


def test_explicit_rows_validated():
    b, p = P.explicit_rows(torch.tensor([[0, -1], [3, 7], [1, 2]]), MASK, 8)
    assert list(zip(b.tolist(), p.tolist())) == [(0, 0), (1, 3), (1, 7), (2, 1), (2, 2)]
    with pytest.raises(ValueError, match="padding"):
        P.explicit_rows(torch.tensor([[0], [0], [0]]), MASK, 8)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        P.explicit_rows(torch.tensor([[8], [3], [0]]), MASK, 8)
