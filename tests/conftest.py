"""Shared fixtures: tiny random models built from configs (no downloads)."""
from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForSequenceClassification,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 97


def tiny_config(model_type: str, layers: int = 4, hidden: int = 32):
    common = dict(vocab_size=VOCAB, num_hidden_layers=layers, hidden_size=hidden, intermediate_size=2 * hidden + 8,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    if model_type == "llama":
        return LlamaConfig(**common)
    if model_type == "mistral":
        return MistralConfig(**common)
    if model_type == "qwen2":
        return Qwen2Config(**common)
    if model_type == "qwen3":
        return Qwen3Config(**common, head_dim=hidden // 4)
    if model_type == "gemma3_text":
        return Gemma3TextConfig(**common, head_dim=hidden // 4, sliding_window=16)
    if model_type == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_layer=layers, n_embd=hidden, n_head=4, n_positions=256,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0)
    if model_type == "bert":
        return BertConfig(vocab_size=VOCAB, num_hidden_layers=layers, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_attention_heads=4, max_position_embeddings=256, pad_token_id=0, num_labels=2,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    raise ValueError(model_type)


def tiny_model(model_type: str = "llama", seed: int = 0, **kw):
    torch.manual_seed(seed)
    cfg = tiny_config(model_type, **kw)
    if model_type == "bert":
        model = BertForSequenceClassification(cfg)
    else:
        model = AutoModelForCausalLM.from_config(cfg)
    return model.eval()


@pytest.fixture
def tiny_llama():
    return tiny_model("llama")


def batch(seed: int = 0, b: int = 3, t: int = 12, left_pad: bool = False):
    """Random ids with per-row padding (row i padded by 2*i tokens)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    for i in range(b):
        n = 2 * i
        if n:
            if left_pad:
                mask[i, :n] = 0
            else:
                mask[i, t - n:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def perturb(model, scale=0.5, seed=1):
    """Add scale * N(0, 1) noise (fixed seed) to every intervention parameter, so edits are visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))
    return model


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


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A 4-layer random llama (hidden 32) saved with SmolLM2's tokenizer (so chat templates work),
    for end-to-end runs through the real tokenizer: pass it as model.name."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from reftx.models.loading import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    d = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d
