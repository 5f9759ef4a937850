"""TRL's SFT, DPO and GRPO trainers train reftx interventions (reftx.integrations.trl).

For each trainer's batch format: the loss falls (or the rewarded behaviour grows), the base model's
weights are bit-for-bit unchanged, and the edited positions are exactly the hand-computed prompt
positions of every row (never a completion, chosen or rejected token)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import reftx
import reftx.engine.hooks as H
from reftx.core.errors import ConfigError, ReftError
from tests.conftest import tiny_model

trl = pytest.importorskip("trl")  # an extra: reftx[trl]; scripts/test.sh installs it
from datasets import Dataset  # noqa: E402

SPEC = [{"kind": "loreft", "rank": 4, "layers": [1], "positions": {"first": 2, "last": 2}}]
LONG, SHORT = "w1 w2 w3 w4 w5", "w6 w7 w8"  # prompts of 5 and 3 tokens


def hand_layout(prompt_len: int, start: int) -> list[int]:
    """first 2 + last 2 of a prompt at [start, start + prompt_len); a prompt shorter than 4 splits
    as first len//2, last the rest (reftx.engine.positions.part_rows)."""
    if prompt_len >= 4:
        first, last = 2, 2
    else:
        first = prompt_len // 2
        last = min(prompt_len - first, 2)
    end = start + prompt_len
    return list(range(start, start + first)) + list(range(end - last, end))


@pytest.fixture
def tok():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(93)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


