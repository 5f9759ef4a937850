"""Prefix-truncated supervision (BREP, METHODS.md §3): most examples teach only how an answer starts.

Of the encoded training examples, ``round(fraction · n)`` (half rounded up) chosen by a seeded
draw keep labels only on their first ``k`` answer tokens (the label positions that are not -100,
counted from the left, the end-of-answer token included); every later label becomes -100. The
others keep their full answer. Input ids are unchanged, so the schedule sees the same positions;
with a causal model the unsupervised tail cannot change the loss of the tokens before it.
Padding, added later by ``collate_train``, is -100 anyway.
"""
from __future__ import annotations

import dataclasses
import math
import random

from reftx.data.encoding import Encoded
from reftx.engine.positions import IGNORE


def truncate_labels(labels: list[int], k: int) -> list[int]:
    """``labels`` with every supervised position after the first ``k`` set to -100."""
    out, seen = list(labels), 0
    for i, y in enumerate(out):
        if y != IGNORE:
            seen += 1
            if seen > k:
                out[i] = IGNORE
    return out


def prefix_truncate(encoded: list[Encoded], fraction: float, k: int, seed: int) -> list[Encoded]:
    """A new list: the seeded ``fraction`` of ``encoded`` supervised on their first ``k`` answer
    tokens, the rest unchanged. ``fraction`` 0 returns the examples as they are.

    Deterministic given (len(encoded), fraction, seed): the chosen indices are
    ``random.Random(seed).sample(range(n), round(fraction · n))``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(encoded)
    chosen = set(random.Random(seed).sample(range(n), math.floor(fraction * n + 0.5))) if fraction > 0 else set()
    return [dataclasses.replace(e, labels=truncate_labels(e.labels, k)) if i in chosen else e
            for i, e in enumerate(encoded)]


__all__ = ["prefix_truncate", "truncate_labels"]
