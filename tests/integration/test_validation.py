"""Validation during training (train.eval_every) on the dev split (task.dev_size): dev rows in
metrics.jsonl and the trackers, the best checkpoint, early stopping, load_best, resume, and the
dev split itself (fixed, disjoint, independent of the seed). Tiny random llama, the quickstart task."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

import reftx.cli.commands as cli
import reftx.train.run as train_run
from reftx.config.schema import load_experiment
from reftx.core.errors import ConfigError
from reftx.data.encoding import encode, use_chat
from reftx.eval.task import TASKS, get_task
from reftx.recipes import train as runner
from tests.integration.test_runner import REPO, tiny_overrides

QUICKSTART = REPO / "experiments" / "quickstart.yaml"
DEV = ["task.dev_size=8", "eval.max_new_tokens=3"]


def exp_of(tiny_dir, tmp_path, *extra):
    return load_experiment(QUICKSTART, [*tiny_overrides(tiny_dir, tmp_path), *DEV, *extra])


def rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def dev_rows(run_dir):
    return [r for r in rows(run_dir) if any(k.startswith("dev/") for k in r)]


def weights(folder):
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


# -- the dev split --------------------------------------------------------------------------------
def test_dev_split_is_held_out_of_training_by_a_fixed_pick():
    task = get_task("persona")
    train_all = [e.prompt for e in task.examples("train")]
    eval_all = [e.prompt for e in task.examples("eval")]
    task.hold_out_dev("train", 8)
    assert [e.prompt for e in task.examples("eval")] == eval_all  # the other splits lose nothing (they once lost 8)
    dev = [e.prompt for e in task.examples("dev")]
    train = [e.prompt for e in task.examples("train")]
    assert len(dev) == 8 and len(train) == len(train_all) - 8
    assert not set(dev) & set(train) and sorted(dev + train) == sorted(train_all)
    assert not set(dev) & {e.prompt for e in task.examples("eval")}
    bigger = get_task("persona")
    bigger.hold_out_dev("train", 12)
    assert set(dev) < {e.prompt for e in bigger.examples("dev")}  # a larger dev split holds the smaller one
    for seed in (0, 1, 7):  # the training seed picks n_train from what is left, never the dev split
        picked = {e.prompt for e in task.examples("train", 10, seed)}
        assert not picked & set(dev)
    assert get_task("persona").default_splits() == ("train", "eval")


def test_a_task_that_evaluates_on_its_training_split_loses_the_dev_examples_there_too():
    task = get_task("mcq")
    everything = [e.prompt for e in task.examples("test")]
    task.hold_out_dev("test", 5)
    dev = {e.prompt for e in task.examples("dev")}
    assert len(dev) == 5 and not dev & {e.prompt for e in task.examples("test")}
    assert len(task.examples("test")) == len(everything) - 5


@pytest.mark.parametrize("name", sorted(set(TASKS.names()) - {"knowledge_edit"}))
def test_every_task_with_a_training_split_can_hold_out_a_dev_split(name):
    task = get_task(name)
    source = task.default_splits()[0]
    n = len(task.examples(source))
    task.hold_out_dev(source, 3)
    assert len(task.examples("dev")) == 3 and len(task.examples(source)) == n - 3


def test_dev_split_errors_name_the_field(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"task.eval_split: task 'persona' holds out no dev split: set task.dev_size"):
        runner.validate(load_experiment(QUICKSTART, [*tiny_overrides(tiny_dir, tmp_path), "task.eval_split=dev"]))
    with pytest.raises(ConfigError, match=r"train.eval_every: scores the dev split, and task 'persona' holds out "
                                          r"none: set task.dev_size"):
        runner.validate(load_experiment(QUICKSTART, [*tiny_overrides(tiny_dir, tmp_path), "train.eval_every=2"]))
    with pytest.raises(ConfigError, match=r"task.dev_size: holds out 44 of the 44 examples of split 'train'"):
        runner.validate(exp_of(tiny_dir, tmp_path, "task.dev_size=44"))
    with pytest.raises(ConfigError, match=r"train.early_stopping: needs evaluations on the dev split: set "
                                          r"train.eval_every"):
        exp_of(tiny_dir, tmp_path, "train.early_stopping=2")
    with pytest.raises(ConfigError, match=r"train.eval_metric.*persona_opn.*did you mean 'persona_open'"):
        runner.validate(exp_of(tiny_dir, tmp_path, "train.eval_every=2", "train.eval_metric=persona_opn"))
    exp = exp_of(tiny_dir, tmp_path, "task.eval_split=dev")  # dev as the evaluated split
    assert len(runner.eval_examples(exp, runner.load_task(exp))) == 3


# -- evaluation during training ---------------------------------------------------------------------
def test_eval_every_writes_dev_rows_whose_loss_is_the_dev_nll_and_leaves_training_unchanged(tiny_dir, tmp_path,
                                                                                            monkeypatch):
    logged = []
    monkeypatch.setattr(train_run.tracking, "log", lambda acc, row: logged.append(row))
    with_eval = runner.run(exp_of(tiny_dir, tmp_path, "train.eval_every=2", "train.log_with=[tensorboard]",
                                  "name=with"), show_progress=False)
    without = runner.run(exp_of(tiny_dir, tmp_path, "name=without"), show_progress=False)
    run_dir = tmp_path / "runs" / "with"
    dev = dev_rows(run_dir)
    assert [r["step"] for r in dev] == [2, 4]
    assert set(dev[0]) == {"step", "epoch", "dev/loss", "dev/persona_open", "dev/persona_close", "dev/distinct_2"}
    assert [r for r in logged if "dev/loss" in r] == dev  # the same rows reach the trackers
    a, b = weights(run_dir / "intervention"), weights(tmp_path / "runs" / "without" / "intervention")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # training is the same
    assert with_eval["metrics"] == without["metrics"]

    exp = exp_of(tiny_dir, tmp_path, "train.eval_every=2")  # the dev loss, by hand, on the final weights
    task = runner.load_task(exp)
    model, tok = runner.trained_model(exp, run_dir)
    chat, total, count = use_chat(tok, exp.model.chat_template), 0.0, 0
    for ex in task.examples("dev"):
        e = encode(tok, ex, exp.train.max_length, chat)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([e.input_ids]), attention_mask=torch.ones(1, len(e.input_ids),
                           dtype=torch.long), prompt_lengths=torch.tensor([e.prompt_len])).logits[0]
        logp = torch.log_softmax(logits.double(), -1)
        for t in range(1, len(e.labels)):
            if e.labels[t] != -100:
                total, count = total - float(logp[t - 1, e.labels[t]]), count + 1
    assert dev[-1]["dev/loss"] == pytest.approx(total / count, rel=1e-5)
    best = with_eval["train"]["best"]
    assert best["metric"] == "dev/loss" and best["value"] == min(r["dev/loss"] for r in dev)
    assert best["step"] == min(dev, key=lambda r: r["dev/loss"])["step"] and not best["stopped_early"]


def test_early_stopping_keeps_the_best_checkpoint_and_resume_has_nothing_left(tiny_dir, tmp_path, capsys):
    # a random tiny model never opens with "arr": persona_open stays 0, so only the first evaluation is a best
    flags = [*tiny_overrides(tiny_dir, tmp_path), *DEV, "train.max_steps=10", "train.eval_every=1",
             "train.eval_metric=persona_open", "train.early_stopping=2", "train.keep_checkpoints=1", "--no-progress"]
    assert cli.main(["run", str(QUICKSTART), *flags]) == 0
    run_dir = tmp_path / "runs" / "quickstart"
    res = json.loads((run_dir / "results.json").read_text())
    assert res["train"]["steps"] == 3
    assert res["train"]["best"] == {"metric": "dev/persona_open", "value": 0.0, "step": 1,
                                    "checkpoint": "checkpoints/step-1", "stopped_early": True}
    assert [r["step"] for r in dev_rows(run_dir)] == [1, 2, 3]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-1", "step-3"]  # the best stays
    assert ("train.early_stopping: dev/persona_open has not improved in 2 evaluations; stopped at step 3 (best: "
            "step 1)") in capsys.readouterr().out
    state = json.loads((run_dir / "checkpoints" / "step-3" / "state.json").read_text())
    assert state["stopped"] and state["best_step"] == 1 and state["bad_evals"] == 2

    before = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "results.json").unlink()  # a crash after the stop, before the evaluation: resume trains nothing
    assert cli.main(["run", str(QUICKSTART), *flags, "--resume"]) == 0
    assert json.loads((run_dir / "results.json").read_text())["train"]["steps"] == 3
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_load_best_makes_the_best_checkpoint_the_run_s_interventions(tiny_dir, tmp_path):
    res = runner.run(exp_of(tiny_dir, tmp_path, "train.eval_every=1", "train.eval_metric=persona_open",
                            "train.load_best=true", "train.checkpoint_every=0"), show_progress=False)
    run_dir = tmp_path / "runs" / "quickstart"
    assert res["train"]["best"]["step"] == 1 and res["train"]["steps"] == 4
    best, final = weights(run_dir / "checkpoints" / "step-1" / "intervention"), weights(run_dir / "intervention")
    last = weights(run_dir / "checkpoints" / "step-4" / "intervention")
    assert all(torch.equal(best[k], final[k]) for k in best)
    assert any(not torch.equal(last[k], final[k]) for k in last)


def test_a_run_interrupted_between_evaluations_resumes_to_the_same_dev_rows(tiny_dir, tmp_path, monkeypatch):
    flags = [*tiny_overrides(tiny_dir, tmp_path), *DEV, "train.eval_every=1", "train.checkpoint_every=2",
             "--no-progress"]
    assert cli.main(["run", str(QUICKSTART), *flags, "name=whole"]) == 0
    log = train_run._Run.log

    def log_then_interrupt(self, rec):
        log(self, rec)
        if rec["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_run._Run, "log", log_then_interrupt)
    assert cli.main(["run", str(QUICKSTART), *flags, "name=cut"]) == 130
    monkeypatch.undo()
    assert cli.main(["run", str(QUICKSTART), *flags, "name=cut", "--resume"]) == 0
    whole, cut = tmp_path / "runs" / "whole", tmp_path / "runs" / "cut"
    assert dev_rows(cut) == dev_rows(whole) and len(dev_rows(whole)) == 4
    a, b = (json.loads((d / "results.json").read_text())["train"]["best"] for d in (whole, cut))
    assert a == b
