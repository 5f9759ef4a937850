"""The editing recipe's locality term for any primitive (``recipe.locality_kl_weight``; reftx.recipes.edit.engine).

λ · KL(unedited ‖ edited) of the next-token distribution after a locality prompt, the fair counterpart
of BaFT's gate-toward-0 loss for a primitive without gates, on the same prompts (ROME's known_1000).
ROME keeps its essence prompts' distributions with the same divergence while it optimises v*
(kellino/rome ``rome/compute_v.py``, ``kl_factor``: at the subject's last token); here it is read
after the whole prompt, where the editing metrics read locality.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from reftx.data.encoding import Encoded, collate_train, encode
from reftx.data.examples import Example
from reftx.engine.positions import IGNORE


@torch.no_grad()
def kl_rows(editor: Any, prompts: list[str], batch_size: int = 16) -> tuple[list[tuple[Encoded, Any]], Tensor]:
    """Each locality prompt with the unedited model's greedy next token after it, labelled on that
    token only (so the loss reads the logits right after the prompt), with its site states when the
    editor replays them (else None); and the unedited log-probabilities there, (n, V) on the CPU."""
    ed = editor
    ids = [encode(ed.tok, Example(p, ""), ed.max_length, ed.chat, end_token=False).input_ids for p in prompts]
    ref = []
    for s in range(0, len(ids), batch_size):
        chunk = [Encoded(x, x, len(x)) for x in ids[s:s + batch_size]]
        batch = collate_train(chunk, ed.pad)
        with ed.model.disabled():
            logits = ed.model.base(input_ids=batch["input_ids"].to(ed.model.device),
                                   attention_mask=batch["attention_mask"].to(ed.model.device)).logits
        last = torch.tensor([len(e.input_ids) - 1 for e in chunk], device=logits.device)
        ref.append(logits[torch.arange(len(chunk), device=logits.device), last].float().cpu())
    logp = F.log_softmax(torch.cat(ref), -1)
    full = [x + [int(t)] for x, t in zip(ids, logp.argmax(-1))]
    states = ed.layer_states(full) if ed.fast else [None] * len(full)
    return [(Encoded(x, [IGNORE] * (len(x) - 1) + [x[-1]], len(x) - 1), st) for x, st in zip(full, states)], logp


def locality_kl(ref: Tensor, logits: Tensor, which: Tensor, slot_of: Tensor, weight: float) -> dict[int, Tensor]:
    """weight · the mean over each slot's locality rows of KL(unedited ‖ edited): ``logits`` (n, V)
    after the prompt of row ``which`` (an index into ``ref``) in slot ``slot_of``."""
    ref = ref[which.cpu()].to(logits.device)
    kl = (ref.exp() * (ref - F.log_softmax(logits.float(), -1))).sum(-1)
    return {int(k): weight * kl[slot_of == k].mean() for k in slot_of.unique()}


__all__ = ["kl_rows", "locality_kl"]
