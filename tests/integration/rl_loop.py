"""What the sampling objectives' loop tests share (test_ppo_run, test_carft_nlft_run): a tiny
LoReFT spec, a tokenizer that decodes ids as numbers, a reward on the first sampled token, the
trained state of a model, and the kill-after-step-1-then-resume check."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

import reftx
from reftx.train.objectives.grpo import Env

SPEC = [{"kind": "loreft", "rank": 2, "layers": [1, 2], "positions": {"first": 2, "last": 2}}]


class Tok:
    pad_token_id, eos_token_id = 0, 2

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in row) for row in ids]


def env() -> Env:
    """Reward 1 for a completion whose first token is even, the partial reward otherwise."""
    return Env(Tok(), lambda texts, index, partial: [1.0 if int(t.split()[0]) % 2 == 0 else partial for t in texts])


def trained_state(model: reftx.ReftModel) -> dict[str, torch.Tensor]:
    """The interventions' and extras' tensors (what a checkpoint must restore), cloned."""
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("interventions.", "extras."))}


def resumes_exactly(run: Callable[..., reftx.ReftModel], tmp_path: Path) -> reftx.ReftModel:
    """Train 3 steps in ``tmp_path/full``; copy it as killed after step 1, resume it; the resumed
    state must equal the uninterrupted one tensor for tensor. ``run(run_dir, resume=False)``."""
    full = run(tmp_path / "full")
    state = trained_state(full)
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    for step in (2, 3):
        shutil.rmtree(tmp_path / "cut" / "checkpoints" / f"step-{step}")
    again = trained_state(run(tmp_path / "cut", resume=True))
    assert set(again) == set(state) and all(torch.equal(again[k], state[k]) for k in state)
    return full
