"""Stacked interventions (reftx.engine.stacked) compute what they compute one at a time.

Every registered primitive, with its default config and with each modifier its config accepts, at
two interventions a site (the first and the last prompt positions of every layer, ``tie: none``):
the logits and every intervention gradient equal, in fp32, those of running each intervention
alone (≤ 1e-6), and a primitive that opts in (``stack_key``) did run stacked. Rows that overlap or
differ in count fall back to one at a time, in order. Cases come from the registries, so a new
primitive or modifier is covered with no edit here.
"""
from __future__ import annotations

import pytest
import torch

from reftx.engine import stacked
from reftx.engine.model import attach
from reftx.testing import kinds
from reftx.testing.contract.test_compositions import MODIFIER_CASES, _ids
from reftx.testing.tiny import batch, tiny_model

CASES = [(k, {}) for k in kinds()] + MODIFIER_CASES


def _run(spec: list[dict], stack: bool, monkeypatch, prompt: int = 5, seed: int = 1):
    """Logits, gradients by name, and how many site edits ran stacked, for one training forward."""
    ran: list[bool] = []
    real = stacked._stacked
    with monkeypatch.context() as mp:
        if not stack:
            mp.setattr(stacked, "_key", lambda module: None)
        mp.setattr(stacked, "_stacked", lambda *a: ran.append(real(*a)) or ran[-1])
        model = attach(tiny_model("llama"), spec)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.interventions.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g).to(p.dtype))
        ids, mask = batch()
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :prompt] = -100
        model.train()
        torch.manual_seed(0)  # dropout draws the same masks in both runs
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
    grads = {n: p.grad for n, p in model.interventions.named_parameters()}
    return out.logits.detach(), grads, sum(ran), model


def _spec(kind: str, options: dict, **kw) -> list[dict]:
    return [{"kind": kind, "layers": "all", "positions": {"first": 2, "last": 2}, "tie": "none", **options, **kw}]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_stacked_equals_one_at_a_time(case, monkeypatch):
    kind, options = case
    logits, grads, n_stacked, model = _run(_spec(kind, options), True, monkeypatch)
    ref_logits, ref_grads, n_ref, _ = _run(_spec(kind, options), False, monkeypatch)
    assert n_ref == 0
    opted_in = next(iter(model.interventions.values())).stack_key() is not None
    assert n_stacked == (4 if opted_in else 0)  # 4 layers, one stack of 2 each
    _close(logits, ref_logits)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert (g is None) == (ref_grads[name] is None), name
        if g is not None:
            _close(g, ref_grads[name])