class Spy:
    """Every forward's input ids (the base's pre-hook) and the rows edited in it."""

    def __init__(self, monkeypatch, base):
        self.calls: list[dict] = []
        original = H.ForwardState.rows

        def rows(state, spec, parts):
            b, p = original(state, spec, parts)
            if self.handle is not None:
                self.calls[-1]["edited"].extend(zip(b.tolist(), p.tolist()))
            return b, p

        def pre(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.calls.append({"ids": ids.detach().clone(), "mask": kwargs.get("attention_mask"), "edited": []})

        monkeypatch.setattr(H.ForwardState, "rows", rows)
        self.handle = base.register_forward_pre_hook(pre, with_kwargs=True)

    def stop(self):
        self.handle.remove()
        self.handle = None

    def teacher_forced(self):
        return [c for c in self.calls if c["edited"] and c["ids"].shape[1] > 1 and c["mask"] is not None]


def expected_rows(ids: torch.Tensor, mask: torch.Tensor, prompt_len_of_first_token: dict[int, int]):
    rows = set()
    for b in range(ids.shape[0]):
        start = int(mask[b].bool().int().argmax())
        length = prompt_len_of_first_token[int(ids[b, start])]
        rows |= {(b, p) for p in hand_layout(length, start)}
    return rows


def base_snapshot(base):
    return {n: p.detach().clone() for n, p in base.named_parameters()}


def assert_base_unchanged(base, before):
    after = {n: p for n, p in base.named_parameters() if not n.startswith("reftx_interventions")}
    assert after.keys() == before.keys()
    for n, p in after.items():
        assert torch.equal(p, before[n]), n


def common(tmp_path, batch=2, **kw):
    return dict(output_dir=str(tmp_path), per_device_train_batch_size=batch, logging_steps=1, save_strategy="no",
                report_to="none", use_cpu=True, bf16=False, seed=0, **kw)


def completion_nll(reft, tok, rows):
    total = 0.0
    for r in rows:
        p, c = tok(r["prompt"])["input_ids"], tok(r["completion"])["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + c])
        labels = torch.tensor([[-100] * len(p) + c])
        with torch.no_grad():
            total += float(reft(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss)
    return total / len(rows)


def test_sft_trains_only_the_interventions_on_prompt_positions(tmp_path, tok, monkeypatch):
    from reftx.integrations.trl import ReftSFTTrainer

    base = tiny_model("llama")
    before = base_snapshot(base)
    reft = reftx.attach(base, SPEC)
    rows = [{"prompt": LONG, "completion": " w10 w11"}, {"prompt": SHORT, "completion": " w12 w13 w14"}]
    nll0 = completion_nll(reft, tok, rows)
    spy = Spy(monkeypatch, base)
    args = trl.SFTConfig(**common(tmp_path, max_steps=30, learning_rate=5e-2))
    trainer = ReftSFTTrainer(reft, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.train()
    spy.stop()
    assert completion_nll(reft, tok, rows) < nll0 - 0.2  # 4.49 -> 4.24 measured
    assert_base_unchanged(base, before)
    calls = spy.teacher_forced()
    assert len(calls) == 30  # one forward per step, each with both rows (right padding: start 0)
    for c in calls:
        assert set(c["edited"]) == expected_rows(c["ids"], c["mask"], {5: 5, 10: 3})
    again = reftx.ReftModel.from_pretrained(tiny_model("llama"), reft.save_pretrained(tmp_path / "saved"))
    ids = torch.tensor([[5, 6, 7, 8, 9, 14]])
    assert torch.equal(again(input_ids=ids).logits, reft(input_ids=ids).logits)


def test_dpo_edits_the_prompt_of_chosen_and_rejected_and_its_reference_is_the_base(tmp_path, tok, monkeypatch):
    from reftx.integrations.trl import ReftDPOTrainer

    base = tiny_model("llama")
    before = base_snapshot(base)
    reft = reftx.attach(base, SPEC)
    rows = [{"prompt": LONG, "chosen": " w10 w11", "rejected": " w20"},
            {"prompt": SHORT, "chosen": " w12 w13 w14", "rejected": " w30 w31"}]
    spy = Spy(monkeypatch, base)
    args = trl.DPOConfig(**common(tmp_path, max_steps=12, learning_rate=5e-2))
    assert not args.precompute_ref_log_probs
    trainer = ReftDPOTrainer(reft, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    assert not [c for c in spy.calls if c["edited"]]  # the precomputed reference ran with edits off
    # the reference log-probs are the plain base model's (no second copy of the base was loaded)
    plain = tiny_model("llama")
    for r, ref_chosen in zip(rows, trainer.train_dataset["ref_chosen_logps"]):
        p, c = tok(r["prompt"])["input_ids"], tok(r["chosen"])["input_ids"] + [tok.eos_token_id]
        logits = plain(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:-1].log_softmax(-1)
        assert ref_chosen == pytest.approx(float(logits.gather(1, torch.tensor(c)[:, None]).sum()), abs=1e-4)
    trainer.train()
    spy.stop()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] - 0.03  # 0.685 -> 0.644 measured
    assert_base_unchanged(base, before)
    calls = spy.teacher_forced()
    assert len(calls) == 12
    for c in calls:  # rows: chosen of both examples, then rejected of both
        assert c["ids"].shape[0] == 4
        assert set(c["edited"]) == expected_rows(c["ids"], c["mask"], {5: 5, 10: 3})


def even_share(reft, tok, prompts):
    """Mean probability that the first completion token has an even id (the GRPO reward below)."""
    out = []
    for prompt in prompts:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        with torch.no_grad():
            probs = reft(input_ids=ids).logits[0, -1].softmax(-1)
        out.append(float(probs[0::2].sum()))
    return sum(out) / len(out)


def test_grpo_samples_with_the_interventions_and_edits_left_padded_prompts(tmp_path, tok, monkeypatch):
    from reftx.integrations.trl import ReftGRPOTrainer

    def reward(completions, completion_ids, **kw):
        return [float(ids[0] % 2 == 0) if ids else 0.0 for ids in completion_ids]

    base = tiny_model("llama")
    with torch.no_grad():  # a random model's next-token distribution is near uniform: sharpen it, so
        base.lm_head.weight.mul_(20)  # that a hidden-state edit moves it within a few steps
    before = base_snapshot(base)
    reft = reftx.attach(base, SPEC)
    share0 = even_share(reft, tok, [LONG, SHORT])
    spy = Spy(monkeypatch, base)
    args = trl.GRPOConfig(**common(tmp_path, batch=8, max_steps=15, learning_rate=5e-2), num_generations=4,
                          max_completion_length=3, beta=0.05)
    trainer = ReftGRPOTrainer(reft, reward_funcs=reward, args=args, processing_class=tok,
                              train_dataset=Dataset.from_list([{"prompt": LONG}, {"prompt": SHORT}] * 2))
    trainer.train()
    spy.stop()
    share = even_share(reft, tok, [LONG, SHORT])
    assert share > share0 + 0.3  # 0.46 -> 0.96 measured
    assert_base_unchanged(base, before)
    kls = [h["kl"] for h in trainer.state.log_history if "kl" in h]
    assert kls and max(kls) > 0  # the reference (interventions off) differs from the policy
    prompt_forwards = [c for c in spy.calls if c["edited"] and c["mask"] is not None]
    assert prompt_forwards  # sampling prefill and teacher-forced scoring
    for c in prompt_forwards:  # prompts are left-padded to 5 tokens: the short one starts at 2
        assert set(c["edited"]) == expected_rows(c["ids"], c["mask"], {5: 5, 10: 3})
    decode = [c for c in spy.calls if c["ids"].shape[1] == 1]
    assert decode and not any(c["edited"] for c in decode)  # no prompt group edits a generated token


def test_refuses_what_it_cannot_place(tmp_path, tok):
    from reftx.integrations.trl import ReftSFTTrainer

    reft = reftx.attach(tiny_model("llama"), SPEC)
    rows = Dataset.from_list([{"prompt": LONG, "completion": " w10"}])
    with pytest.raises(ConfigError, match="args.packing"):
        ReftSFTTrainer(reft, args=trl.SFTConfig(**common(tmp_path), packing=True), train_dataset=rows,
                       processing_class=tok)
    with pytest.raises(ReftError, match="trains a reftx.ReftModel"):
        ReftSFTTrainer(reft.base, args=trl.SFTConfig(**common(tmp_path)), train_dataset=rows, processing_class=tok)
    base = reft.detach()
    assert "reftx_interventions" not in dict(base.named_children()) and "generate" not in base.__dict__


def test_checkpoints_hold_the_interventions_and_resume_loads_them(tmp_path, tok):
    from reftx.integrations.trl import ReftSFTTrainer

    rows = Dataset.from_list([{"prompt": LONG, "completion": " w10 w11"}, {"prompt": SHORT, "completion": " w12"}])

    def run(out, resume=None):
        reft = reftx.attach(tiny_model("llama"), SPEC)
        args = trl.SFTConfig(**{**common(out, max_steps=6, learning_rate=5e-2), "save_strategy": "steps"},
                             save_steps=3)
        trainer = ReftSFTTrainer(reft, args=args, train_dataset=rows, processing_class=tok)
        trainer.train(resume_from_checkpoint=resume)
        return reft

    whole = run(tmp_path / "a")
    saved = sorted(p.name for p in (tmp_path / "a" / "checkpoint-3").iterdir())
    assert "interventions.safetensors" in saved and "reft_config.json" in saved
    assert not [n for n in saved if n.startswith("model") or n.endswith(".bin") and n != "training_args.bin"]
    resumed = run(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-3"))
    for (k, a), (_, b) in zip(whole.named_interventions(), resumed.named_interventions()):
        for (n, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=f"{k}.{n}")


def test_the_primitives_losses_join_the_trainers_loss(tmp_path, tok, monkeypatch):
    from reftx.integrations.trl import ReftSFTTrainer

    reft = reftx.attach(tiny_model("llama"), SPEC)
    rows = Dataset.from_list([{"prompt": LONG, "completion": " w10 w11"}])
    trainer = ReftSFTTrainer(reft, args=trl.SFTConfig(**common(tmp_path)), train_dataset=rows,
                             processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    plain = float(trainer.compute_loss(trainer.model, dict(batch)))
    probe = SimpleNamespace(loss=lambda: {"bound_hinge": torch.tensor(1.5)}, scale=lambda: torch.tensor(2.0), group=None)
    (_, mod), *_ = reft.named_interventions()
    monkeypatch.setattr(mod, "modifiers", lambda: [probe])  # one modifier: a parameter loss and a loss scale
    assert float(trainer.compute_loss(trainer.model, dict(batch))) == pytest.approx((plain + 1.5) * 2.0, abs=1e-5)


def readme_trl_examples() -> list[str]:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Training with TRL", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)



@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_stays_on_and_trains_as_without_it(tmp_path, tok, reentrant):
    """TRL's configs switch gradient checkpointing on by default; the adapter keeps it, and an edit
    inside the checkpointed layer (mlp_output: its hook runs again in the recomputation) trains to
    the weights it reaches without checkpointing."""
    from reftx.integrations.trl import ReftSFTTrainer

    spec = [{"kind": "loreft", "rank": 4, "layers": [1, 2], "component": "mlp_output",
             "positions": {"first": 2, "last": 2}}]
    rows = Dataset.from_list([{"prompt": LONG, "completion": " w10 w11"}, {"prompt": SHORT, "completion": " w12"}])
    weights = []
    for on in (True, False):
        reft = reftx.attach(tiny_model("llama"), spec)
        args = trl.SFTConfig(**common(tmp_path / str(on), max_steps=4, learning_rate=5e-2), activation_checkpointing=on,
                             activation_checkpointing_kwargs={"use_reentrant": reentrant})
        trainer = ReftSFTTrainer(reft, args=args, train_dataset=rows, processing_class=tok)
        trainer.train()
        assert reft.base.is_activation_checkpointing is on
        weights.append({n: p.detach().clone() for n, p in reft.interventions.named_parameters()})
    start = dict(reftx.attach(tiny_model("llama"), spec).interventions.named_parameters())
    for n, p in weights[1].items():
        assert not torch.equal(p, start[n])  # it trained
        assert float((weights[0][n] - p).norm()) <= 1e-6 * float(p.norm()), n


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1, 2], ids=["sft", "dpo", "grpo"])
def test_the_readme_trl_examples_run_on_the_default_model(index, tmp_path, monkeypatch, capsys, request):
    from tests.integration.readme_env import Env
    from tests.integration.test_readme import trl_example

    code = readme_trl_examples()
    assert len(code) == 3
    env = Env(tmp_path, monkeypatch, capsys, request, None)  # the real default model
    _, changed, generated = trl_example(env, code[index], f"README.md TRL example {index}")
    # GRPO: sampled through the exact generate (equal rewards would leave weights as they were)
    assert generated if index == 2 else changed
