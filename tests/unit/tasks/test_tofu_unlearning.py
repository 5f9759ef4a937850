"""TOFU end to end on the tiny model: stage 1 (tofu_qa + merged checkpoint, `reftx tofu-finetune`),
`reftx baseline`, and a few unlearning steps of GRUN / LoReFT / LoRA with every TOFU metric."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

import reftx.tasks  # noqa: F401  (registers the zoo)
from reftx.recipes import train as runner
from reftx.cli.commands import main as cli_main
from reftx.config.hashing import config_hash
from reftx.core.convert import load_yaml
from reftx.core.errors import ConfigError
from reftx.config.schema import load_experiment
from reftx.recipes.tofu_stage1 import export_merged
from reftx.eval.task import default_data_dir, get_task
from reftx.tasks.__main__ import main as tasks_main

REPO = Path(__file__).resolve().parents[3]
UNLEARN = REPO / "experiments" / "unlearning"
DATA = default_data_dir()
pytestmark = pytest.mark.skipif(DATA is None or not (DATA / "tofu").is_dir(), reason="shared TOFU data not available")
SETS = ("forget", "retain", "real_authors", "world_facts")


def test_tofu_qa_authors():
    def authors(**opts):
        return sorted({e.meta["author"] for e in get_task("tofu_qa", opts).load("train")})

    assert authors(retain_authors=4) == [0, 1, 2, 3, 198, 199]
    assert authors(retain_authors=4, retain_only=True) == [0, 1, 2, 3]
    assert authors(retain_authors=1, forget="forget05") == [0, *range(190, 200)]
    assert len(get_task("tofu_qa").load("train")) == 4000
    assert len(get_task("tofu_qa", {"retain_only": True, "forget": "forget10"}).load("train")) == 3600
    with pytest.raises(ConfigError, match="retain_authors"):
        get_task("tofu_qa", {"retain_authors": 0})


def test_stage1_merged_checkpoint(tiny_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from reftx.integrations.peft import load_run

    over = [f"model.name={tiny_dir}", f"output_dir={tmp_path}", "lora.max_steps=2", "task.n_eval=2",
            "eval.max_new_tokens=4", "eval.show_examples=0", "task.options.retain_authors=1"]
    assert cli_main(["tofu-finetune", str(UNLEARN / "tofu_finetune.yaml"), *over]) == 0
    run_dir = tmp_path / "tofu_finetune"
    assert f"merged model: {run_dir / 'model'}" in capsys.readouterr().err
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "model")  # an ordinary HF checkpoint
    exp = load_experiment(UNLEARN / "tofu_finetune.yaml", over)
    adapter = load_run(runner.load_base(exp)[0], run_dir, exp.lora)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert not torch.equal(merged(ids).logits, AutoModelForCausalLM.from_pretrained(tiny_dir)(ids).logits)
    torch.testing.assert_close(merged(ids).logits, adapter(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    assert export_merged(run_dir, exp) == run_dir / "model"
    assert cli_main(["tofu-finetune", str(UNLEARN / "tofu_grun.yaml")]) == 2
    assert "lora.mode: tofu_finetune exports a merged LoRA adapter" in capsys.readouterr().err
    # the old spelling says that the command moved, then runs it (same exit status)
    assert tasks_main(["tofu-finetune", str(UNLEARN / "tofu_grun.yaml")]) == 2
    err = capsys.readouterr().err
    assert "`python -m reftx.tasks tofu-finetune` is now `reftx tofu-finetune`" in err
    assert "lora.mode: tofu_finetune exports a merged LoRA adapter" in err
    assert tasks_main(["no-such-command", "x"]) == 2 and "reftx tofu-finetune CONFIG" in capsys.readouterr().err


def tiny(tiny_dir, tmp_path, *extra):
    return [f"model.name={tiny_dir}", f"output_dir={tmp_path}", "train.max_steps=2", "train.batch_size=4",
            "task.n_train=8", "task.options.n_utility=2", "task.options.n_forget_eval=4",
            f"task.options.retain_model={tiny_dir}", "eval.max_new_tokens=4", *extra]


def test_evaluate_command(tiny_dir, tmp_path):
    assert cli_main(["baseline", str(UNLEARN / "tofu_grun.yaml"), *tiny(tiny_dir, tmp_path, "name=stage1")]) == 0
    results = json.loads((tmp_path / "stage1" / "baseline" / "results.json").read_text())
    assert results["n_eval"] == 10 and results["trainable_parameters"] == 0
    assert results["metrics"]["forget_quality"] == pytest.approx(1.0)  # the retain model is this model
    assert not any(k.startswith("gate_") for k in results["metrics"])
    samples = (tmp_path / "stage1" / "baseline" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 10
    assert set(json.loads(samples[0])) == {"id", "prompt", "gold", "after", "metrics", "aggregates"}
    first = json.loads(samples[0])  # a forget question: its per-example values, keyed as in results.json
    assert set(first["metrics"]) == {"rougeL_recall_forget", "prob_forget", "truth_ratio_forget"}
    assert first["aggregates"] == {"truth_ratio_forget": "truth_ratio_closer_to_1"}
    # the folder describes itself: its config.yaml has the hash of results.json
    assert config_hash(load_yaml(tmp_path / "stage1" / "baseline" / "config.yaml")) == results["config_hash"]
    # scripts/tofu_rescore.py recomputes ROUGE-L and MU from samples.jsonl: with the same scorer, the same values
    rescore = runpy.run_path(str(REPO / "scripts" / "tofu_rescore.py"))["rescore"]
    again = rescore(tmp_path / "stage1" / "baseline")
    assert again == pytest.approx(results["metrics"], rel=1e-12)
    assert json.loads((tmp_path / "stage1" / "baseline" / "rescored.json").read_text())["rescored_from"] == "samples.jsonl"


@pytest.mark.parametrize("config, objective, gated", [
    ("tofu_grun.yaml", "npo", True), ("tofu_grun.yaml", "idk", True), ("tofu_loreft.yaml", "gd", False),
    ("tofu_lora.yaml", "npo", False),
])
def test_unlearning_runs(tiny_dir, tmp_path, config, objective, gated):
    extra = [f"train.objective={objective}", "name=run", "lora.max_steps=2"] if "lora" in config else \
        [f"train.objective={objective}", "name=run", "interventions.0.layers=[1, 2, 3]"]
    if objective == "idk":
        extra.append("task.options.idk=true")
    exp = load_experiment(UNLEARN / config, tiny(tiny_dir, tmp_path, *extra))
    results = runner.run(exp, show_progress=False)
    m = results["metrics"]
    for s in SETS:
        assert {f"rougeL_recall_{s}", f"prob_{s}", f"truth_ratio_{s}"} <= set(m)
        assert (f"gate_{s}" in m) == gated
        if gated:
            assert 0.0 < m[f"gate_{s}"] < 1.0
    assert 0.0 <= m["forget_quality"] <= 1.0 and 0.0 <= m["model_utility"] <= 1.0
    assert results["train"]["steps"] == 2 and results["n_eval"] == 10
