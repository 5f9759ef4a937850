"""Gradient checkpointing: a checkpointed layer's recomputation edits exactly as its forward did.

transformers 5 checkpoints each layer's ``forward``: reftx's hooks on the layer (block_input,
block_output) run once, the hooks inside it (attention_output, mlp_output) run again in the
backward pass (reftx.engine.checkpointing replays the forward's state there). For every registered
primitive, on a tiny model of every architecture with a tiny config, and for every modifier, every
position schedule and both checkpoint modes, the gradient of every intervention parameter with
checkpointing on equals the gradient with it off: fp32, relative difference <= 1e-6 per tensor
(measured: exactly equal). What the primitives publish (auxiliary losses, records) is published once.
Cases are built from the registries at import time, so a new primitive is covered with no edit here.
"""
from __future__ import annotations

import pytest
import torch

from reftx.engine.checkpointing import enable
from reftx.engine.model import attach
from reftx.testing import kinds
from reftx.testing.contract.test_compositions import MODIFIER_CASES, _ids
from reftx.testing.contract.test_primitives import CONTRACT_OPTIONS
from reftx.testing.tiny import batch, perturb, tiny_model

KINDS = kinds()
ARCHITECTURES = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gpt2", "bert"]
# inside the checkpointed layer (replayed) and on it (run once), at different layers
SITES = [("mlp_output", [1]), ("attention_output", [2]), ("block_output", [2]), ("block_input", [3])]
SCHEDULES = [{"positions": "last_prompt"}, {"positions": "all"}, {"positions": "all_prompt"},
             {"positions": {"generated": 3}}, {"positions": {"generated": 2, "prompt": True}},
             {"positions": {"first": 2, "last": 2}, "tie": "all"}]
RTOL = 1e-6
GATE_LABEL = torch.tensor([1.0, 0.0, 1.0])


def _specs(kind: str, **options) -> list[dict]:
    base = {"kind": kind, "positions": {"first": 2, "last": 2}, **CONTRACT_OPTIONS.get(kind, {})}
    return [{**base, "component": c, "layers": layers, **options} for c, layers in SITES]


def _labels(arch: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if arch == "bert":  # sequence classification: one class per row
        return torch.arange(ids.shape[0]) % 2
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :5] = -100  # a 5-token prompt, the rest the response
    return labels


def run(arch: str, specs: list[dict], checkpointed: bool, reentrant: bool = False, gate_label: bool = True, **kw):
    """Intervention gradients of loss + aux losses, and the published aux losses and records."""
    base = tiny_model(arch)
    model = perturb(attach(base, specs), 0.3)
    if checkpointed:
        enable(model, reentrant)
    model.train()
    torch.manual_seed(0)  # dropout draws the same masks in both runs
    ids, mask = batch()
    out = model(input_ids=ids, attention_mask=mask, labels=_labels(arch, ids, mask),
                example_info={"gate_label": GATE_LABEL} if gate_label else {}, **kw)
    (out.loss + sum(out.get("aux_losses", {}).values())).backward()
    assert base.is_activation_checkpointing is checkpointed
    grads = {n: p.grad for n, p in model.interventions.named_parameters()}
    return grads, out.get("aux_losses", {}), out.get("records", {})


def assert_same(on: dict, off: dict) -> None:
    assert on.keys() == off.keys()
    for n, b in off.items():
        a = on[n]
        assert (a is None) == (b is None), n
        if b is not None:
            assert float((a - b).norm()) <= RTOL * float(b.norm()), n
    inner = [g for n, g in off.items() if "mlp_output" in n and g is not None]
    assert inner and any(float(g.abs().sum()) > 0 for g in inner), "no gradient inside the checkpointed layer"


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_primitive_on_every_architecture(kind, arch):
    on, aux_on, rec_on = run(arch, _specs(kind), True)
    off, aux_off, rec_off = run(arch, _specs(kind), False)
    assert_same(on, off)
    assert aux_on.keys() == aux_off.keys() and all(torch.equal(aux_on[k], aux_off[k]) for k in aux_off)
    assert {k: len(v) for k, v in rec_on.items()} == {k: len(v) for k, v in rec_off.items()}  # published once


@pytest.mark.parametrize("case", MODIFIER_CASES, ids=[_ids(c) for c in MODIFIER_CASES])
def test_every_modifier(case):
    kind, options = case
    if "input_gate" in options:
        options = {**options, "gate_loss_weight": 1.0}  # its auxiliary loss, computed inside the layer
    on, aux_on, _ = run("llama", _specs(kind, **options), True)
    off, aux_off, _ = run("llama", _specs(kind, **options), False)
    assert_same(on, off)
    assert aux_on.keys() == aux_off.keys() and all(torch.equal(aux_on[k], aux_off[k]) for k in aux_off)


@pytest.mark.parametrize("kind", KINDS)
def test_every_schedule(kind):
    """Every position schedule at once, each a named entry at mlp_output of layers 1 and 2 (replayed)."""
    specs = [{"kind": kind, "component": "mlp_output", "layers": [1, 2], "name": f"s{i}",
              **CONTRACT_OPTIONS.get(kind, {}), **schedule} for i, schedule in enumerate(SCHEDULES)]
    assert_same(run("llama", specs, True)[0], run("llama", specs, False)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_reentrant_checkpointing(kind):
    """use_reentrant=True: the layer's first run has no gradients, the replay builds the graph."""
    on = run("llama", _specs(kind), True, reentrant=True, gate_label=False)[0]
    assert_same(on, run("llama", _specs(kind), False, gate_label=False)[0])
