"""Shared fixtures: tiny random models built from configs (no downloads)."""
from __future__ import annotations

import pytest
import torch

from reftx.testing.tiny import VOCAB, batch, perturb, tiny_config, tiny_model  # noqa: F401  (shared with the contract suite)


@pytest.fixture
def tiny_llama():
    return tiny_model("llama")


def learnable_model(model_type: str = "llama"):
    """A random tiny model's lm_head (std 0.02) caps logits near 0.6: scale it so targets are learnable."""
    base = tiny_model(model_type)
    with torch.no_grad():
        base.lm_head.weight.mul_(25)
    return base


def torch_train(model, steps: int, lr: float = 2e-2, **inputs) -> list[float]:
    """A plain PyTorch loop (AdamW over ``model.param_groups``); returns the loss of every step."""
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def answer_data(n: int = 16, t: int = 10, seed: int = 0):
    """Random prompts that are always answered "7 7": (input_ids, attention_mask, labels), prompt masked."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.randint(3, VOCAB, (n, t - 2), generator=g), torch.full((n, 2), 7)], 1)
    labels = ids.clone()
    labels[:, : t - 2] = -100
    return ids, torch.ones_like(ids), labels


def save_tiny_llama(folder, hidden: int = 32, intermediate: int = 64):
    """A 4-layer random llama of these widths saved to ``folder`` with SmolLM2's tokenizer (so chat
    templates work), for end-to-end runs through the real tokenizer: pass the folder as model.name."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from reftx.models.loading import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """save_tiny_llama at hidden 32 (MLP 64)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny"))
