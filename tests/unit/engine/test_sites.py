"""Every component on every supported architecture: edits apply, gradients flow, the base is restored."""
from __future__ import annotations

import pytest
import torch

import reftx
from reftx.engine import sites
from tests.conftest import batch, tiny_model

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gpt2", "bert"]


def spec(component):
    s = {"kind": "lobireft", "rank": 2, "component": component, "positions": "last_prompt"}
    return s if component == "embeddings" else {**s, "layers": [1]}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("component", sites.COMPONENTS)
def test_component_edits_only_the_last_prompt_position(arch, component):
    base = tiny_model(arch)
    ids, mask = batch(t=10)
    ref = base(input_ids=ids, attention_mask=mask).logits
    model = reftx.attach(base, [spec(component)])
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.fill_(0.5)  # lobireft's bias starts at 0: make the edit non-zero
    model.train()
    labels = torch.zeros(ids.shape[0], dtype=torch.long) if arch == "bert" else ids.masked_fill(mask == 0, -100)
    if arch != "bert":
        labels[:, :6] = -100  # prompt = first 6 tokens -> the edit is at position 5
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.interventions.parameters())
    changed = (out.logits - ref).abs().amax(-1) > 1e-6
    if arch == "bert":
        assert not torch.equal(out.logits, ref)  # the CLS logits feel the edit through attention (weakly)
    else:
        # causal: positions before the edited one are untouched, the edited one changes
        assert not changed[:, :5].any() and changed[0, 5]
    model.detach()
    assert torch.equal(base(input_ids=ids, attention_mask=mask).logits, ref)


def test_roberta_maps_like_bert():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    cfg = RobertaConfig(vocab_size=97, num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                        num_attention_heads=4, max_position_embeddings=64, pad_token_id=1)
    base = RobertaForSequenceClassification(cfg).eval()
    model = reftx.attach(base, [{"kind": "loreft", "rank": 2, "component": c, "layers": [1],
                                 "positions": "all", "name": c} for c in ("mlp_up", "attention_output")])
    assert [g.dim for g in model.plan()] == [64, 32]
    ids = torch.randint(3, 97, (2, 8))
    assert model(input_ids=ids).logits.shape == (2, 2)


def test_unknown_raw_path_is_a_clear_error():
    with pytest.raises(reftx.ConfigError, match=r"raw module path 'model.layers.1.mlpp' does not exist"):
        reftx.attach(tiny_model("llama"), [{**spec("block_output"), "component": "model.layers.{layer}.mlpp"}])
