"""methods/README.md's worked example: the snippet is methods/topk_reft.py verbatim, and the
example is a working primitive (registered, planned, trains, saves and loads)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import reftx
from reftx.core.intervention import Context, make_intervention
from tests.conftest import answer_data, learnable_model, tiny_config, tiny_model, torch_train

METHODS = Path(__file__).resolve().parents[3] / "methods"
SPEC = {"kind": "topk_reft", "rank": 4, "k": 2, "layers": [1, 2], "positions": {"first": 2, "last": 2}}


def test_readme_shows_the_file_verbatim():
    readme = (METHODS / "README.md").read_text()
    m = re.search(r"<!-- example: methods/topk_reft\.py -->\n```python\n(.*?)```", readme, re.S)
    assert m, "README lost its example block"
    code = (METHODS / "topk_reft.py").read_text()
    assert m.group(1) == code
    assert len(code.splitlines()) <= 40


def test_registered_and_planned():
    assert "topk_reft" in reftx.available_interventions()
    _, groups = reftx.plan([SPEC], tiny_config("llama"))
    keys = [g.key for g in groups]
    assert keys == ["L1.block_output.first", "L1.block_output.last", "L2.block_output.first", "L2.block_output.last"]
    model = reftx.attach(tiny_model("llama"), [SPEC])
    assert [g.key for g in model.plan()] == keys
    # per group: R (d x r) + W (r x d) + b (r) = 32*4 + 4*32 + 4
    assert [g.params for g in model.plan()] == [260] * 4


def test_config_error_names_the_field():
    with pytest.raises(reftx.ConfigError, match=r"interventions\.0\.k: must be in \[1, rank=4\], got 9"):
        reftx.attach(tiny_model("llama"), [{**SPEC, "k": 9}])


def test_reference_values():
    # R = I (d = r = 3), W = 0, b = [3, -1, 0.5]: z = b − h = [2, −3, 0.5] for h = [1, 2, 0];
    # k = 2 keeps the two largest |z|: [2, −3, 0] -> h' = h + z_kept = [3, −1, 0]
    mod = make_intervention("topk_reft", {"rank": 3, "k": 2}, 3)
    with torch.no_grad():
        mod.basis.weight.copy_(torch.eye(3))
        mod.source.weight.zero_()
        mod.source.bias.copy_(torch.tensor([3.0, -1.0, 0.5]))
    ctx = Context(torch.zeros(1, dtype=torch.long), 1)
    out = mod(torch.tensor([[1.0, 2.0, 0.0]]), ctx)
    torch.testing.assert_close(out, torch.tensor([[3.0, -1.0, 0.0]]), rtol=0, atol=1e-6)
    # kept share of the edit's norm: sqrt(4 + 9) / sqrt(4 + 9 + 0.25)
    torch.testing.assert_close(ctx.records["/kept_norm_share"][0], torch.tensor([(13 / 13.25) ** 0.5]))


def test_trains_saves_and_loads(tmp_path):
    base = learnable_model()  # a random tiny head caps logits near 0.6 (docs/footguns.md)
    model = reftx.attach(base, [{**SPEC, "positions": "all"}])
    ids, mask, labels = answer_data()
    losses = torch_train(model, 10, input_ids=ids, attention_mask=mask, labels=labels)
    assert losses[-1] < 0.5 * losses[0]
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert "L1.block_output.all/kept_norm_share" in out["records"]
    model.eval()
    ref = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    model.detach()
    again = reftx.ReftModel.from_pretrained(base, tmp_path)
    assert torch.equal(again(input_ids=ids, attention_mask=mask).logits, ref)
    assert again.intervention("L1.block_output.all").config.k == 2


def test_worked_examples_of_a_metric_a_task_and_an_objective_run(tiny_dir, tmp_path):
    """The README's metric, task and objective blocks, written to one module and named in an
    experiment's ``imports:``, register and run end to end; each is checked against hand values."""
    import yaml
    import torch.nn.functional as F

    from reftx.config.schema import load_experiment
    from reftx.eval.metrics import get_metric
    from reftx.train.objectives.common import OBJECTIVES, objective_options
    from reftx.recipes.registry import run_experiment
    from reftx.data.examples import Example
    from reftx.eval.task import get_task

    readme = (METHODS / "README.md").read_text()
    blocks = dict(re.findall(r"<!-- example-run: (\w+) -->\n```python\n(.*?)```", readme, re.S))
    assert sorted(blocks) == ["metric", "objective", "task"]
    module = tmp_path / "shout_example.py"
    module.write_text("\n\n".join(blocks[k] for k in ("metric", "task", "objective")))
    exp_file = tmp_path / "shout.yaml"
    exp_file.write_text(yaml.safe_dump({
        "schema": 1, "name": "shout", "output_dir": str(tmp_path / "runs"), "imports": [str(module)],
        "model": {"name": str(tiny_dir), "chat_template": False}, "task": {"name": "shout", "options": {"n": 4}},
        "interventions": [{"kind": "loreft", "rank": 2, "layers": [1], "positions": {"last": 1}}],
        "train": {"objective": "smoothed_nll", "objective_options": {"eps": 0.05}, "max_steps": 2, "batch_size": 2},
        "eval": {"max_new_tokens": 3, "batch_size": 4}}))
    exp = load_experiment(exp_file)  # imports the module: the three register

    # the metric: 1 for "APPLE" and "A1", 0 for "Apple" and "123" (no letters)
    m = get_metric("all_caps")
    assert [m.compute(p, Example("x")) for p in ("APPLE", "A1", "Apple", "123")] == [1.0, 1.0, 0.0, 0.0]
    # the task reports it: mean over its examples = 2/4
    task = get_task("shout", {"n": 4})
    examples = task.examples("eval")
    assert [e.target for e in examples] == [" APPLE", " RIVER", " STONE", " CLOUD"]
    assert task.score(["APPLE", "river", "STONE", "cloud"], examples) == {"all_caps": 0.5}
    # the objective: eps = 0 is the plain mean token NLL of the response (the nll objective)
    model = reftx.attach(tiny_model("llama"), [{"kind": "loreft", "rank": 2, "layers": [1]}])
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    labels = ids.clone()
    labels[:, :2] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    smooth = OBJECTIVES.get("smoothed_nll")
    plain, _, _ = OBJECTIVES.get("nll")(model, batch, None)
    assert smooth(model, batch, objective_options("smoothed_nll", {"eps": 0.0}))[0].item() == \
        pytest.approx(plain.item(), abs=1e-6)
    logits = model(**batch).logits[:, :-1].float()
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100,
                               label_smoothing=0.1)
    assert smooth(model, batch, objective_options("smoothed_nll", {}))[0].item() == \
        pytest.approx(expected.item(), abs=1e-6)
    # and all three by name from YAML: trained, evaluated, the metric reported
    results = run_experiment(exp, show_progress=False)
    assert set(results["metrics"]) == {"all_caps"} and results["train"]["steps"] == 2
