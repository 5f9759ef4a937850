"""LoRA stages (reftx.integrations.peft, HEFT): merging, what each stage trains, saved runs, resume, config errors.

Tiny random llama (4 layers, width 32), 8 synthetic examples; every stage is a few steps of
reftx's own train loop.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import reftx
from reftx.integrations import peft as lora
from reftx.core.convert import from_dict
from reftx.data.encoding import Encoded
from reftx.core.errors import ConfigError
from reftx.config.schema import Experiment, LoraConfig
from reftx.train.run import train
from tests.conftest import batch, tiny_model

SPEC = {"kind": "loreft", "rank": 2, "layers": [1, 2], "positions": {"first": 2, "last": 2}}
TRAIN = {"max_steps": 3, "batch_size": 4, "lr": 5.0e-2, "checkpoint_every": 0, "log_every": 1}


def experiment(mode: str = "sequential", merge: bool = True, **lora_kw) -> Experiment:
    return from_dict(Experiment, {
        "schema": 1, "task": {"name": "persona"}, "interventions": [] if mode == "only" else [SPEC],
        "lora": {"mode": mode, "r": 4, "alpha": 8, "dropout": 0.0, "merge": merge, "max_steps": 3, "lr": 5.0e-2,
                 **lora_kw},
        "train": TRAIN})


def data(n: int = 8) -> list[Encoded]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 97, (9,), generator=g).tolist()
        out.append(Encoded(ids, [-100] * 6 + ids[6:], prompt_len=6))
    return out


def _name(n: str) -> str:  # the HF model's own parameter name, whatever wraps it
    return re.sub(r"^(adapter\.base_model\.model\.|reft\.base\.|base\.)", "", n)


def lora_state(model) -> dict[str, torch.Tensor]:
    return {_name(n): p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def intervention_state(model) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": t.detach().clone() for k, m in model.named_interventions() for n, t in m.state_dict().items()}


def base_state(model) -> dict[str, torch.Tensor]:
    return {_name(n): p.detach().clone() for n, p in model.named_parameters()
            if "lora_" not in n and "interventions" not in n}


def changed(a: dict, b: dict) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


def logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def run_stages(tmp_path: Path, exp: Experiment) -> tuple[object, dict, list[dict]]:
    """train_stages on a tiny llama; records the LoRA/intervention/base weights around each stage."""
    seen: list[dict] = []

    def recording_train(model, *args, **kw):
        before = (lora_state(model), intervention_state(model), base_state(model))
        summary = train(model, *args, **kw)
        seen.append({"before": before, "after": (lora_state(model), intervention_state(model), base_state(model))})
        return summary

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lora, "train", recording_train)
        model = lora.prepare(tiny_model("llama"), exp)
        final, summary = lora.train_stages(model, exp, data(), tmp_path, pad_id=0, seed=0, show_progress=False)
    return final, summary, seen


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run per (mode, merge), shared by the tests that read it: (experiment, run dir, final model,
    summary, weights around each stage)."""
    cache: dict[tuple[str, bool], tuple] = {}

    def get(mode: str, merge: bool = True) -> tuple:
        if (mode, merge) not in cache:
            exp = experiment(mode, merge, dropout=0.5)
            run_dir = tmp_path_factory.mktemp(f"{mode}-{merge}")
            cache[mode, merge] = (exp, run_dir, *run_stages(run_dir, exp))
        return cache[mode, merge]

    return get


