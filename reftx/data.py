"""Tokenisation and batching, the same for every task.

``encode`` turns an ``Example`` into token ids and labels with the prompt
masked to -100 (so the engine reads the prompt span off the labels), applying
the tokenizer's chat template when asked. ``collate_train`` pads on the right;
``collate_prompts`` pads prompts on the left, for batched generation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .positions import IGNORE

if TYPE_CHECKING:  # annotations only: task.py -> evaluate.py -> data.py
    from .task import Example


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    truncated: bool = False
    info: dict[str, float] = field(default_factory=dict)


def format_prompt(tokenizer: Any, prompt: str, chat: bool) -> str:
    """The prompt text as the model sees it (chat template with a generation prompt, or as is)."""
    if chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def use_chat(tokenizer: Any, setting: bool | None) -> bool:
    """``setting`` None: use the chat template when the tokenizer has one."""
    has = getattr(tokenizer, "chat_template", None) is not None
    if setting and not has:
        raise ValueError("model.chat_template is true but the tokenizer has no chat template")
    return has if setting is None else setting


def encode_prompt(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    text = format_prompt(tokenizer, prompt, chat)
    # a chat template already carries its special tokens; a plain prompt gets the tokenizer's (e.g. BOS)
    return tokenizer(text, add_special_tokens=not chat)["input_ids"]


def encode(tokenizer: Any, ex: Example, max_length: int, chat: bool, end_token: bool = True) -> Encoded:
    """Prompt + target ids; labels are -100 on the prompt. The target ends with EOS (or the chat
    template's end-of-turn token, which is the EOS of chat tokenizers). Too long: the target is
    cut first, then the prompt from the left (keeping at least one target token)."""
    prompt = encode_prompt(tokenizer, ex.prompt, chat)
    target = tokenizer(ex.target, add_special_tokens=False)["input_ids"]
    if end_token and tokenizer.eos_token_id is not None:
        target = target + [tokenizer.eos_token_id]
    truncated = len(prompt) + len(target) > max_length
    if truncated:
        keep_target = max(1, max_length - len(prompt)) if target else 0
        target = target[:keep_target]
        prompt = prompt[len(prompt) - (max_length - len(target)):]
    return Encoded(prompt + target, [IGNORE] * len(prompt) + target, len(prompt), truncated, dict(ex.info))


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, falling back to EOS."""
    pid = tokenizer.pad_token_id
    return pid if pid is not None else tokenizer.eos_token_id


def collate_train(batch: list[Encoded], pad_id: int) -> dict[str, Tensor]:
    """Right-padded input_ids, attention_mask and labels (-100 on prompt and padding), plus
    ``example_info`` (one tensor per info key) when the examples carry any."""
    t = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), t), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), t), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), t), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    out: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    keys = sorted(batch[0].info)
    if keys:
        if any(sorted(e.info) != keys for e in batch):
            raise ValueError(f"examples in one batch carry different info keys (expected {keys})")
        out["example_info"] = {k: torch.tensor([e.info[k] for e in batch]) for k in keys}
    return out


def collate_prompts(prompts: list[list[int]], pad_id: int) -> dict[str, Tensor]:
    """Left-padded prompts for batched generation."""
    t = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), t), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, t - len(p):] = torch.tensor(p)
        mask[i, t - len(p):] = 1
    return {"input_ids": ids, "attention_mask": mask}


__all__ = ["Encoded", "collate_prompts", "collate_train", "encode", "encode_prompt", "format_prompt", "use_chat", "pad_id"]
