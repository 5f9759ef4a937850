"""ReftModel behaviour on tiny random models: generation, hooks hygiene, save/load, training loops."""
from __future__ import annotations

import json

import pytest
import torch

import reftx
from tests.conftest import answer_data, batch, learnable_model, perturb, tiny_model, torch_train


PROMPT = [{"kind": "loreft", "rank": 4, "layers": [0, 2], "positions": {"first": 2, "last": 2}}]


def test_detach_and_foreign_hooks():
    base = tiny_model("llama")
    calls, explode = [], []

    def foreign_hook(*args):
        calls.append(1)
        if explode:
            explode.pop()
            raise RuntimeError("boom inside layer 1")

    foreign = base.model.layers[1].register_forward_hook(foreign_hook)
    before = {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in base.named_modules()}
    ids, mask = batch()
    ref = base(input_ids=ids, attention_mask=mask).logits
    model = perturb(reftx.attach(base, PROMPT))
    edited = model(input_ids=ids, attention_mask=mask).logits
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(input_ids=ids, attention_mask=mask[:, :5])  # bad input, rejected before any layer runs
    explode.append(1)
    with pytest.raises(RuntimeError, match="boom"):
        model(input_ids=ids, attention_mask=mask)  # an exception in the middle of the forward
    assert model._hooks._state is None  # neither failure left state behind
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, edited)
    assert model.detach() is base
    after = {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in base.named_modules()}
    assert after == before  # the foreign hook survived; ours are gone
    assert torch.equal(base(input_ids=ids, attention_mask=mask).logits, ref)
    assert all(p.requires_grad for p in base.parameters())
    assert len(calls) == 5
    foreign.remove()


def test_attach_twice_is_an_error():
    base = tiny_model("llama")
    first = reftx.attach(base, PROMPT)  # kept alive: a dropped wrapper releases the base (test_generation)
    with pytest.raises(reftx.ReftError, match="already has reftx interventions"):
        reftx.attach(base, PROMPT)
    assert first.detach() is base


@pytest.mark.parametrize("dtype, spec_dtype", [(torch.float32, "float32"), (torch.bfloat16, "float32"),
                                              (torch.bfloat16, "auto")])
def test_save_load_bit_for_bit(tmp_path, dtype, spec_dtype):
    base = tiny_model("llama").to(dtype)
    model = perturb(reftx.attach(base, [{**PROMPT[0], "dtype": spec_dtype, "activation": "tanh", "dropout": 0.1}]))
    model.eval()
    ids, mask = batch()
    ref = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "reft_config.json").read_text())
    assert meta["format_version"] == 1
    assert meta["interventions"][0]["activation"] == "tanh" and meta["interventions"][0]["dropout"] == 0.1
    assert meta["interventions"][0]["rank"] == 4 and meta["interventions"][0]["dtype"] == spec_dtype
    model.detach()
    again = reftx.ReftModel.from_pretrained(base, tmp_path).eval()
    p = next(again.interventions.parameters())
    assert p.dtype == (dtype if spec_dtype == "auto" else torch.float32)
    assert torch.equal(again(input_ids=ids, attention_mask=mask).logits, ref)


def test_from_pretrained_checks_model_type(tmp_path):
    model = reftx.attach(tiny_model("llama"), PROMPT)
    model.save_pretrained(tmp_path)
    with pytest.raises(reftx.ConfigError, match="trained on model_type 'llama', not 'gpt2'"):
        reftx.ReftModel.from_pretrained(tiny_model("gpt2"), tmp_path)


def test_save_writes_no_pickle(tmp_path):
    reftx.attach(tiny_model("llama"), PROMPT).save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interventions.safetensors", "reft_config.json"]


def test_plain_torch_loop_learns():
    model = reftx.attach(learnable_model(), [{"kind": "loreft", "rank": 4, "layers": "all", "positions": "all"}])
    ids, mask, labels = answer_data()
    losses = torch_train(model, 30, input_ids=ids, attention_mask=mask, labels=labels)
    assert losses[-1] < 0.1 * losses[0]


def test_hf_trainer_learns(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = reftx.attach(learnable_model(), [{"kind": "loreft", "rank": 4, "layers": "all", "positions": "all"}])
    ids, mask, labels = answer_data()
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=30,
                             learning_rate=2e-2, logging_steps=1, save_strategy="no", report_to=[],
                             use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.1 * losses[0]
    assert all(not p.requires_grad for p in model.base.parameters())
