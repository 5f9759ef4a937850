"""reftx/recipes: the recipe: section (typed options, did-you-mean), train.init_from, and the
sequential recipe chaining stages on a tiny model."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

import reftx
from reftx.recipes import train as runner
from reftx.core.convert import load_yaml
from reftx.core.errors import ReftError
from reftx.config.schema import load_experiment
from reftx.recipes.registry import RECIPES, recipe_of, run_experiment

QUICKSTART = runner.__file__.rsplit("/reftx/", 1)[0] + "/experiments/quickstart.yaml"


def _exp(tiny_dir, tmp_path, *extra):
    return load_experiment(QUICKSTART, [f"model.name={tiny_dir}", f"output_dir={tmp_path}", "train.max_steps=2",
                                        "train.batch_size=4", "task.n_eval=2", "eval.max_new_tokens=2",
                                        "eval.show_examples=0", "interventions.0.layers=[1, 2]", *extra])


def test_every_recipe_is_listed_with_typed_options():
    assert RECIPES.names() == ["baseline", "edit", "sequential", "tofu_stage1", "train"]
    with pytest.raises(reftx.ConfigError, match=r"recipe\.stages: needs at least two stages"):
        recipe_of(load_experiment(QUICKSTART, ["recipe={name: sequential, stages: [[seed=1]]}"]))


def test_init_from_starts_from_saved_interventions(tiny_dir, tmp_path):
    first = run_experiment(_exp(tiny_dir, tmp_path, "name=a"), show_progress=False)
    saved = tmp_path / "a" / "intervention"
    exp = _exp(tiny_dir, tmp_path, "name=b", f"train.init_from={saved}")
    base, _ = runner.load_base(exp)
    model = runner._build(exp, base)
    again = reftx.ReftModel.from_pretrained(runner.load_base(exp)[0], saved)
    for (_, m), (_, n) in zip(model.named_interventions(), again.named_interventions(), strict=True):
        for (k, a), (_, b) in zip(m.state_dict().items(), n.state_dict().items(), strict=True):
            assert torch.equal(a, b), k
    # hashed only when set: the same run without it keeps its (published) hash
    assert first["config_hash"] != runner.config_hash(exp.to_dict())
    assert runner.config_hash(_exp(tiny_dir, tmp_path, "name=a").to_dict()) == first["config_hash"]
    with pytest.raises(ReftError, match="not found"):
        runner._build(_exp(tiny_dir, tmp_path, f"train.init_from={tmp_path / 'nowhere'}"), runner.load_base(exp)[0])


def test_sequential_recipe_chains_the_stages(tiny_dir, tmp_path):
    stages = [["train.lr=0.01"], ["train.lr=0.02"], ["train.lr=0.03"]]
    out = run_experiment(_exp(tiny_dir, tmp_path, "name=seq", "recipe.name=sequential",
                              f"recipe.stages={yaml.safe_dump(stages, default_flow_style=True).strip()}"),
                         show_progress=False)
    assert [s["stage"] for s in out["stages"]] == [1, 2, 3]
    cfgs = [load_yaml(tmp_path / f"seq-s{k}" / "config.yaml") for k in (1, 2, 3)]
    assert [c["train"]["lr"] for c in cfgs] == [0.01, 0.02, 0.03]
    assert [c["train"]["init_from"] for c in cfgs] == [None, str(tmp_path / "seq-s1" / "intervention"),
                                                       str(tmp_path / "seq-s2" / "intervention")]
    assert all((tmp_path / f"seq-s{k}" / "results.json").is_file() for k in (1, 2, 3))


def test_baseline_recipe_is_reftx_baseline(tiny_dir, tmp_path):
    """recipe: {name: baseline} evaluates the model as it is into {run}/baseline/, with the same
    config hash as ``reftx run`` of the experiment (the recipe does not change what is measured)."""
    exp = _exp(tiny_dir, tmp_path, "name=z", "recipe.name=baseline")
    out = run_experiment(exp, show_progress=False)
    assert out["trainable_parameters"] == 0 and (tmp_path / "z" / "baseline" / "results.json").is_file()
    assert out["config_hash"] == runner.config_hash(_exp(tiny_dir, tmp_path, "name=z").to_dict())


def test_validate_checks_every_sequential_stage_before_anything_trains():
    from reftx.core.errors import ConfigError
    from reftx.config.schema import load_experiment
    from reftx.recipes.registry import validate

    exp = load_experiment("experiments/math/math_grpo_loreft.yaml")
    assert validate(exp)
    bad = load_experiment("experiments/math/math_grpo_loreft.yaml",
                          ["recipe.stages=[[],[train.objective=grpo,train.objective_options.group_sise=4]]"])
    with pytest.raises(ConfigError, match=r"recipe\.stages\.1.*group_sise.*did you mean.*group_size"):
        validate(bad)


@pytest.mark.parametrize("what", ["objectives", "recipes"])
def test_ls_lists_every_registered_objective_and_recipe(what, capsys):
    import reftx.cli.commands as cli
    from reftx.recipes.registry import RECIPES
    from reftx.train.objectives import OBJECTIVES

    assert cli.main(["ls", what]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == (OBJECTIVES if what == "objectives" else RECIPES).names()
    assert "nll" in listed or "train" in listed


def test_every_seed_evaluates_the_identical_examples_and_eval_seed_picks_them():
    """task.n_eval's subset follows task.eval_seed only: seeds 0..3 of a sweep score the same questions
    (paired), while their training subsets still differ; another eval_seed picks another subset."""
    boolq = QUICKSTART.replace("quickstart.yaml", "commonsense/boolq_loreft.yaml")

    def picked(*extra):
        exp = load_experiment(boolq, ["task.n_eval=6", "task.n_train=6", *extra])
        task = runner.load_task(exp)
        train = task.examples(runner.splits(exp, task)[0], exp.task.n_train, exp.seed)
        return [ex.prompt for ex in runner.eval_examples(exp, task)], [ex.prompt for ex in train]

    evals, trains = zip(*(picked(f"seed={s}") for s in range(4)))
    assert len(set(map(tuple, evals))) == 1 and len(evals[0]) == 6
    assert len(set(map(tuple, trains))) == 4
    assert picked("task.eval_seed=0")[0] == evals[0]
    assert picked("task.eval_seed=1")[0] != evals[0]


def test_baselines_of_two_seeds_write_the_same_eval_prompts(tiny_dir, tmp_path):
    rows = []
    for seed in (0, 1):
        exp = _exp(tiny_dir, tmp_path, f"seed={seed}", f"name=s{seed}", "task.n_eval=3")
        runner.evaluate_base(exp, show_progress=False)
        rows.append([json.loads(line)["prompt"] for line in
                     (exp.run_dir / "baseline" / "samples.jsonl").read_text().splitlines()])
    assert rows[0] == rows[1] and len(rows[0]) == 3