def test_merge_then_attach_equals_lora_before_merge():
    ids, mask = batch()
    adapter = lora.inject(tiny_model("llama"), experiment().lora)
    with torch.no_grad():
        for n, p in adapter.named_parameters():
            if "lora_B" in n:  # B starts at zero (LoRA is the identity): make it do something
                p.normal_(0, 0.5)
    unmerged = logits(adapter, ids, mask)
    assert not torch.allclose(unmerged, logits(tiny_model("llama"), ids, mask), atol=1e-3)
    model = reftx.attach(adapter.merge_and_unload(), [SPEC])
    assert not any("lora_" in n for n, _ in model.named_parameters())
    with model.disabled():
        torch.testing.assert_close(logits(model, ids, mask), unmerged, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("merge", [True, False])
def test_sequential_lora_stage_then_interventions_with_lora_fixed(runs, merge):
    _, tmp_path, final, summary, seen = runs("sequential", merge)
    assert [s["stage"] for s in summary["stages"]] == ["lora", "interventions"]
    (l0, i0, b0), (l1, _, b1) = seen[0]["before"], seen[0]["after"]
    assert i0 == {} and changed(l0, l1) == set(l0) and not changed(b0, b1)  # stage 1: LoRA alone
    (l2, i2, b2), (l3, i3, b3) = seen[1]["before"], seen[1]["after"]
    assert changed(i2, i3) and not changed(l2, l3) and not changed(b2, b3)  # stage 2: interventions alone
    if merge:
        assert l2 == {} and isinstance(final, reftx.ReftModel)
    else:
        assert not changed(l1, l2)  # the frozen adapter is the one stage 1 trained
    ids, mask = batch()
    final.train()  # stage 2 saw LoRA as a fixed function: no LoRA dropout (an intervention-free forward)
    with final.disabled():
        torch.testing.assert_close(logits(final, ids, mask), logits(final, ids, mask), atol=0, rtol=0)
    final.eval()
    assert json.loads(json.dumps(summary))["mode"] == "sequential"
    n_lora = 4 * 4 * (2 * 32 + 32 + 16)  # 4 layers x r=4 x (q: 32 in + 32 out, v: 32 in + 16 out)
    assert summary["stages"][0]["trainable_parameters"] == n_lora
    assert summary["stages"][1]["trainable_parameters"] == final.count_parameters()
    assert summary["trainable_parameters"] == n_lora + final.count_parameters()
    assert (tmp_path / "stage1" / "metrics.jsonl").is_file() and (tmp_path / "metrics.jsonl").is_file()
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    assert (tmp_path / "intervention" / "reft_config.json").is_file()


def test_joint_trains_both(runs):
    _, _, final, summary, seen = runs("joint")
    assert [s["stage"] for s in summary["stages"]] == ["lora+interventions"]
    (l0, i0, b0), (l1, i1, b1) = seen[0]["before"], seen[0]["after"]
    assert changed(l0, l1) == set(l0) and changed(i0, i1) and not changed(b0, b1)
    assert isinstance(final, lora.LoraReft) and final.reft is not None
    assert summary["trainable_parameters"] == sum(p.numel() for p in l0.values()) + final.reft.count_parameters()


def test_only_trains_lora_alone(runs):
    _, tmp_path, final, summary, seen = runs("only")
    assert [s["stage"] for s in summary["stages"]] == ["lora"]
    (l0, i0, b0), (l1, _, b1) = seen[0]["before"], seen[0]["after"]
    assert i0 == {} and changed(l0, l1) == set(l0) and not changed(b0, b1)
    assert summary["trainable_parameters"] == sum(p.numel() for p in l0.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "lora", "metrics.jsonl"]
    ids, mask = batch()
    with final.disabled():  # LoRA off: the base model
        torch.testing.assert_close(logits(final, ids, mask), logits(tiny_model("llama"), ids, mask))


@pytest.mark.parametrize("mode,merge", [("sequential", True), ("sequential", False), ("joint", True), ("only", True)])
def test_saved_run_reloads_to_the_same_logits(runs, mode, merge):
    exp, tmp_path, final, _, _ = runs(mode, merge)
    ids, mask = batch()
    final.eval()
    expected = logits(final, ids, mask)
    assert not torch.allclose(expected, logits(tiny_model("llama"), ids, mask), atol=1e-3)
    again = lora.load_run(tiny_model("llama"), tmp_path, exp.lora)
    torch.testing.assert_close(logits(again, ids, mask), expected, atol=1e-6, rtol=1e-6)


def test_resume_restores_lora_and_interventions(tmp_path):
    """A finished joint stage resumed on a freshly initialised model loads its last checkpoint."""
    exp = experiment("joint")
    cfg = from_dict(Experiment, {**exp.to_dict(), "train": {**TRAIN, "checkpoint_every": 2}}).train
    model = lora.prepare(tiny_model("llama"), exp)
    train(model, data(), cfg, tmp_path, pad_id=0, show_progress=False)
    trained = (lora_state(model), intervention_state(model))
    fresh = lora.prepare(tiny_model("llama", seed=5), from_dict(Experiment, {**exp.to_dict(), "seed": 5}))
    assert changed(lora_state(fresh), trained[0])
    summary = train(fresh, data(), cfg, tmp_path, pad_id=0, resume=True, show_progress=False)
    assert summary["resumed"] and summary["steps"] == 3
    assert not changed(lora_state(fresh), trained[0]) and not changed(intervention_state(fresh), trained[1])


def test_plan_row_counts_lora_parameters():
    exp = experiment("sequential")
    rows = lora.planned(exp, tiny_model("llama").config)
    assert rows[0].key.startswith("lora") and rows[0].params == 4 * 4 * (2 * 32 + 32 + 16)
    assert [r.key for r in rows[1:]] == [g.key for g in reftx.plan([SPEC], tiny_model("llama").config)[1]]


@pytest.mark.parametrize("lora_cfg,interventions,field,text", [
    ({"mode": "sequental"}, [SPEC], "lora.mode", "did you mean 'sequential'"),
    ({"mode": "only"}, [SPEC], "lora.mode", "remove the interventions"),
    ({"mode": "joint"}, [], "lora.mode", "needs interventions"),
    ({"r": 0}, [SPEC], "lora.r", ">= 1"),
    ({"dropout": 1.0}, [SPEC], "lora.dropout", "0 <= dropout < 1"),
    ({"lr": 0}, [SPEC], "lora.lr", "> 0"),
    ({"target_modules": []}, [SPEC], "lora.target_modules", "non-empty"),
    ({"target_modules": "all_linear"}, [SPEC], "lora.target_modules", "all-linear"),
    ({"rank": 4}, [SPEC], "lora.rank", "unknown key"),
])
def test_bad_lora_config_names_the_field(lora_cfg, interventions, field, text):
    with pytest.raises(ConfigError) as err:
        from_dict(Experiment, {"schema": 1, "task": {"name": "persona"}, "interventions": interventions,
                               "lora": lora_cfg})
    assert err.value.field == field and text in str(err.value)


def test_unknown_target_module_names_the_field():
    with pytest.raises(ConfigError, match=r"target_modules.1: unknown module name 'v_prj' \(did you mean 'v_proj'"):
        lora.inject(tiny_model("llama"), LoraConfig(target_modules=["q_proj", "v_prj"]))


def test_runner_two_stage_run_and_eval(tmp_path):
    """reftx run on experiments/methods/heft.yaml (a tiny llama with the default tokenizer), then reftx eval."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import reftx.cli.commands as cli
    from reftx.models.loading import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    exp = Path(__file__).resolve().parents[3] / "experiments" / "methods" / "heft.yaml"
    overrides = [f"model.name={tmp_path / 'tiny'}", f"output_dir={tmp_path / 'runs'}", "lora.max_steps=2",
                 "train.max_steps=2", "train.batch_size=4", "task.n_train=8", "task.n_eval=2", "eval.show_examples=1",
                 "eval.max_new_tokens=3", "interventions.0.layers=[1, 2]"]
    assert cli.main(["run", str(exp), *overrides, "--no-progress"]) == 0
    run_dir = tmp_path / "runs" / "heft"
    assert {"lora", "intervention", "stage1", "checkpoints", "metrics.jsonl", "results.json"} <= {
        p.name for p in run_dir.iterdir()}
    results = json.loads((run_dir / "results.json").read_text())
    stages = results["train"]["stages"]
    assert [(s["stage"], s["steps"]) for s in stages] == [("lora", 2), ("interventions", 2)]
    assert results["trainable_parameters"] == sum(s["trainable_parameters"] for s in stages)
    assert cli.main(["eval", str(run_dir), "--no-progress"]) == 0
    assert json.loads((run_dir / "eval.json").read_text())["metrics"] == results["metrics"]
