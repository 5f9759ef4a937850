"""Fault injection in the engine: inputs ReftModel and load_model used to accept silently or answer
with a raw torch/OS traceback. Each case asserts the exact one-line error (argument and fix)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

import reftx
import reftx.cli.commands as cli
from reftx.core.errors import ConfigError, DataError, ReftError
from reftx.models.loading import load_model
from tests.conftest import batch, perturb, tiny_model
from tests.integration.test_faults import QUICKSTART, overrides

PROMPT = [{"kind": "loreft", "rank": 4, "layers": [0, 2], "positions": {"first": 2, "last": 2}}]


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


@pytest.fixture
def model():
    return perturb(reftx.attach(tiny_model("llama"), PROMPT))


def greedy(model, ids, mask):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0,
                          eos_token_id=None)


# -- ReftModel.forward: shapes and dtypes ---------------------------------------------------------------
def test_labels_shorter_than_input_ids(model):
    ids, mask = batch()  # (3, 12)
    with pytest.raises(DataError, match=exactly(
            "labels: shape (3, 5) does not match input_ids (3, 12); a language model takes one label per token "
            "(the input ids, -100 where no loss is wanted), padded exactly like input_ids")):
        model(input_ids=ids, attention_mask=mask, labels=ids[:, :5])
    labels = ids.masked_fill(torch.arange(12) < 4, -100)  # the first 4 tokens are the prompt
    assert model(input_ids=ids, attention_mask=mask, labels=labels).loss.isfinite()  # matching labels still train


def test_classifier_labels_need_one_per_example():
    model = reftx.attach(tiny_model("bert"), [{**PROMPT[0], "positions": "all"}])
    ids, mask = batch()
    with pytest.raises(DataError, match=exactly(
            "labels: shape (2,) does not match the batch of 3 rows in input_ids (3, 12); pass one label per example")):
        model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1]))
    assert model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 1])).loss.isfinite()


def test_float_input_ids(model):
    ids, mask = batch()
    with pytest.raises(DataError, match=exactly(
            "input_ids: token ids must be integers, got dtype torch.float32; convert them with input_ids.long() "
            "(vectors go in inputs_embeds= instead)")):
        model(input_ids=ids.float(), attention_mask=mask)


def test_batch_without_rows(model):
    ids, mask = batch()
    with pytest.raises(DataError, match=exactly(
            "input_ids: the batch is empty (shape (0, 12), no rows); skip empty batches before calling the model "
            "(e.g. after filtering examples)")):
        model(input_ids=ids[:0], attention_mask=mask[:0], labels=ids[:0])


def test_batch_without_columns(model):
    ids, mask = batch()
    with pytest.raises(DataError, match=exactly(
            "input_ids: every row is empty (shape (3, 0), no tokens); check that encoding and truncation "
            "(max_length) leave at least one token per example")):
        model(input_ids=ids[:, :0], attention_mask=mask[:, :0])


# -- ReftModel.generate: left padding only --------------------------------------------------------------
def test_generate_on_right_padded_prompts(model):
    ids, mask = batch(b=3, t=8)  # row i ends in 2*i padding tokens
    with pytest.raises(DataError, match=exactly(
            "generate: attention_mask is right-padded (row 1 ends in 2 padding tokens), but new tokens are appended "
            "after the last column; generation needs left padding: set tokenizer.padding_side = \"left\" before "
            "tokenizing the prompts")):
        greedy(model, ids, mask)
    left_ids, left_mask = batch(b=3, t=8, left_pad=True)
    assert greedy(model, left_ids, left_mask).shape == (3, 11)  # the same prompts, left-padded, generate


def test_generate_on_a_mask_with_a_hole(model):
    ids, mask = batch(b=2, t=8, left_pad=True)
    mask[1, 5] = 0  # row 1: 0 0 1 1 1 0 1 1
    with pytest.raises(DataError, match=exactly(
            "generate: attention_mask row 1 has a 0 at position 5 between tokens (1s); a prompt must be one "
            "contiguous run of tokens with padding only on the left: mask no token inside a prompt (and set "
            "tokenizer.padding_side = \"left\")")):
        greedy(model, ids, mask)


# -- a ReftModel after detach() -------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["forward", "generate", "save_pretrained", "carry"])
def test_detached_model_refuses_to_run_or_save(model, call, tmp_path):
    ids, mask = batch(b=1, t=6)
    base = model.detach()
    calls = {"forward": lambda: model(input_ids=ids, attention_mask=mask),
             "generate": lambda: greedy(model, ids, mask),
             "save_pretrained": lambda: model.save_pretrained(tmp_path / "saved"),
             "carry": model.carry}
    with pytest.raises(ReftError, match=exactly(
            f"ReftModel.{call}: this ReftModel was detached (detach() removed its hooks and gave the base back, so it "
            "no longer runs these interventions); attach again with reftx.attach(base, interventions) or "
            "reftx.ReftModel.from_pretrained(base, directory), and to keep trained weights call save_pretrained "
            "before detach()")):
        calls[call]()
    assert not (tmp_path / "saved").exists()
    assert "generate" not in base.__dict__ and "reftx_interventions" not in dict(base.named_children())
    reftx.attach(base, PROMPT)(input_ids=ids, attention_mask=mask)  # the base itself attaches again


# -- loading onto a base without weights ---------------------------------------------------------------
def test_from_pretrained_onto_a_meta_base(model, tmp_path):
    model.save_pretrained(tmp_path)
    with torch.device("meta"):
        empty = tiny_model("llama")
    with pytest.raises(ReftError, match=exactly(
            "the base model has no real weights: 39 of 39 parameters are on the meta device (built under "
            "init_empty_weights / torch.device('meta'), or loaded with device_map='meta'); load it with its "
            "weights (e.g. reftx.load_model(name) or AutoModelForCausalLM.from_pretrained(name)) before "
            "attaching or loading interventions")):
        reftx.ReftModel.from_pretrained(empty, tmp_path)
    again = reftx.ReftModel.from_pretrained(tiny_model("llama"), tmp_path)  # the file itself is fine
    assert again.plan()[0].key == model.plan()[0].key


# -- reftx.models.loading: a local folder without weights ------------------------------------------------
def _without_weights(tiny_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    return folder


def test_local_folder_without_weights(tiny_dir, tmp_path):
    folder = _without_weights(tiny_dir, tmp_path)
    names = sorted(p.name for p in folder.iterdir())
    holds = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    with pytest.raises(ConfigError, match=exactly(
            f"model.name: the local model folder {folder} has no model weights (model.safetensors or "
            f"pytorch_model.bin; it holds {holds}); write the model there with model.save_pretrained('{folder}') "
            "(and tokenizer.save_pretrained), or point model.name at a complete folder")):
        load_model(str(folder))


def test_local_folder_without_config(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(ConfigError, match=exactly(
            f"model.name: the local model folder {folder} has no config.json (it is empty); write the model "
            f"there with model.save_pretrained('{folder}') (and tokenizer.save_pretrained), or point model.name "
            "at a complete folder")):
        load_model(str(folder))


def test_cli_run_on_a_folder_without_weights_is_one_line(tiny_dir, tmp_path, capsys):
    folder = _without_weights(tiny_dir, tmp_path)
    args = [a for a in overrides(tiny_dir, tmp_path) if not a.startswith("model.name=")]
    assert cli.main(["run", str(QUICKSTART), f"model.name={folder}", *args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: model.name: the local model folder {folder} has no model weights")
    assert not any("Traceback" in line for line in err)
