"""Fault injection for the trainers that sample and score, and for TRL's datasets: a reward that is
not one finite number per completion stops training before its step is applied or anything is
saved, with a message naming the step, the reward function and the completion; a TRL dataset
without the columns its trainer reads is refused when the trainer is built (reftx.integrations.trl,
reftx.train.objectives.rewards)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import reftx
from reftx.core.errors import DataError
from reftx.recipes import train as runner
from reftx.config.schema import load_experiment
from reftx.train.objectives.rewards import BadReward, short
from reftx.train.run import NonFiniteLoss
from tests.conftest import tiny_config, tiny_model
from tests.integration.test_faults import overrides, QUICKSTART
from tests.integration.test_trl import LONG, SHORT, SPEC, common, tok  # noqa: F401  (tok: the fixture)

trl = pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402

FIX = "return one finite number per completion, in the order given"
TRL_FIX = FIX + " (None where the function does not apply)"
STOP = "stopped before applying it."


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


def grpo_trainer(tmp_path, tok, *reward_funcs, **kw):
    """A tiny ReftGRPOTrainer (2 prompts × 4 completions per step) that would save a checkpoint after
    every step; returns it and a snapshot of its intervention weights."""
    from reftx.integrations.trl import ReftGRPOTrainer

    reft = reftx.attach(tiny_model("llama"), SPEC)
    args = trl.GRPOConfig(**{**common(tmp_path / "out", batch=8, max_steps=2), "save_strategy": "steps"},
                          save_steps=1, num_generations=4, max_completion_length=3)
    trainer = ReftGRPOTrainer(reft, reward_funcs=list(reward_funcs), args=args, processing_class=tok,
                              train_dataset=Dataset.from_list([{"prompt": LONG}, {"prompt": SHORT}] * 2), **kw)
    weights = {n: p.detach().clone() for n, p in reft.interventions.named_parameters()}
    return trainer, reft, weights


def assert_nothing_saved(tmp_path: Path, reft, weights) -> None:
    out = tmp_path / "out"
    saved = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    assert saved == []  # no checkpoint-N, no interventions.safetensors
    for n, p in reft.interventions.named_parameters():
        assert torch.equal(p, weights[n]), n  # no step was applied


class Recorder:
    """A TRL reward function that remembers what it was given and returns ``make(completions)``."""

    def __init__(self, name, make):
        self.__name__, self.make, self.calls = name, make, []

    def __call__(self, prompts, completions, **kw):
        self.calls.append((list(prompts), list(completions)))
        return self.make(completions)

    def sample(self, i):
        prompts, completions = self.calls[-1]
        return f"prompt {short(prompts[i])}, completion {short(completions[i])}"


def test_a_nan_reward_from_a_trl_reward_function_stops_training_before_anything_is_saved(tmp_path, tok):
    fn = Recorder("nan_reward", lambda cs: [math.nan if i == 2 else 1.0 for i in range(len(cs))])
    trainer, reft, weights = grpo_trainer(tmp_path, tok, fn)
    with pytest.raises(BadReward) as err:
        trainer.train()
    assert isinstance(err.value, NonFiniteLoss)  # `reftx run` reports it as a stop (exit 3), like a NaN loss
    assert str(err.value) == (f"step 1: reward function 'nan_reward' returned nan for completion 2 of 8 "
                              f"({fn.sample(2)}); {TRL_FIX}; {STOP}")
    assert len(fn.calls) == 1
    assert_nothing_saved(tmp_path, reft, weights)


def test_a_reward_list_of_the_wrong_length_stops_training(tmp_path, tok):
    fn = Recorder("short_reward", lambda cs: [1.0] * (len(cs) - 1))
    trainer, reft, weights = grpo_trainer(tmp_path, tok, fn)
    with pytest.raises(BadReward, match=exactly(f"step 1: reward function 'short_reward' returned 7 rewards for "
                                                f"8 completions; {TRL_FIX}; {STOP}")):
        trainer.train()
    assert_nothing_saved(tmp_path, reft, weights)


def test_a_reward_of_the_wrong_type_stops_training(tmp_path, tok):
    fn = Recorder("text_reward", lambda cs: [1.0, "good"] + [0.0] * (len(cs) - 2))
    trainer, reft, weights = grpo_trainer(tmp_path, tok, fn)
    with pytest.raises(BadReward) as err:
        trainer.train()
    assert str(err.value) == (f"step 1: reward function 'text_reward' returned 'good' (str) for completion 1 of 8 "
                              f"({fn.sample(1)}), not a number; {TRL_FIX}; {STOP}")
    assert_nothing_saved(tmp_path, reft, weights)


def test_none_is_a_reward_function_that_does_not_apply_but_every_completion_needs_one_score(tmp_path, tok):
    # TRL's meaning of None: this function does not apply; another one scores the completion -> trains
    absent = Recorder("absent", lambda cs: [None] * len(cs))
    scored = Recorder("scored", lambda cs: [float(i % 2) for i in range(len(cs))])
    trainer, reft, _ = grpo_trainer(tmp_path / "ok", tok, absent, scored)
    trainer.train()
    assert len(scored.calls) == 2 and trainer.state.global_step == 2
    assert (tmp_path / "ok" / "out" / "checkpoint-2" / "interventions.safetensors").is_file()
    # no function scores completion 3: TRL would only warn and give it advantage 0
    partly = Recorder("partly", lambda cs: [None if i == 3 else 1.0 for i in range(len(cs))])
    trainer, reft, weights = grpo_trainer(tmp_path, tok, Recorder("absent", lambda cs: [None] * len(cs)), partly)
    with pytest.raises(BadReward) as err:
        trainer.train()
    assert str(err.value) == (f"step 1: no reward function scored completion 3 of 8 ({partly.sample(3)}): absent, "
                              f"partly each returned None; return a number from at least one reward function for "
                              f"every completion; {STOP}")
    assert_nothing_saved(tmp_path, reft, weights)


def test_a_reward_model_that_returns_nan_stops_training(tmp_path, tok):
    from transformers import LlamaForSequenceClassification

    rm = LlamaForSequenceClassification(tiny_config("llama")).eval()
    rm.config._name_or_path = "org/tiny-rm"
    with torch.no_grad():
        rm.score.weight.fill_(math.nan)
    trainer, reft, weights = grpo_trainer(tmp_path, tok, rm, reward_processing_classes=[tok])
    with pytest.raises(BadReward, match=r"^step 1: reward model 'tiny-rm' returned nan for completion 0 of 8 "
                                        r"\(prompt '(w1 w2 w3 w4 w5|w6 w7 w8)', completion '.*'\); check the reward "
                                        r"model \(its weights and dtype\); stopped before applying it\.$"):
        trainer.train()
    assert_nothing_saved(tmp_path, reft, weights)


def test_a_non_finite_task_reward_stops_reftx_grpo_before_anything_is_saved(tiny_dir, tmp_path, monkeypatch):
    from reftx.tasks.persona import Persona

    seen, given = [], []
    sampling_env = runner.sampling_env

    def spy(exp, task, examples, tok, encoded):
        given.append(examples)
        return sampling_env(exp, task, examples, tok, encoded)

    def reward(self, prediction, example, partial):
        seen.append((prediction, example))
        return math.inf if len(seen) == 2 else 0.5

    monkeypatch.setattr(runner, "sampling_env", spy)
    monkeypatch.setattr(Persona, "reward", reward)
    exp = load_experiment(QUICKSTART, overrides(tiny_dir, tmp_path, "train.objective=grpo", "eval.show_examples=0",
                                                "train.objective_options.group_size=2",
                                                "train.objective_options.max_new_tokens=3"))
    with pytest.raises(BadReward) as err:
        runner.run(exp, show_progress=False)
    completion, example = seen[1]  # 4 questions x 2 samples; the second sample is the bad one
    index = next(i for i, e in enumerate(given[0]) if e is example)
    assert str(err.value) == (f"step 1: task 'persona' (Task.reward) returned inf for completion 1 of 8 (example "
                              f"{index}: prompt {short(example.prompt)}, completion {short(completion)}); {FIX}; "
                              f"{STOP} Last good checkpoint: None")
    run_dir = tmp_path / "runs" / "quickstart"
    # what a run writes before its first step, and nothing after: no checkpoints/, no weights, no results
    assert sorted(p.name for p in run_dir.iterdir() if p.name != ".lock") == ["config.yaml", "metrics.jsonl"]
    assert (run_dir / "metrics.jsonl").read_text() == ""


@pytest.mark.parametrize("trainer, config, rows, message", [
    ("ReftSFTTrainer", "SFTConfig", [{"question": LONG, "answer": " w10"}],
     "ReftSFTTrainer: train_dataset has no column 'text' (its columns: question, answer); SFT needs 'text' "
     "(args.dataset_text_field), 'messages', or 'prompt' and 'completion': add it, or rename yours with "
     "dataset.rename_column('yours', 'text')"),
    ("ReftDPOTrainer", "DPOConfig", [{"prompt": LONG, "chosen": " w10", "refused": " w20"}],
     "ReftDPOTrainer: train_dataset has no column 'rejected' (its columns: prompt, chosen, refused); DPO needs "
     "'prompt', 'chosen' and 'rejected': add it, or rename yours with dataset.rename_column('yours', 'rejected')"),
    ("ReftGRPOTrainer", "GRPOConfig", [{"question": LONG}],
     "ReftGRPOTrainer: train_dataset has no column 'prompt' (its columns: question); GRPO needs 'prompt': add it, "
     "or rename yours with dataset.rename_column('yours', 'prompt')"),
], ids=["sft", "dpo", "grpo"])
def test_a_dataset_without_the_trainers_columns_is_refused_when_the_trainer_is_built(tmp_path, tok, trainer, config,
                                                                                     rows, message):
    import reftx.integrations.trl as adapter

    reft = reftx.attach(tiny_model("llama"), SPEC)
    extra = {"num_generations": 4, "max_completion_length": 3} if trainer == "ReftGRPOTrainer" else {}
    args = getattr(trl, config)(**common(tmp_path / "out", batch=4), **extra)
    kw = {"reward_funcs": lambda completions, **k: [0.0] * len(completions)} if trainer == "ReftGRPOTrainer" else {}
    with pytest.raises(DataError, match=exactly(message)):
        getattr(adapter, trainer)(reft, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, **kw)
    assert not (tmp_path / "out").exists()
