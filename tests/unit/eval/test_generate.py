"""reftx.eval.generate in a multi-process run: the batches it deals out and gathers (the processes
simulated; real ones: tests/integration/test_processes.py)."""
from __future__ import annotations

import pytest
import torch

from reftx.config.schema import EvalConfig
from reftx.core import processes
from reftx.data.examples import Example
from reftx.eval import generate as gen_mod


class _Tok:
    """A tokenizer whose prompt i is i+1 tokens long and whose decoding names the batch it came in."""

    pad_token_id, eos_token_id, chat_template = 0, 1, None

    def __call__(self, text, **kw):
        return {"input_ids": [5] * (int(text) + 1)}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids.tolist()))


class _Model(torch.nn.Module):
    """Generates one token: the batch's size times 100 plus its width (so a batch is recognisable)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def generate(self, input_ids, attention_mask, **kw):
        self.calls += 1
        b, t = input_ids.shape
        return torch.cat([input_ids, torch.full((b, 1), 100 * b + t)], 1)


@pytest.mark.parametrize("world", [2, 3])
def test_each_process_generates_whole_batches_and_all_get_every_completion(monkeypatch, world):
    monkeypatch.setattr(gen_mod, "encode_prompt", lambda tok, prompt, chat: tok(prompt)["input_ids"])
    examples = [Example(str(i), "") for i in (4, 0, 6, 2, 1, 5, 3)]  # 7 prompts, batches of 2 by length
    cfg = EvalConfig(batch_size=2, max_new_tokens=1)
    alone = gen_mod.generate(_Model(), _Tok(), examples, cfg, False, show_progress=False)
    shares, calls = [], []
    for r in range(world):
        monkeypatch.setattr(processes, "world", lambda: world)
        monkeypatch.setattr(processes, "rank", lambda r=r: r)
        monkeypatch.setattr(processes, "gather", lambda items: (shares.append(list(items)), items)[1])
        model = _Model()
        gen_mod.generate(model, _Tok(), examples, cfg, False, show_progress=False)
        calls.append(model.calls)
    # 4 batches (lengths 1-2, 3-4, 5-6, 7) dealt round-robin: whole batches, as one process makes them
    assert calls == ([2, 2] if world == 2 else [2, 1, 1])
    gathered = {i: text for share in shares for i, text in share}
    assert sorted(gathered) == list(range(7)) and [gathered[i] for i in range(7)] == alone
    assert alone[1] == "202" and alone[2] == "107"  # prompt "0" in the 2 x 2 batch, "6" alone in 1 x 7
