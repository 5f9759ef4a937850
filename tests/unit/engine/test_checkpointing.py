"""Gradient checkpointing, the mechanism (reftx.engine.checkpointing; the registry-derived cases are in
reftx/testing/contract/test_checkpointing.py): explicit positions, several forwards and a reference
forward before one backward, checkpointing switched on before attach, detach giving transformers'
functions back, and the one thing reentrant checkpointing cannot train (refused with the fix)."""
from __future__ import annotations

import pytest
import torch

from reftx.core.errors import ReftError
from reftx.engine.checkpointing import FUNC, enable
from reftx.engine.model import attach
from reftx.testing.contract.test_checkpointing import _labels, _specs, assert_same, run
from reftx.testing.tiny import batch, perturb, tiny_model


def test_explicit_positions_and_prompt_lengths():
    for kw in ({"intervention_positions": torch.tensor([[0, 3], [1, -1], [2, 5]])},
               {"prompt_lengths": torch.tensor([4, 6, 3])}):
        assert_same(run("llama", _specs("loreft"), True, **kw)[0], run("llama", _specs("loreft"), False, **kw)[0])


def test_several_forwards_and_a_reference_forward_before_one_backward():
    """Each recomputation replays its own forward (rows, rotations), and a forward run with the
    interventions switched off (a reference) recomputes with them off, whenever the backward runs:
    the gradients reaching the interventions and the reference's trainable input embeddings agree."""
    def grads(checkpointed: bool) -> dict:
        base = tiny_model("llama")
        model = perturb(attach(base, _specs("loreft")), 0.3)
        if checkpointed:
            enable(model)
        model.train()
        losses, embeds = [], []
        for seed in (0, 1):
            ids, mask = batch(seed, b=2 + seed, t=10 + 3 * seed)
            losses.append(model(input_ids=ids, attention_mask=mask, labels=_labels("llama", ids, mask)).loss)
            x = base.get_input_embeddings()(ids).detach().requires_grad_()
            with model.disabled():
                losses.append(base(inputs_embeds=x, attention_mask=mask).logits.pow(2).mean())
            embeds.append(x)
        torch.stack(losses).sum().backward()
        return {**{n: p.grad for n, p in model.interventions.named_parameters()},
                **{f"embeds{i}": x.grad for i, x in enumerate(embeds)}}

    assert_same(grads(True), grads(False))


def test_checkpointing_on_before_attach_and_detach_gives_the_functions_back():
    base = tiny_model("llama")
    base.activation_checkpointing_enable()
    layer = base.model.layers[1]
    original = layer.__dict__[FUNC]
    model = attach(base, _specs("loreft"))  # refused before checkpointing replayed the state
    model.train()
    ids, mask = batch()
    model(input_ids=ids, attention_mask=mask, labels=_labels("llama", ids, mask)).loss.backward()
    assert layer.__dict__[FUNC] is not original  # bound at the forward
    assert all(p.grad is not None for p in model.interventions.parameters())
    model.detach()
    assert layer.__dict__[FUNC] is original


def test_reentrant_refuses_an_aux_loss_inside_a_layer():
    specs = [{"kind": "grun", "component": "mlp_output", "layers": [1], "gate_loss_weight": 1.0}]
    with pytest.raises(ReftError, match=r"^the auxiliary loss 'gate_bce' is computed inside a layer that reentrant "
                                        r"gradient checkpointing runs without gradients, so it would not train; use "
                                        r"non-reentrant checkpointing \(gradient_checkpointing_kwargs=\{'use_reentrant': "
                                        r"False\}, transformers' default\) or put the intervention at block_output / "
                                        r"block_input$"):
        run("llama", specs, True, reentrant=True)
    on = run("llama", [{**specs[0], "component": "block_output"}], True, reentrant=True)  # outside: trains
    off = run("llama", [{**specs[0], "component": "block_output"}], False)
    assert on[1].keys() == {"gate_bce"} and torch.equal(on[1]["gate_bce"], off[1]["gate_bce"])


def test_enable_refuses_a_model_without_checkpointing_support():
    with pytest.raises(ReftError, match=r"^train\.gradient_checkpointing: Linear does not support gradient "
                                        r"checkpointing \(transformers' supports_gradient_checkpointing\); set "
                                        r"train\.gradient_checkpointing: false$"):
        enable(torch.nn.Linear(2, 2))


def test_enable_non_reentrant_leaves_the_embeddings_without_gradient():
    """transformers makes the embeddings' output require grad for reentrant checkpointing; non-reentrant
    needs no such thing, so the backward stops at the lowest edit (reentrant keeps it)."""
    for reentrant in (False, True):
        base = tiny_model("llama")
        model = attach(base, _specs("loreft"))
        assert enable(model, reentrant) is base and base.is_activation_checkpointing
        ids, _ = batch()
        assert base.get_input_embeddings()(ids).requires_grad is reentrant
