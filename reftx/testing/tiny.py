"""Tiny random models built from a config (no downloads) and random batches: what the contract
suite (reftx.testing.contract, ``reftx check``) and the project's own tests run on."""
from __future__ import annotations

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


def tiny_config(model_type: str, layers: int = 4, hidden: int = 32, intermediate: int | None = None):
    """A tiny random config; ``intermediate`` (default ``2 * hidden + 8``) is the MLP width."""
    inner = 2 * hidden + 8 if intermediate is None else intermediate
    common = dict(vocab_size=VOCAB, num_hidden_layers=layers, hidden_size=hidden, intermediate_size=inner,
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


__all__ = ["VOCAB", "batch", "perturb", "tiny_config", "tiny_model"]
