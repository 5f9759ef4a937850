"""Tokenisation and batching, the same for every task.

``encode`` turns an ``Example`` into token ids and labels with the prompt
masked to -100 (so the engine reads the prompt span off the labels), applying
the tokenizer's chat template when asked. ``collate_train`` pads on the right;
``collate_prompts`` pads prompts on the left, for batched generation.

An objective that scores the response with and without natural-language guidance (reftx.train.objectives.nlft)
asks ``encode`` for a guided copy of each example (``guided=True``): the same response token ids
after a prompt that starts with ``Example.guidance``, and a judged copy: the same response after
a prompt that starts with ``JUDGMENT`` (a negative verdict, what NLFT's unlikelihood branch compares
a wrong response against); ``collate_train`` then adds ``guided_input_ids``,
``guided_attention_mask``, ``guided_labels`` (-100 on the guided prompt) and the same three
``judged_*`` keys to the batch. Without it the batch is exactly as before.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from reftx.core.errors import DataError
from reftx.engine.positions import IGNORE, spans



@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    truncated: bool = False
    info: dict[str, float] = field(default_factory=dict)
    guided_ids: list[int] | None = None  # guidance + prompt, then the same response ids (encode(guided=True))
    guided_prompt_len: int = 0  # length of the guided prompt in guided_ids
    judged_ids: list[int] | None = None  # JUDGMENT + prompt, then the same response ids (encode(guided=True))
    judged_prompt_len: int = 0  # length of the judged prompt in judged_ids
    untruncated: tuple[int, int] = (0, 0)  # (prompt, response) tokens before truncation (reftx.data.checks reads them)


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


GUIDANCE_SEPARATOR = "\n\n"  # between the guidance and the prompt in the guided copy


def guided_prompt(ex: Example) -> str:
    """The prompt text of the guided copy: the guidance in front of the prompt (so it suits any
    prompt template, which ends where the response starts)."""
    return f"{ex.guidance}{GUIDANCE_SEPARATOR}{ex.prompt}"


# The judged copy's verdict: NLFT's released prompt for a response judged wrong (Julia-LiuJ/NLFT
# finetune_unlikelihood_dynamic_correct.py:464-467, "Write a bad response ... weaknesses mentioned in
# the below judgment"), with the task's verdict (wrong) as the judgment: no judge model writes one here.
JUDGMENT = ("Write a bad response to the question below. Your response should contain the weaknesses "
            "mentioned in this judgment.\nJudgment: the response is wrong.")


def judged_prompt(ex: Example) -> str:
    """The prompt text of the judged copy: ``JUDGMENT`` in front of the prompt."""
    return f"{JUDGMENT}{GUIDANCE_SEPARATOR}{ex.prompt}"


def encode(tokenizer: Any, ex: Example, max_length: int, chat: bool, end_token: bool = True,
           guided: bool = False) -> Encoded:
    """Prompt + target ids; labels are -100 on the prompt. The target ends with EOS (or the chat
    template's end-of-turn token, which is the EOS of chat tokenizers). Too long: the target is
    cut first, then the prompt from the left (keeping at least one target token); ``untruncated``
    keeps the lengths before, so a run refuses such examples unless ``task.overlong`` says
    otherwise (reftx.data.checks).

    guided: also encode the guided copy (``guided_prompt(ex)`` + the same response ids, kept whole:
    it may exceed ``max_length`` by the guidance) and the judged copy (``judged_prompt(ex)`` + the
    same response ids); an example without guidance is a DataError."""
    prompt = encode_prompt(tokenizer, ex.prompt, chat)
    target = tokenizer(ex.target, add_special_tokens=False)["input_ids"]
    if end_token and tokenizer.eos_token_id is not None:
        target = target + [tokenizer.eos_token_id]
    full = (len(prompt), len(target))
    truncated = sum(full) > max_length
    if truncated:
        keep_target = max(1, max_length - len(prompt)) if target else 0
        target = target[:keep_target]
        prompt = prompt[len(prompt) - (max_length - len(target)):]
    enc = Encoded(prompt + target, [IGNORE] * len(prompt) + target, len(prompt), truncated, dict(ex.info),
                  untruncated=full)
    if not guided:
        return enc
    if not ex.guidance.strip():
        raise DataError(f"this objective needs Example.guidance (natural-language guidance such as a reference "
                        f"answer) on every training example; none on the example with prompt {ex.prompt[:60]!r}")
    g_prompt = encode_prompt(tokenizer, guided_prompt(ex), chat)
    j_prompt = encode_prompt(tokenizer, judged_prompt(ex), chat)
    return dataclasses.replace(enc, guided_ids=g_prompt + target, guided_prompt_len=len(g_prompt),
                               judged_ids=j_prompt + target, judged_prompt_len=len(j_prompt))


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, falling back to EOS."""
    pid = tokenizer.pad_token_id
    return pid if pid is not None else tokenizer.eos_token_id


def collate_train(batch: list[Encoded], pad_id: int) -> dict[str, Tensor]:
    """Right-padded input_ids, attention_mask and labels (-100 on prompt and padding), the prompt
    boundary as encoding found it (``prompt_lengths``: each row's prompt tokens, where the
    interventions' prompt positions are counted), plus ``example_info`` (one tensor per info key) when the examples carry any, and the guided copy
    (``guided_input_ids``, ``guided_attention_mask``, ``guided_labels``) when they carry one."""
    t = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), t), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), t), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), t), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    out: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels,
                           "prompt_lengths": torch.tensor([e.prompt_len for e in batch])}
    for copy in ("guided", "judged"):
        if any(getattr(e, f"{copy}_ids") is not None for e in batch):
            out.update(_collate_copy(batch, pad_id, copy))
    keys = sorted(batch[0].info)
    if keys:
        if any(sorted(e.info) != keys for e in batch):
            raise ValueError(f"examples in one batch carry different info keys (expected {keys})")
        out["example_info"] = {k: torch.tensor([e.info[k] for e in batch]) for k in keys}
    return out


