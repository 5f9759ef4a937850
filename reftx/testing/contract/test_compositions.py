"""The contract over the registries' products, not only defaults: every primitive × every modifier
its config accepts, and every primitive × component × architecture.

A modifier combination trains (gradients reach only intervention parameters, the modifiers'
terms are finite, ``after_step`` keeps the weights finite) and saves → loads to identical logits.
A (component, architecture) site keeps the output shape, edits only the scheduled positions of
that site's forward and reloads identically. Cases are built from the registries at import time,
so a newly registered primitive, modifier or architecture is covered with no edit here.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from reftx.core.errors import ConfigError
from reftx.engine.model import ReftModel, attach
from reftx.testing import kinds
from reftx.core.intervention import get_intervention
from reftx.core.intervention import after_step
from reftx.train.loss import parameter_terms
from reftx.parts.compose import BASIS_GATES, BOUNDS, INPUT_GATES
from reftx.testing.tiny import batch, tiny_model

KINDS = kinds()
ARCHITECTURES = ["llama", "qwen3", "gemma3_text", "gpt2"]
COMPONENTS = ["block_output", "block_input", "attention_output", "mlp_output"]


def _modifiers(kind: str) -> list[dict]:
    """Every single-modifier setting the kind's config accepts (each registered gate and bound)."""
    fields = {f.name for f in dataclasses.fields(get_intervention(kind).Config)}
    out = []
    if "input_gate" in fields:
        out += [{"input_gate": g} for g in INPUT_GATES.names()]
    if "dropout" in fields:
        out.append({"dropout": 0.25})
    if "bound" in fields:
        out += [{"bound": b, "bound_tau": 0.05} for b in BOUNDS.names()]
    if "basis_gate" in fields:
        out += [{"basis_gate": g} for g in BASIS_GATES.names()]
    return out


MODIFIER_CASES = [(k, m) for k in KINDS for m in _modifiers(k)]


def _ids(case) -> str:
    kind, mod = case
    return f"{kind}-" + "-".join(f"{k}={v}" for k, v in mod.items() if k != "bound_tau")


def _perturb(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g).to(p.dtype))


def _labels(ids, mask):
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :5] = -100
    return labels


@pytest.mark.parametrize("case", MODIFIER_CASES, ids=[_ids(c) for c in MODIFIER_CASES])
def test_every_modifier_trains_and_reloads(case, tmp_path):
    kind, options = case
    base = tiny_model("llama")
    model = attach(base, [{"kind": kind, "layers": [1, 2], "positions": {"first": 2, "last": 2},
                                 "tie": "positions", **options}])
    _perturb(model)
    ids, mask = batch()
    model.train()
    out = model(input_ids=ids, attention_mask=mask, labels=_labels(ids, mask),
                example_info={"gate_label": torch.tensor([1.0, 0.0, 1.0])})
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in base.parameters())
    grads = [p.grad for p in model.interventions.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    mods = [m for _, m in model.named_interventions()]
    terms, scale = parameter_terms(mods)
    assert all(torch.isfinite(v) for v in terms.values()) and (scale is None or torch.isfinite(scale))
    if options.get("bound") == "hinge":  # τ = 0.05 is far below the perturbed biases: the penalty is on
        assert terms["bound_hinge"] > 0
    after_step(mods)
    if options.get("bound") == "project":  # every bias is back inside the ball
        assert all(float(m.bias().detach().norm()) <= 0.05 + 1e-6 for m in mods)
    assert all(torch.isfinite(p).all() for p in model.interventions.parameters())
    model.eval()
    ref = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    model.detach()
    again = ReftModel.from_pretrained(base, tmp_path).eval()
    assert torch.equal(again(input_ids=ids, attention_mask=mask).logits, ref)


SITE_CASES = [(k, c, a) for k in KINDS for c in COMPONENTS for a in ARCHITECTURES]


@pytest.mark.parametrize("kind, component, arch", SITE_CASES)
def test_every_site_on_every_architecture(kind, component, arch, tmp_path):
    base = tiny_model(arch)
    ids, mask = batch()
    with torch.no_grad():
        plain = base(input_ids=ids, attention_mask=mask).logits
    model = attach(base, [{"kind": kind, "layers": [2], "component": component, "positions": {"last": 2}}])
    _perturb(model)
    with torch.no_grad():
        edited = model(input_ids=ids, attention_mask=mask).logits
    assert edited.shape == plain.shape
    # causal models: positions before the first edited one (the prompt is the whole row) are untouched
    first_edit = int(mask.sum(1).min()) - 2
    assert torch.equal(edited[:, : first_edit - 1][mask[:, : first_edit - 1] == 1],
                       plain[:, : first_edit - 1][mask[:, : first_edit - 1] == 1])
    assert not torch.allclose(edited, plain)
    model.save_pretrained(tmp_path)
    model.detach()
    again = ReftModel.from_pretrained(base, tmp_path)
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids, attention_mask=mask).logits, edited)
