"""Paired training batches: every anchor example (an unlearning forget example) with a companion
(a retain example) drawn at random, for objectives that contrast two sets in every step.

This is open-unlearning's ``ForgetRetainDataset`` (locuslab/open-unlearning d3d7cf9,
``src/data/unlearn.py:5-46``, ``anchor: forget``): one item per forget example, to which
``__getitem__`` attaches a retain example drawn uniformly with replacement (``torch.randint``,
line 39); its collator (``src/data/collators.py:37-45``) pads the ``forget`` and ``retain`` halves
apart, so a batch of B items holds B forget and B retain rows and an epoch is one pass over the
forget set. The same here, with one difference: the draw comes from a generator seeded by
(seed, epoch), not from the global RNG, so the data order is a pure function of (seed, epoch) and
a resumed run sees the same pairs as an uninterrupted one.

A batch is the B anchors followed by their B companions, in that order, padded together
(reftx.data.encoding.collate_train); the objectives tell the halves apart by the role key
(``example_info["gate_label"]``: 1 anchor/forget, 0 companion/retain).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from reftx.core.errors import DataError


def split_roles(data: Sequence[Any], key: str, who: str) -> tuple[list[int], list[int]]:
    """Indices of the anchors (``info[key] > 0.5``) and of the companions (the rest). ``who`` names
    what asks for the pairing in the error when an example lacks the key or a set is empty."""
    anchors, companions = [], []
    for i, ex in enumerate(data):
        if key not in ex.info:
            raise DataError(f"{who} pairs examples by example_info[{key!r}] (1 forget, 0 retain); training "
                            f"example {i} has {sorted(ex.info) or 'no info'}: use a task that sets it "
                            f"(e.g. tofu_unlearn)")
        (anchors if ex.info[key] > 0.5 else companions).append(i)
    if not anchors or not companions:
        raise DataError(f"{who} pairs every forget example ({key} 1) with a retain example ({key} 0); the "
                        f"training data holds {len(anchors)} forget and {len(companions)} retain examples: "
                        f"give it both (tofu_unlearn: task.options.n_retain; check task.n_train)")
    return anchors, companions


class PairedSampler(Sampler[tuple[int, int]]):
    """Yields (anchor index, companion index): the anchors in a permutation seeded by
    (seed, epoch), each with a companion drawn uniformly with replacement from the same generator.
    ``len`` is the number of anchors: an epoch is one pass over them."""

    def __init__(self, anchors: Sequence[int], companions: Sequence[int], seed: int):
        self.anchors, self.companions = list(anchors), list(companions)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def pairs(self, epoch: int) -> list[tuple[int, int]]:
        """The pairs of ``epoch``, in order (a pure function of (seed, epoch))."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)  # the run's EpochSampler formula
        order = torch.randperm(len(self.anchors), generator=g).tolist()
        draw = torch.randint(len(self.companions), (len(self.anchors),), generator=g).tolist()
        return [(self.anchors[a], self.companions[c]) for a, c in zip(order, draw)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.pairs(self.epoch))

    def __len__(self) -> int:
        return len(self.anchors)


class Pairs(Dataset):
    """``data`` indexed by (anchor, companion) pairs: item ``(i, j)`` is ``(data[i], data[j])``."""

    def __init__(self, data: Sequence[Any]):
        self.data = data

    def __getitem__(self, pair: tuple[int, int]) -> tuple[Any, Any]:
        i, j = pair
        return self.data[i], self.data[j]

    def __len__(self) -> int:
        return len(self.data)


def unpair(items: Sequence[tuple[Any, Any]]) -> list[Any]:
    """A batch of pairs as rows: the B anchors, then their B companions in the same order."""
    return [a for a, _ in items] + [c for _, c in items]


def paired_order(data: Sequence[Any], seed: int, key: str, who: str) -> tuple[Pairs, PairedSampler]:
    """The dataset and sampler of a paired run (``who`` names the objective in errors); collate a
    batch of its items with ``unpair`` first."""
    anchors, companions = split_roles(data, key, who)
    return Pairs(data), PairedSampler(anchors, companions, seed)


__all__ = ["PairedSampler", "Pairs", "paired_order", "split_roles", "unpair"]
