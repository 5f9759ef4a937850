"""reftx.engine.rotations: one batched QR per forward, and the stacked R a LoReFT family reads from it."""
from __future__ import annotations

import torch

from reftx.engine.rotations import OrthoBasis, orthonormalize, reuse_rotations, shared_rotations, stacked_matrices


def _bases(n: int, d: int = 8, r: int = 2) -> list[OrthoBasis]:
    torch.manual_seed(0)
    return [OrthoBasis(d, r) for _ in range(n)]


def test_a_family_in_the_forwards_order_reads_a_slice_of_the_batched_qr():
    bases = _bases(5)
    with shared_rotations(bases) as pairs:
        rs = pairs[0][1]._base  # the (5, r, d) output every R is a row of
        whole, middle = stacked_matrices(bases), stacked_matrices(bases[1:4])
        assert whole._base is rs and middle._base is rs  # views: no copy, no stack node
        assert torch.equal(whole, torch.stack([b.matrix() for b in bases]))
        assert torch.equal(middle, torch.stack([orthonormalize(b.weight) for b in bases[1:4]]))
        swapped = stacked_matrices([bases[1], bases[0]])  # not the forward's order: stacked anew
        assert swapped._base is None and torch.equal(swapped, torch.stack([bases[1].matrix(), bases[0].matrix()]))
    assert all(b._cached is None and b.__dict__["_slot"] is None for b in bases)  # put back on exit
    assert stacked_matrices(bases)._base is None  # outside a forward: QR of each


def test_gradients_through_the_slice_equal_those_through_the_rows_restacked():
    bases = _bases(4)
    coef = torch.randn(4, 2, 8, generator=torch.Generator().manual_seed(1))  # a loss linear in every R
    with shared_rotations(bases):
        stacked_matrices(bases).mul(coef).sum().backward()
    sliced = [b.weight.grad.clone() for b in bases]
    for b in bases:
        b.weight.grad = None
    with shared_rotations(bases) as pairs:  # what a family read before: the rows re-stacked
        torch.stack([r for _, r in pairs]).mul(coef).sum().backward()
    assert all(g.abs().max() > 0.1 and torch.equal(g, b.weight.grad) for g, b in zip(sliced, bases))


def test_a_recomputation_reuses_rotations_without_their_slots():
    bases = _bases(3)
    with shared_rotations(bases) as pairs, reuse_rotations(pairs):  # as a checkpointed layer replays them
        assert all(b.__dict__["_slot"] is None for b in bases)
        assert torch.equal(stacked_matrices(bases), torch.stack([r for _, r in pairs]))
        assert stacked_matrices(bases)._base is None
    assert all(b.__dict__["_slot"] is None for b in bases)
