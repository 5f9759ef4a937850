"""PPO through the one training loop: the value head and the KL anchor are trained / kept, saved
in every checkpoint and the run's intervention/ folder, and restored by --resume (byte-identical to
an uninterrupted run); the shipped SFT-then-PPO experiment runs end to end on a tiny model."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

import reftx
from reftx.config.schema import TrainConfig, load_experiment
from reftx.data.encoding import Encoded
from reftx.engine.serialization import EXTRAS_NAME
from reftx.recipes.registry import run_experiment
from reftx.train.objectives.anchor import ANCHOR, policy_parameters
from reftx.train.objectives.grpo import EXAMPLE_INDEX
from reftx.train.objectives.ppo import VALUE_HEAD
from reftx.train.run import train
from tests.conftest import tiny_model
from tests.integration.rl_loop import SPEC, env, resumes_exactly
from tests.integration.test_runner import REPO

ROWS = [([5, 6, 7, 8], [20, 2]), ([10, 11, 12], [21, 2]), ([13, 14, 15, 16, 17], [22, 2]), ([30, 31], [23, 2])]


def _data() -> list[Encoded]:
    return [Encoded(p + r, [-100] * len(p) + r, len(p), info={EXAMPLE_INDEX: float(i)}) for i, (p, r) in enumerate(ROWS)]


def _warm_model() -> reftx.ReftModel:
    reft = reftx.attach(tiny_model("llama"), SPEC)
    torch.manual_seed(3)
    with torch.no_grad():  # the warm-up's interventions (train.init_from)
        for p in reft.interventions.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return reft


def _train(run_dir, resume=False) -> reftx.ReftModel:
    cfg = TrainConfig(objective="ppo", objective_options={"group_size": 2, "max_new_tokens": 3}, max_steps=3,
                      batch_size=2, checkpoint_every=1, keep_checkpoints=5, log_every=1, lr=1e-2)
    model = _warm_model()
    train(model, _data(), cfg, run_dir, pad_id=0, seed=0, resume=resume, show_progress=False, env=env())
    return model


def test_ppo_trains_checkpoints_and_resumes_its_value_head_and_anchor_exactly(tmp_path):
    warm = {f"{k}": v.clone() for k, v in _warm_model().named_parameters() if v.requires_grad}
    full = resumes_exactly(_train, tmp_path)  # killed after step 1 and resumed: ends where it did
    assert sorted(full.extras) == [ANCHOR, VALUE_HEAD]
    # the anchor is the warm-up policy, the value head trained (moved from its seeded init)
    anchor = full.extras[ANCHOR].tensors()
    assert set(anchor) == set(warm) and all(torch.equal(anchor[k], warm[k]) for k in warm)
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and abs(rows[0]["obj/kl"]) < 1e-5
    assert all(r["obj/vf_loss"] >= 0 and "obj/pg_loss" in r for r in rows)
    heads = []
    for step in (1, 2, 3):  # every checkpoint carries both extras beside the interventions
        saved = load_file(tmp_path / "full" / "checkpoints" / f"step-{step}" / "intervention" / EXTRAS_NAME)
        assert {k.split(".")[0] for k in saved} == {ANCHOR, VALUE_HEAD}
        assert all(torch.equal(saved[f"{ANCHOR}.{k.replace('.', ':')}"], warm[k]) for k in warm)
        heads.append(saved[f"{VALUE_HEAD}.summary.weight"])
    assert not torch.equal(heads[0], heads[2])  # the optimizer trains the value head


def test_the_sft_then_ppo_experiment_runs_end_to_end(tiny_dir, tmp_path):
    """experiments/math/ppo_synthetic_loreft.yaml on a tiny model, 2 steps a stage: stage 2 starts
    from stage 1's interventions, anchors its KL to them, and its intervention/ folder holds the
    value head and the anchor beside the interventions that evaluation loads."""
    exp = load_experiment(REPO / "experiments" / "math" / "ppo_synthetic_loreft.yaml", [
        f"model.name={tiny_dir}", f"output_dir={tmp_path}", "task.n_train=4", "task.options.n_per_dataset=2",
        "train.max_steps=2", "train.batch_size=2", "eval.max_new_tokens=4", "eval.show_examples=0",
        "interventions.0.layers=[1, 2]",
        "recipe.stages=[[], [train.objective=ppo, train.batch_size=2, train.max_steps=2, "
        "train.objective_options.max_new_tokens=4]]"])
    out = run_experiment(exp, show_progress=False)
    assert [s["stage"] for s in out["stages"]] == [1, 2]
    s1, s2 = tmp_path / "ppo_synthetic_loreft-s1" / "intervention", tmp_path / "ppo_synthetic_loreft-s2" / "intervention"
    extras = load_file(s2 / EXTRAS_NAME)
    assert not (s1 / EXTRAS_NAME).exists()  # SFT keeps nothing beside the interventions
    assert {k for k in extras if k.startswith(f"{VALUE_HEAD}.")} == {f"{VALUE_HEAD}.summary.weight",
                                                                      f"{VALUE_HEAD}.summary.bias"}
    stage1 = policy_parameters(reftx.ReftModel.from_pretrained(tiny_model_from(tiny_dir), s1))
    anchor = {k[len(ANCHOR) + 1:].replace(":", "."): v for k, v in extras.items() if k.startswith(f"{ANCHOR}.")}
    assert set(anchor) == set(stage1) and all(torch.equal(anchor[k], stage1[k].cpu()) for k in stage1)
    rows = [json.loads(line) for line in (tmp_path / "ppo_synthetic_loreft-s2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and abs(rows[0]["obj/kl"]) < 1e-5 and "obj/vf_loss" in rows[0]
    assert (tmp_path / "ppo_synthetic_loreft-s2" / "results.json").is_file()


def tiny_model_from(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)
