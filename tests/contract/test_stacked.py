"""Stacked interventions equal one at a time. The per-kind suite lives in
reftx/testing/contract/test_stacked.py (shipped, so ``reftx check KIND`` runs it on out-of-tree
variants) and is collected here for the project's own registry; the engine's own cases (which shipped
kinds stack, overlapping and unequal rows) are below, since they are not about a checked kind."""
import pytest
import torch

from reftx.testing.contract.test_stacked import *  # noqa: F401,F403
from reftx.testing.contract.test_stacked import _run, _spec


@pytest.mark.parametrize("kind", ["loreft", "direft", "consreft", "scale_bias"])
def test_these_kinds_stack(kind, monkeypatch):
    """The shipped subspace edits and scale-and-bias opt in (what the benchmarks rely on); a gate or
    dropout keeps them one at a time."""
    assert _run(_spec(kind, {}), True, monkeypatch)[2] == 4
    assert _run(_spec(kind, {"dropout": 0.1}), True, monkeypatch)[2] == 0


def test_overlapping_rows_run_one_at_a_time_in_order(monkeypatch):
    """Two entries on the same rows: the second edits the first's output, so nothing stacks and the
    result is exactly the sequential one."""
    spec = [{"kind": "loreft", "layers": [1], "positions": "last_prompt", "name": name} for name in ("a", "b")]
    logits, _, n, _ = _run(spec, True, monkeypatch)
    ref, _, _, _ = _run(spec, False, monkeypatch)
    assert n == 0 and torch.equal(logits, ref)


def test_unequal_row_counts_run_one_at_a_time(monkeypatch):
    """A prompt of 3 tokens gives first 2 / last 2 one and two rows (the sides never overlap)."""
    logits, _, n, _ = _run(_spec("loreft", {}), True, monkeypatch, prompt=3)
    ref, _, _, _ = _run(_spec("loreft", {}), False, monkeypatch, prompt=3)
    assert n == 0 and torch.equal(logits, ref)
