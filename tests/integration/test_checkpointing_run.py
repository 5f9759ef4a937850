"""``train.gradient_checkpointing: true`` in an experiment (issue 28 item 1): the quickstart on a tiny
model, edited inside the layers (mlp_output, whose hooks run again in each recomputation), trains
the same weights and logs the same losses with checkpointing on as off, and both runs carry the same
config hash (the key is not hashed: it cannot change a result)."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

import reftx.engine.checkpointing as checkpointing
import reftx.train.run as train_run
from reftx.config.schema import load_experiment
from reftx.engine.model import WEIGHTS_NAME
from reftx.recipes import train as runner
from tests.integration.test_faults import QUICKSTART, overrides


def test_yaml_gradient_checkpointing_trains_the_same_weights(tiny_dir, tmp_path, monkeypatch):
    bases, replays = [], []
    enable, replaying = train_run.enable_checkpointing, checkpointing.replaying
    monkeypatch.setattr(train_run, "enable_checkpointing", lambda m: bases.append(enable(m)) or bases[-1])
    monkeypatch.setattr(checkpointing, "replaying", lambda *a, **k: replays.append(1) or replaying(*a, **k))
    out = {}
    for on in (True, False):
        ov = overrides(tiny_dir, tmp_path / str(on), "interventions.0.component=mlp_output",
                       f"train.gradient_checkpointing={str(on).lower()}")
        runner.run(load_experiment(QUICKSTART, ov), show_progress=False)
        out[on] = tmp_path / str(on) / "runs" / "quickstart"
        if on:
            assert len(bases) == 1 and bases[0].is_activation_checkpointing
            assert len(replays) >= 4 * 2  # each of the 4 steps recomputed both edited layers
    assert len(bases) == 1  # off: never switched on
    w = {on: load_file(d / "intervention" / WEIGHTS_NAME) for on, d in out.items()}
    assert w[True].keys() == w[False].keys() and all(torch.equal(w[True][k], w[False][k]) for k in w[False])
    losses = {on: [json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()
                   if '"loss"' in line] for on, d in out.items()}
    assert len(losses[True]) == 4 and losses[True] == losses[False]
    hashes = {on: json.loads((d / "results.json").read_text())["config_hash"] for on, d in out.items()}
    assert hashes[True] == hashes[False]
