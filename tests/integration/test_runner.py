"""The runner and CLI end to end on a tiny model with the default tokenizer; config errors name the field."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

import reftx.cli.commands as cli
from reftx.recipes import train as runner
from reftx.core.errors import ConfigError, DataError
from reftx.config.schema import load_experiment
from reftx.eval.task import default_data_dir

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(p for p in (REPO / "experiments").rglob("*.yaml") if "\nschema:" in "\n" + p.read_text())  # not sweep grids


def write(tmp_path, data, name="exp.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def tiny_overrides(tiny_dir, tmp_path):
    return [f"model.name={tiny_dir}", f"output_dir={tmp_path / 'runs'}", "train.max_steps=4",
            "train.checkpoint_every=2", "train.log_every=1", "train.batch_size=4", "eval.max_new_tokens=4",
            "task.n_eval=3", "eval.show_examples=2", "interventions.0.layers=[1, 2]"]


def test_run_writes_a_complete_run_dir(tiny_dir, tmp_path):
    exp = REPO / "experiments" / "quickstart.yaml"
    assert cli.main(["run", str(exp), *tiny_overrides(tiny_dir, tmp_path), "--no-progress"]) == 0
    run_dir = tmp_path / "runs" / "quickstart"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".lock", "checkpoints", "config.yaml", "intervention", "loss.png", "metrics.jsonl", "results.json", "samples.jsonl"]
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert {"loss", "lr", "tokens_per_s"} <= set(metrics[0])
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["metrics"]) == {"persona_open", "persona_close", "distinct_2"}
    assert results["n_eval"] == 3 and results["train"]["steps"] == 4
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["train"]["max_steps"] == 4 and resolved["name"] == "quickstart"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2", "step-4"]  # keep 2
    samples = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and "before" in samples[0] and "before" not in samples[2]

    # a second run of the same experiment must not touch the first: it writes quickstart-2
    runner.run(load_experiment(exp, tiny_overrides(tiny_dir, tmp_path)), show_progress=False)
    assert (tmp_path / "runs" / "quickstart-2" / "results.json").is_file()
    # reftx eval re-scores the saved interventions
    assert cli.main(["eval", str(run_dir), "--no-progress"]) == 0
    assert json.loads((run_dir / "eval.json").read_text())["metrics"] == results["metrics"]


def test_plan_prints_groups(tiny_dir, tmp_path, capsys):
    exp = REPO / "experiments" / "quickstart.yaml"
    assert cli.main(["plan", str(exp), f"model.name={tiny_dir}"]) == 0
    err = capsys.readouterr().err
    assert "L8.block_output.first+last" not in err  # tiny model: 4 layers
    assert "L1.block_output.first+last" in err and "L2.block_output.first+last" in err


def _llama(layers: int, hidden: int, inter: int, kv: int, vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=inter,
                       num_attention_heads=hidden // 128, num_key_value_heads=kv, vocab_size=vocab)


# Paper-size configs name hub models that cannot be fetched offline; they are validated against the
# published architecture (layer count and widths are all the schedule needs).
HUB_CONFIGS = {
    "huggyllama/llama-7b": lambda: _llama(32, 4096, 11008, 32, 32000),
    "meta-llama/Llama-2-7b-hf": lambda: _llama(32, 4096, 11008, 32, 32000),
    "meta-llama/Llama-2-7b-chat-hf": lambda: _llama(32, 4096, 11008, 32, 32000),
    "meta-llama/Meta-Llama-3-8B": lambda: _llama(32, 4096, 14336, 8, 128256),
    "meta-llama/Meta-Llama-3-8B-Instruct": lambda: _llama(32, 4096, 14336, 8, 128256),
    "locuslab/tofu_ft_llama2-7b": lambda: _llama(32, 4096, 11008, 32, 32000),
    # TOFU unlearning starts from stage 1's merged checkpoint (experiments/unlearning/tofu_finetune.yaml,
    # written under runs/ by a run): the default model's architecture
    "runs/tofu_finetune/model": lambda: _default_config(),
    "runs/tofu_finetune_forget10/model": lambda: _default_config(),
}


def _default_config():
    from transformers import AutoConfig

    from reftx.models.loading import default_model_path

    return AutoConfig.from_pretrained(default_model_path())


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[str(p.relative_to(REPO)) for p in EXPERIMENTS])
def test_shipped_experiments_validate(path):
    exp = load_experiment(path)
    known = HUB_CONFIGS.get(exp.model.name)
    try:
        groups = runner.validate(exp, known() if known else None)
    except ConfigError as e:  # a task on the shared data, on a machine without it (like the other real-data tests)
        if e.field == "task.data_dir" and default_data_dir() is None:
            pytest.skip("shared data not available")
        raise
    assert groups and all(g.params > 0 for g in groups)


BASE = {"schema": 1, "model": {"name": "default"}, "task": {"name": "persona"},
        "interventions": [{"kind": "loreft", "rank": 4, "layers": [2], "positions": {"last": 3}}]}


@pytest.mark.parametrize("patch, error, message", [
    ({"trian": {}}, ConfigError, "trian: unknown key 'trian' (did you mean 'train'?)"),
    ({"train": {"lr": "fast"}}, ConfigError, "train.lr: expected float"),
    ({"train": {"batch_size": 0}}, ConfigError, "train.batch_size: must be >= 1"),
    ({"interventions": [{"kind": "loreft", "layers": [30]}]}, ConfigError,
     "interventions.0.layers.0: layer 30 is out of range for a model with 30 layers"),
    ({"interventions": [{"kind": "loreft", "rank": 1000}]}, ConfigError,
     "interventions.0.rank: rank 1000 is larger than the hidden width 576"),
    ({"interventions": [{"kind": "loreft_v2"}]}, ConfigError,
     "interventions.0.kind: unknown intervention 'loreft_v2' (did you mean 'loreft'?)"),
    ({"task": {"name": "persona", "options": {"file": "/nonexistent/persona.jsonl"}}}, DataError,
     "data file not found: /nonexistent/persona.jsonl"),
    ({"task": {"name": "persna"}}, ConfigError, "task.name: unknown task 'persna' (did you mean 'persona'?)"),
    ({"task": {"name": "persona", "options": {"fiel": "x"}}}, ConfigError,
     "task.options.fiel: unknown key 'fiel' (did you mean 'file'?)"),
    ({"task": {"name": "persona", "eval_split": "test"}}, ConfigError,
     "task.eval_split: unknown split of task 'persona' 'test'"),
    ({"schema": 2}, ConfigError, "schema: unsupported schema version 2"),
])
def test_broken_configs_name_the_field(tmp_path, patch, error, message):
    with pytest.raises(error) as e:
        runner.validate(load_experiment(write(tmp_path, {**BASE, **patch})))
    assert message in str(e.value)


def test_bad_data_row_reports_file_and_line(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "a", "response": "b", "split": "train"}\n\n{"prompt": "c", "split": "eval"}\n')
    exp = {**BASE, "task": {"name": "persona", "options": {"file": str(data)}}}
    with pytest.raises(DataError, match=rf"{data}:3: missing or non-string field\(s\) response"):
        runner.validate(load_experiment(write(tmp_path, exp)))
    data.write_text('{"prompt": "a", "response": "b", "split": "train"}\n{"prompt": oops}\n')
    with pytest.raises(DataError, match=rf"{data}:2: invalid JSON"):
        runner.validate(load_experiment(write(tmp_path, exp)))


def test_validate_cli_reports_each_file(tmp_path, capsys):
    good = write(tmp_path, BASE, "good.yaml")
    bad = write(tmp_path, {**BASE, "seed": "x"}, "bad.yaml")
    assert cli.main(["validate", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "ok" in err and "seed: expected int" in err


def test_records_are_plotted(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    rows = [{"step": s, "loss": 1.0 / s, "rec/L1.block_output.last_prompt/gate": 0.1 * s, "obj/reward": 0.1 * s,
             "obj/kl": 0.01} for s in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert runner.plot_loss(run_dir) == run_dir / "loss.png"
    for name in ("loss", "records", "objective"):
        assert (run_dir / f"{name}.png").stat().st_size > 1000


def test_progress_lines_when_output_is_not_a_terminal(tiny_dir, tmp_path, capsys):
    """Piped to a file (nohup, slurm, CI), the rich bar draws nothing: training prints a plain line
    at every logged step instead, and the command ends by naming the folder it wrote."""
    exp = REPO / "experiments" / "quickstart.yaml"
    assert cli.main(["run", str(exp), *tiny_overrides(tiny_dir, tmp_path), "train.log_every=2"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("train step ")]
    assert [ln.split()[2] for ln in lines] == ["2/4", "4/4"] and all(" tok/s" in ln for ln in lines)
    assert re.fullmatch(r"\d+s", lines[0].split()[-1]) and lines[0].split()[-2] == "eta" and lines[1].endswith("eta 0s")
    from reftx.train.run import eta_text

    assert [eta_text(x) for x in (0.4, 59.6, 185, 7620)] == ["0s", "1m00s", "3m05s", "2h07m"]
    assert [ln for ln in err.splitlines() if ln.startswith(("before ", "eval "))] == ["before 2/2", "eval 3/3"]
    assert f"wrote {tmp_path / 'runs' / 'quickstart'}" in " ".join(err.split())


def test_validate_offline_reports_prerequisites_as_notices(capsys):
    """On a fresh machine `reftx validate` checks what it can and exits 0: a paper-size model that
    is not cached is checked against its published architecture, a model another shipped experiment
    writes is a named prerequisite; neither is an error."""
    paper = REPO / "experiments" / "unlearning" / "paper_tofu_grun_llama2_7b.yaml"
    stage2 = REPO / "experiments" / "unlearning" / "tofu_grun.yaml"
    assert cli.main(["validate", str(paper), str(stage2)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "notice: locuslab/tofu_ft_llama2-7b is not cached: checked against its published architecture" in err
    assert "notice: needs runs/tofu_finetune/model: run `reftx run experiments/unlearning/tofu_finetune.yaml` first" in err
    assert "error" not in err
    # the published architecture plans exactly as the Hub's config (layer count and widths)
    from reftx.models.loading import published_config

    for name, make in HUB_CONFIGS.items():
        if name.startswith("runs/"):
            continue
        got, want = published_config(name), make()
        assert (got.num_hidden_layers, got.hidden_size, got.intermediate_size, got.num_key_value_heads,
                got.vocab_size) == (want.num_hidden_layers, want.hidden_size, want.intermediate_size,
                                    want.num_key_value_heads, want.vocab_size), name


def test_a_run_prints_only_the_changed_config_and_its_metrics_beside_the_baseline(tiny_dir, tmp_path, capsys):
    """The console shows the fields set away from their defaults (config.yaml keeps all of them), and
    the results table puts `reftx baseline`'s metrics (same config hash) beside the trained model's."""
    from reftx.config.defaults import changed
    from reftx.config.schema import load_experiment

    exp = REPO / "experiments" / "quickstart.yaml"
    flags = tiny_overrides(tiny_dir, tmp_path)
    assert cli.main(["baseline", str(exp), *flags, "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["run", str(exp), *flags, "--no-progress"]) == 0
    err = capsys.readouterr().err
    run_dir = tmp_path / "runs" / "quickstart"
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    shown = changed(load_experiment(exp, flags))
    assert "train" in shown and "lr" in shown["train"] and "weight_decay" not in shown["train"]
    assert "weight_decay: 0.0" not in err and resolved["train"]["weight_decay"] == 0.0
    assert f"lr: {shown['train']['lr']}" in err and "fields set away from their defaults" in err
    base = json.loads((run_dir / "baseline" / "results.json").read_text())["metrics"]
    trained = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert "base (reftx baseline)" in err or "base (reftx" in err
    for k in trained:
        row = next(ln for ln in err.splitlines() if ln.strip("│ ").startswith(k + " "))
        assert f"{trained[k]:.4f}" in row and f"{base[k]:.4f}" in row
