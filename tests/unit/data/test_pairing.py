"""reftx.data.pairing: open-unlearning's forget/retain pairing (every forget example with a retain
example drawn at random), seeded by (seed, epoch) so a resumed run sees the same pairs."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from reftx.core.errors import DataError
from reftx.data.encoding import Encoded, collate_train
from reftx.data.pairing import PairedSampler, Pairs, paired_order, split_roles, unpair


def examples(n_forget: int, n_retain: int, retain_first: bool = False) -> list[Encoded]:
    """Examples whose first token is their index; forget ones (gate_label 1) first unless ``retain_first``."""
    labels = [0.0] * n_retain + [1.0] * n_forget if retain_first else [1.0] * n_forget + [0.0] * n_retain
    return [Encoded([i, 5, 6][: 2 + i % 2], [-100, 5, 6][: 2 + i % 2], 1, info={"gate_label": g})
            for i, g in enumerate(labels)]


def batches(data: list[Encoded], batch_size: int, seed: int, epoch: int) -> list[dict]:
    dataset, sampler = paired_order(data, seed, "gate_label", "train.objective 'gd'")
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=lambda b: collate_train(unpair(b), 0))
    return list(loader)


@pytest.mark.parametrize("n_forget, n_retain, b", [(200, 40, 8), (7, 3, 2), (5, 9, 4)])
def test_every_batch_holds_equal_forget_and_retain_halves(n_forget, n_retain, b):
    """forget05 at batch 8 (200 forget, 40 retain): 25 steps, each 8 forget rows then 8 retain rows
    (the uniform shuffle of forget ∪ retain left 13 of its 60 steps without a retain row)."""
    data = examples(n_forget, n_retain, retain_first=n_retain > n_forget)
    out = batches(data, b, seed=0, epoch=0)
    assert len(out) == math.ceil(n_forget / b)  # an epoch is one pass over the forget set
    seen = []
    for batch in out:
        k = len(batch["input_ids"]) // 2
        assert batch["example_info"]["gate_label"].tolist() == [1.0] * k + [0.0] * k
        seen += batch["input_ids"][:k, 0].tolist()
    assert [len(x["input_ids"]) for x in out] == [2 * b] * (n_forget // b) + ([2 * (n_forget % b)] if n_forget % b else [])
    forget_ids = [i for i, e in enumerate(data) if e.info["gate_label"] == 1.0]
    assert sorted(seen) == forget_ids  # each forget example exactly once per epoch


def test_the_retain_draw_is_a_pure_function_of_seed_and_epoch():
    data = examples(6, 4)
    anchors, companions = split_roles(data, "gate_label", "x")
    assert (anchors, companions) == ([0, 1, 2, 3, 4, 5], [6, 7, 8, 9])
    a, b = PairedSampler(anchors, companions, seed=3), PairedSampler(anchors, companions, seed=3)
    a.set_epoch(2)
    b.set_epoch(0)
    list(b)  # another epoch consumed first: no state carries over
    b.set_epoch(2)
    assert list(a) == list(b) == a.pairs(2)
    # the values, pinned: a change of draw would silently change every unlearning run
    g = torch.Generator().manual_seed(3 * 100_003 + 2)
    order = torch.randperm(6, generator=g).tolist()
    draw = torch.randint(4, (6,), generator=g).tolist()
    assert a.pairs(2) == [(anchors[i], companions[j]) for i, j in zip(order, draw)]
    assert a.pairs(2) != a.pairs(1) and a.pairs(2) != PairedSampler(anchors, companions, seed=4).pairs(2)
    # companions are drawn with replacement from all of the retain set
    drawn = {c for e in range(20) for _, c in a.pairs(e)}
    assert drawn == set(companions)
    assert len(a) == 6


def test_pairs_and_unpair():
    data = examples(2, 2)
    assert Pairs(data)[(1, 3)] == (data[1], data[3])
    assert unpair([(data[0], data[2]), (data[1], data[3])]) == [data[0], data[1], data[2], data[3]]


def test_errors_name_the_objective_and_the_fix():
    with pytest.raises(DataError, match=r"^train\.objective 'gd' pairs every forget example \(gate_label 1\) with a "
                                        r"retain example \(gate_label 0\); the training data holds 3 forget and 0 "
                                        r"retain examples: give it both \(tofu_unlearn: task\.options\.n_retain"):
        paired_order(examples(3, 0), 0, "gate_label", "train.objective 'gd'")
    bad = examples(2, 2)
    bad[3] = Encoded([1, 2], [-100, 2], 1)
    with pytest.raises(DataError, match=r"pairs examples by example_info\['gate_label'\].*training example 3 has "
                                        r"no info: use a task that sets it"):
        paired_order(bad, 0, "gate_label", "train.objective 'npo'")
