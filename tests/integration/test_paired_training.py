"""A run of an unlearning objective pairs its batches (reftx.data.pairing): every step holds B forget
and B retain rows, an epoch is one pass over the forget set, and Ctrl-C then --resume ends with the
weights and log of an uninterrupted run (the pairs are a pure function of (seed, epoch))."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

import reftx.train.run as train_run
from reftx.config.schema import TrainConfig
from reftx.data.encoding import Encoded
from reftx.train.run import Interrupted, train
from tests.integration._train_script import make_model

N_FORGET, N_RETAIN, B, STEPS = 5, 3, 2, 6  # ceil(5 / 2) = 3 steps an epoch: 2 epochs


def data() -> list[Encoded]:
    """Random prompts of 6 tokens (first token = the example's index), answered "7 7" (forget) or "9" (retain)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(N_FORGET + N_RETAIN):
        forget = i < N_FORGET
        prompt = [i + 3] + torch.randint(3, 50, (5,), generator=g).tolist()
        answer = [7, 7] if forget else [9]
        out.append(Encoded(prompt + answer, [-100] * 6 + answer, 6, info={"gate_label": 1.0 if forget else 0.0}))
    return out


def fit(run_dir, monkeypatch, resume=False, interrupt_at=None):
    """Train with objective gd; returns the gate labels and first tokens of every collated batch."""
    seen = []
    collate = train_run.collate_train

    def spy(rows, pad):
        out = collate(rows, pad)
        seen.append((out["example_info"]["gate_label"].tolist(), out["input_ids"][:, 0].tolist()))
        return out

    monkeypatch.setattr(train_run, "collate_train", spy)
    log = train_run._Run.log

    def log_then_interrupt(self, rec):
        log(self, rec)
        if rec["step"] == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_run._Run, "log", log_then_interrupt)
    model = make_model(dropout=0.1)
    cfg = TrainConfig(epochs=2, batch_size=B, lr=1e-2, warmup=0.25, scheduler="linear", checkpoint_every=2,
                      keep_checkpoints=2, log_every=1, objective="gd")
    try:
        train(model, data(), cfg, run_dir, pad_id=0, seed=3, resume=resume, show_progress=False)
    finally:
        monkeypatch.undo()
    return model, seen


def test_each_step_pairs_b_forget_with_b_retain_rows(tmp_path, monkeypatch):
    model, seen = fit(tmp_path / "a", monkeypatch)
    assert len(seen) == STEPS  # one pass over the 5 forget examples an epoch, at 2 a batch
    for labels, first in seen:
        k = len(labels) // 2
        assert labels == [1.0] * k + [0.0] * k
    for epoch in (seen[:3], seen[3:]):
        forget = sorted(t - 3 for labels, first in epoch for t, g in zip(first, labels) if g == 1.0)
        assert forget == list(range(N_FORGET))
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all("obj/nll_forget" in r and "obj/nll_retain" in r for r in rows)  # no step without a retain row


def test_ctrl_c_then_resume_gives_the_uninterrupted_pairs_and_weights(tmp_path, monkeypatch):
    full, seen_full = fit(tmp_path / "a", monkeypatch)
    with pytest.raises(Interrupted):
        fit(tmp_path / "b", monkeypatch, interrupt_at=4)  # mid-epoch 2 (batch 1 of 3)
    resumed, seen_rest = fit(tmp_path / "b", monkeypatch, resume=True)
    assert seen_rest[-2:] == seen_full[-2:]  # the same pairs after the resume
    a, b = full.interventions.state_dict(), resumed.interventions.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    loss = lambda p: [json.loads(x)["loss"] for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert loss(tmp_path / "b") == loss(tmp_path / "a")
