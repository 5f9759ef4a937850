"""Fault injection, task data: data that reftx used to accept silently is refused before anything is
built, trained or saved, with one line naming file:line (or the example), the counts and the fix;
``task.overlong: truncate | drop`` cuts or leaves out over-long examples and says how many.

The runs use the quickstart experiment on tiny random models with the default tokenizer, which adds
no BOS: a prompt "Question 1?" is 4 tokens, a response "Answer 1." 4 tokens + EOS, and " ".join
of n words ("word" or "long") n tokens (model.chat_template=false, so no template tokens)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PretrainedConfig

import reftx.cli.commands as cli
from reftx.config.schema import load_experiment
from reftx.core.errors import DataError
from reftx.data import checks
from reftx.data.encoding import use_chat
from reftx.data.examples import Example
from reftx.eval.task import get_task
from reftx.recipes import train as runner
from tests.integration.test_faults import QUICKSTART, overrides

FIX = "or set task.overlong: truncate (or drop) to cut (or leave out) such examples"
LONG_TRAIN = " ".join(["word"] * 300)  # 300 tokens
LONG_EVAL = " ".join(["long"] * 100)  # 100 tokens


def _save(model, d: Path, tok) -> Path:
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def llama64(tmp_path_factory, tok):
    """A tiny llama that takes 64 positions (max_position_embeddings)."""
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return _save(LlamaForCausalLM(cfg), tmp_path_factory.mktemp("llama64"), tok)


@pytest.fixture(scope="module")
def gpt2_64(tmp_path_factory, tok):
    """A tiny GPT-2 that takes 64 positions (n_positions): a longer input is an IndexError."""
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=4, n_head=4, n_positions=64,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return _save(GPT2LMHeadModel(cfg), tmp_path_factory.mktemp("gpt2_64"), tok)


def data_file(tmp_path: Path, edits: dict[int, dict[str, str]] | None = None) -> Path:
    """A persona-format file: lines 1-4 train ("Question i?" / "Answer i."), lines 5-6 eval; ``edits``
    replaces fields of the row on a (1-based) line."""
    rows = [{"prompt": f"Question {i}?", "response": f"Answer {i}.", "split": "train" if i < 4 else "eval"}
            for i in range(6)]
    for line, fields in (edits or {}).items():
        rows[line - 1].update(fields)
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def args(model_dir, tmp_path, data, *extra):
    return overrides(model_dir, tmp_path, "model.chat_template=false", f"task.options.file={data}", *extra)


def run(model_dir, tmp_path, data, *extra):
    return runner.run(load_experiment(QUICKSTART, args(model_dir, tmp_path, data, *extra)), show_progress=False)


def saved(tmp_path: Path) -> list[str]:
    """What a run left in its folder, besides the lock it held."""
    folder = tmp_path / "runs" / "quickstart"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != ".lock") if folder.exists() else []


def refused(model_dir, tmp_path, data, message: str, *extra) -> None:
    with pytest.raises(DataError) as err:
        run(model_dir, tmp_path, data, *extra)
    assert str(err.value) == message
    assert saved(tmp_path) == []  # nothing written: no config.yaml, checkpoint, intervention/ or results.json


# -- over-long examples --------------------------------------------------------------------------
def test_train_prompt_beyond_the_context_is_refused_before_training(llama64, tmp_path, capsys):
    data = data_file(tmp_path, {3: {"prompt": LONG_TRAIN}})
    refused(llama64, tmp_path, data, f"{data}:3: 305 tokens (prompt 300 + response 5) exceed the model's context "
            f"length 64 (max_position_embeddings; train.max_length=128 is larger); 1 of 4 train examples are longer: "
            f"shorten them, {FIX}")
    capsys.readouterr()
    assert cli.main(["run", str(QUICKSTART), *args(llama64, tmp_path, data), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {data}:3: 305 tokens") and "Traceback" not in "\n".join(err)


def test_eval_prompt_beyond_the_context_is_refused_before_training(gpt2_64, tmp_path):
    data = data_file(tmp_path, {6: {"prompt": LONG_EVAL}})
    refused(gpt2_64, tmp_path, data, f"{data}:6: 100 prompt tokens + eval.max_new_tokens=3 exceed the model's "
            f"context length 64 (n_positions); 1 of 2 eval examples are longer: shorten the prompts, lower "
            f"eval.max_new_tokens, {FIX}")


def test_max_length_2_is_refused_naming_train_max_length(tiny_dir, tmp_path):
    data = data_file(tmp_path)
    refused(tiny_dir, tmp_path, data, f"{data}:1: 9 tokens (prompt 4 + response 5) exceed train.max_length=2; 4 of 4 "
            f"train examples are longer: shorten them, raise train.max_length, {FIX}", "train.max_length=2")


def test_truncate_cuts_reports_the_count_and_evaluation_runs(gpt2_64, tmp_path, tok, capsys):
    data = data_file(tmp_path, {3: {"prompt": LONG_TRAIN}, 6: {"prompt": LONG_EVAL}})
    res = run(gpt2_64, tmp_path, data, "task.overlong=truncate")
    err = capsys.readouterr().err
    assert ("task.overlong=truncate: 1 of 4 train examples truncated to 64 tokens (the model's context length 64 "
            "(n_positions; train.max_length=128 is larger))") in err
    assert ("task.overlong=truncate: 1 of 2 eval prompts cut to their last 61 tokens (the model's context length 64 "
            "(n_positions) - eval.max_new_tokens=3)") in err
    assert (res["n_train"], res["n_eval"], res["train"]["steps"]) == (4, 2, 4)  # GPT-2 evaluated: no IndexError
    assert (tmp_path / "runs" / "quickstart" / "results.json").is_file()
    exp = load_experiment(QUICKSTART, args(gpt2_64, tmp_path, data, "task.overlong=truncate"))
    task = runner.load_task(exp)
    examples, encoded = runner._encode(exp, tok, task.examples("train"), False, GPT2Config(n_positions=64))
    assert [len(e.input_ids) for e in encoded] == [9, 9, 64, 9] and len(examples) == 4
    # the response is cut first (to one token), then the prompt's start: its last 63 tokens stay
    assert encoded[2].untruncated == (300, 5) and encoded[2].prompt_len == 63 and encoded[2].truncated
    samples = [json.loads(x) for x in (tmp_path / "runs" / "quickstart" / "samples.jsonl").read_text().splitlines()]
    cut = next(s["prompt"] for s in samples if "long" in s["prompt"])
    assert len(tok(cut)["input_ids"]) == 61 and LONG_EVAL.endswith(cut)  # the prompt's start was cut


def test_drop_leaves_out_and_reports_the_count(llama64, tmp_path, capsys):
    data = data_file(tmp_path, {3: {"prompt": LONG_TRAIN}})
    res = run(llama64, tmp_path, data, "task.overlong=drop")
    assert ("task.overlong=drop: 1 of 4 train examples longer than the model's context length 64 "
            "(max_position_embeddings; train.max_length=128 is larger) left out") in capsys.readouterr().err
    assert (res["n_train"], res["n_eval"]) == (3, 2)


def test_drop_of_every_example_is_refused():
    ex = [Example("a", "b")] * 2
    with pytest.raises(DataError, match=r"^task.overlong: drop leaves no train examples: all 2 are longer than "
                                        r"train.max_length=1; set task.overlong: truncate or allow longer examples$"):
        from reftx.data.encoding import Encoded

        checks.fit_train(ex, [Encoded([5, 6], [-100, 6], 1, True, untruncated=(1, 1))] * 2,
                         checks.train_limit(1, None), "drop", print)


def test_model_without_a_context_length_is_checked_against_max_length_only():
    assert checks.context_length(PretrainedConfig()) is None
    assert checks.context_length(GPT2Config(n_positions=64)) == (64, "n_positions")
    assert checks.train_limit(128, PretrainedConfig()).name == "train.max_length=128"
    ex = [Example(LONG_EVAL, "x")]
    assert checks.fit_eval(None, ex, False, PretrainedConfig(), None, True, "error", print) == (ex, None)


# -- empty prompts and responses -----------------------------------------------------------------
def test_empty_prompt_among_good_rows_is_refused(tiny_dir, tmp_path):
    data = data_file(tmp_path, {2: {"prompt": ""}})
    refused(tiny_dir, tmp_path, data, f"{data}:2: empty prompt (1 of 4 train examples have none); write the prompt "
            f"or remove the row")


def test_all_prompts_empty_is_refused(tiny_dir, tmp_path):
    data = data_file(tmp_path, {i: {"prompt": " "} for i in range(1, 5)})
    refused(tiny_dir, tmp_path, data, f"{data}:1: empty prompt (4 of 4 train examples have none); write the prompt "
            f"or remove the row")
    with pytest.raises(DataError, match=r"^train example 1 \(prompt ''\): empty prompt \(1 of 2 train examples have "
                                        r"none\); write the prompt or remove the row$"):  # not from a file: its index
        checks.check_prompts([Example("Hi?", "x"), Example("", "y")], "train")


def test_empty_response_is_refused(tiny_dir, tmp_path):
    data = data_file(tmp_path, {4: {"response": "  "}})
    refused(tiny_dir, tmp_path, data, f"{data}:4: empty response (1 of 4 train examples have none), so there is "
            f"nothing to train on; write the response or remove the row")


def test_empty_eval_prompt_is_refused_by_the_task(tmp_path):
    data = data_file(tmp_path, {5: {"prompt": ""}})
    with pytest.raises(DataError, match=rf"^{data}:5: empty prompt \(1 of 2 eval examples have none\)"):
        get_task("persona", {"file": str(data)}).examples("eval")


# -- no supervised token -------------------------------------------------------------------------
def test_example_without_a_supervised_token_is_refused_with_the_reason(tiny_dir, tmp_path):
    data = data_file(tmp_path)
    refused(tiny_dir, tmp_path, data, f"{data}:1: no response token to train on (every label after the first position "
            f"is -100: train.max_length=1 leaves no room for a prompt token and a response token); 4 of 4 train "
            f"examples are so: raise train.max_length", "train.max_length=1", "task.overlong=truncate")


def test_chat_template_tokens_count(tiny_dir, tmp_path, tok):
    """With the chat template the template's tokens count toward the limit too (the shipped persona data)."""
    exp = load_experiment(QUICKSTART, overrides(tiny_dir, tmp_path))
    chat = use_chat(tok, exp.model.chat_template)
    examples, encoded = runner._encode(exp, tok, runner.load_task(exp).examples("train"), chat)
    assert chat and len(examples) == 44 and max(sum(e.untruncated) for e in encoded) == 75
    import reftx.tasks.persona as shipped

    persona = Path(shipped.DATA) / "persona.jsonl"
    with pytest.raises(DataError, match=rf"^{persona}:3: 73 tokens \(prompt 37 \+ response 36\) exceed "
                                        r"train.max_length=70; 11 of 44 train examples are longer"):
        runner._encode(load_experiment(QUICKSTART, overrides(tiny_dir, tmp_path, "train.max_length=70")),
                       tok, examples, chat)