def _collate_copy(batch: list[Encoded], pad_id: int, copy: str) -> dict[str, Tensor]:
    """{copy}_input_ids, {copy}_attention_mask, {copy}_labels (-100 on the copy's prompt and the
    padding), right-padded like the plain batch, and {copy}_prompt_lengths; copy: guided or judged."""
    seqs = [getattr(e, f"{copy}_ids") for e in batch]
    if any(s is None for s in seqs):
        raise ValueError(f"some examples of the batch carry a {copy} copy and some do not")
    t = max(len(s) for s in seqs)
    ids = torch.full((len(batch), t), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), t), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), t), dtype=torch.long)
    lengths = [getattr(e, f"{copy}_prompt_len") for e in batch]
    for i, (s, p) in enumerate(zip(seqs, lengths)):
        n = len(s)
        ids[i, :n] = torch.tensor(s)
        labels[i, p:n] = ids[i, p:n]
        mask[i, :n] = 1
    return {f"{copy}_input_ids": ids, f"{copy}_attention_mask": mask, f"{copy}_labels": labels,
            f"{copy}_prompt_lengths": torch.tensor(lengths)}


def prompt_lengths(batch: dict[str, Tensor], prefix: str = "") -> Tensor:
    """(B,) prompt length of every row of a training batch: the boundary ``collate_train`` carries
    from encoding (``{prefix}prompt_lengths``). A batch built outside reftx's encoding (TRL's, a
    hand-made dict) that lacks it gets the tokens before each row's first label, the rule the hooks
    apply to such batches (reftx.engine.positions.spans). prefix: ``"guided_"`` or ``"judged_"`` for a copy."""
    if f"{prefix}prompt_lengths" in batch:
        return batch[f"{prefix}prompt_lengths"]
    labels, mask = batch[f"{prefix}labels"], batch[f"{prefix}attention_mask"]
    bd = spans(mask, labels.shape[0], labels.shape[1], labels.device, labels)
    return bd.prompt_end - bd.start


def collate_prompts(prompts: list[list[int]], pad_id: int) -> dict[str, Tensor]:
    """Left-padded prompts for batched generation."""
    t = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), t), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, t - len(p):] = torch.tensor(p)
        mask[i, t - len(p):] = 1
    return {"input_ids": ids, "attention_mask": mask}


__all__ = ["JUDGMENT", "Encoded", "collate_prompts", "collate_train", "encode", "encode_prompt", "format_prompt",
           "guided_prompt", "judged_prompt", "use_chat", "pad_id"]
