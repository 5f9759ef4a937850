"""CARFT and NLFT through the one training loop (reftx.train.run.train): CARFT's learned projection is
built before the optimizer (the objective's prepare), trained, saved in every checkpoint and the
run's intervention/ folder, and restored by --resume, which ends byte-identical to an uninterrupted
run; NLFT samples and judges its answers inside the loop and resumes exactly too."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

import reftx
from reftx.config.schema import TrainConfig
from reftx.data.encoding import Encoded
from reftx.engine.serialization import EXTRAS_NAME
from reftx.train.objectives.carft import PROJECTION
from reftx.train.objectives.grpo import EXAMPLE_INDEX
from reftx.train.run import train
from tests.conftest import tiny_model
from tests.integration.rl_loop import SPEC, env, resumes_exactly

# (prompt, annotated response, guidance): the guided copy is guidance + prompt + response, the judged
# copy [70, 71] + prompt + response
ROWS = [([5, 6, 7, 8], [20, 24, 2], [40]), ([10, 11, 12], [21, 26, 2], [41, 42]),
        ([13, 14, 15, 16, 17], [22, 28, 2], [43]), ([30, 31], [23, 30, 2], [44, 45])]


def _data() -> list[Encoded]:
    return [Encoded(p + r, [-100] * len(p) + r, len(p), info={EXAMPLE_INDEX: float(i)}, guided_ids=g + p + r,
                    guided_prompt_len=len(g) + len(p), judged_ids=[70, 71] + p + r, judged_prompt_len=2 + len(p))
            for i, (p, r, g) in enumerate(ROWS)]


def _train(run_dir, objective, options, resume=False) -> reftx.ReftModel:
    cfg = TrainConfig(objective=objective, objective_options=options, max_steps=3, batch_size=2, checkpoint_every=1,
                      keep_checkpoints=5, log_every=1, lr=1e-2)
    model = reftx.attach(tiny_model("llama"), SPEC)
    train(model, _data(), cfg, run_dir, pad_id=0, seed=0, resume=resume, show_progress=False, env=env())
    return model


def _resumes_exactly(tmp_path, objective, options) -> reftx.ReftModel:
    return resumes_exactly(lambda run_dir, resume=False: _train(run_dir, objective, options, resume), tmp_path)


def test_carft_trains_checkpoints_and_resumes_its_projection_exactly(tmp_path):
    options = {"group_size": 2, "max_new_tokens": 3, "beta": 0.0}
    full = _resumes_exactly(tmp_path, "carft", options)
    assert PROJECTION in full.extras and float(full.extras[PROJECTION].ready) == 1.0
    weights = []
    for step in (1, 2, 3):  # every checkpoint carries the projection beside the interventions
        saved = load_file(tmp_path / "full" / "checkpoints" / f"step-{step}" / "intervention" / EXTRAS_NAME)
        assert {f"{PROJECTION}.linear.weight", f"{PROJECTION}.linear.bias", f"{PROJECTION}.ready"} <= set(saved)
        weights.append(saved[f"{PROJECTION}.linear.weight"])
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["obj/carft_positives"] > 0 for r in rows)  # every step (seed 0) has correct samples ...
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])  # ... and trains it


def test_nlft_samples_judges_and_resumes_exactly(tmp_path):
    _resumes_exactly(tmp_path, "nlft", {"max_new_tokens": 3})
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(0.0 <= r["obj/correct_share"] <= 1.0 and "obj/reward" in r and "obj/unlike_share" in r for r in rows)
    assert not (tmp_path / "full" / "checkpoints" / "step-1" / "intervention" / EXTRAS_NAME).exists()  # NLFT keeps nothing extra
