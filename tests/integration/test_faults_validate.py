"""Fault injection for ``reftx validate`` / ``reftx plan``: what ``reftx run`` would hit later
(a ``train.init_from`` that does not fit, a mistake in a later stage, an extra that is not
installed) is one line naming the field, with exit code 2, before anything loads weights or trains.
Also: rich never eats the text of a message ("[lm-eval]", "[/]"), and ``reftx lm-eval``'s numbers
are checked in reftx's words."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from rich.console import Console

import reftx.cli.commands as cli
from reftx.config.schema import TrainConfig, load_experiment
from reftx.engine.model import attach
from reftx.recipes import train as runner

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
SEQUENTIAL = REPO / "experiments" / "unlearning" / "tofu_grun_sequential.yaml"
INIT = "train.init_from"


def tiny(tiny_dir, *extra: str) -> list[str]:
    """The quickstart on the tiny llama (4 layers, hidden 32), at layers 1 and 2."""
    return [f"model.name={tiny_dir}", "interventions.0.layers=[1, 2]", *extra]


@pytest.fixture(scope="module")
def saved(tiny_dir, tmp_path_factory) -> Path:
    """What a quickstart run on the tiny llama leaves in {run}/intervention (ReftModel.save_pretrained)."""
    exp = load_experiment(QUICKSTART, tiny(tiny_dir))
    folder = tmp_path_factory.mktemp("run") / "intervention"
    attach(runner.load_base(exp)[0], exp.interventions).save_pretrained(folder)
    return folder


def plan_error(capsys, args: list[str]) -> str:
    """``reftx plan QUICKSTART args``: exit code 2 and stderr, which must be one line."""
    assert cli.main(["plan", str(QUICKSTART), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def validate_error(capsys, path: Path, args: list[str]) -> str:
    """``reftx validate path --set a ...``: exit code 2 and the one error line (after the path)."""
    assert cli.main(["validate", str(path), *[x for a in args for x in ("--set", a)]]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("      notice:")]
    assert len(lines) == 1 and lines[0].startswith(f"error {path}: "), lines
    return lines[0][len(f"error {path}: "):]


# -- train.init_from --------------------------------------------------------------------------------
def test_init_from_that_does_not_exist(tiny_dir, tmp_path, capsys):
    err = plan_error(capsys, tiny(tiny_dir, f"{INIT}={tmp_path / 'nowhere'}"))
    assert err == (f"error: {INIT}: {tmp_path / 'nowhere'} does not exist: point it at a finished run's "
                   "intervention/ folder, or remove it (null: a fresh init)\n")


def test_init_from_a_run_folder_names_its_intervention_folder(tiny_dir, saved, capsys):
    err = plan_error(capsys, tiny(tiny_dir, f"{INIT}={saved.parent}"))
    assert err == f"error: {INIT}: {saved.parent} is a run folder: point it at its interventions, {saved}\n"


def test_init_from_a_folder_without_interventions(tiny_dir, tmp_path, capsys):
    err = plan_error(capsys, tiny(tiny_dir, f"{INIT}={tmp_path}"))
    assert err == (f"error: {INIT}: {tmp_path / 'reft_config.json'} not found: not a reftx intervention directory; "
                   "point it at a finished run's intervention/ folder\n")


def test_init_from_trained_for_another_model(tiny_dir, saved, capsys):
    err = plan_error(capsys, [f"{INIT}={saved}", "interventions.0.layers=[1, 2]"])  # model: default, 30 layers
    assert err == (f"error: {INIT}: {saved} was trained for another model (model_type 'llama', 4 layers; "
                   f"{tiny_dir}), this experiment's model 'default' is 'llama' with 30 layers: start from a run "
                   "of this model, or remove train.init_from\n")


def test_init_from_trained_as_another_kind(tiny_dir, saved, capsys):
    err = plan_error(capsys, tiny(tiny_dir, f"{INIT}={saved}", "interventions.0.kind=direft"))
    assert err == (f"error: {INIT}: {saved} was trained with kind 'loreft' for interventions.0, this experiment's "
                   "interventions.0.kind is 'direft': use the same kind, or remove train.init_from\n")


def test_init_from_trained_with_another_rank(tiny_dir, saved, capsys):
    err = plan_error(capsys, tiny(tiny_dir, f"{INIT}={saved}", "interventions.0.rank=8"))
    assert err == (f"error: {INIT}: {saved} was trained with rank 4 for interventions.0, this experiment's "
                   "interventions.0.rank is 8: use the same rank, or remove train.init_from\n")


def test_init_from_trained_at_other_layers(tiny_dir, saved, capsys):
    err = plan_error(capsys, tiny(tiny_dir, f"{INIT}={saved}", "interventions.0.layers=[1, 3]"))
    assert err == (f"error: {INIT}: {saved} does not match this experiment's interventions (groups "
                   "['L3.block_output.first+last'] are not in it, ['L2.block_output.first+last'] are not in this "
                   "experiment): use the same layers, positions and options, or remove train.init_from\n")


def test_init_from_with_a_lora_section(tiny_dir, saved, capsys):
    err = plan_error(capsys, tiny(tiny_dir, f"{INIT}={saved}", "lora.mode=joint"))
    assert err == (f"error: {INIT}: starts interventions from a saved run, which a lora: section does not "
                   "support; remove train.init_from or the lora: section\n")


def test_init_from_that_fits_validates_and_loads(tiny_dir, saved, capsys):
    assert cli.main(["validate", str(QUICKSTART), "--set", f"model.name={tiny_dir}", "--set",
                     "interventions.0.layers=[1, 2]", "--set", f"{INIT}={saved}"]) == 0
    assert capsys.readouterr().err == f"ok    {QUICKSTART}  (2 groups, 520 parameters)\n"
    exp = load_experiment(QUICKSTART, tiny(tiny_dir, f"{INIT}={saved}"))
    runner._build(exp, runner.load_base(exp)[0])  # what `reftx run` does with it: loads


# -- recipe stages ----------------------------------------------------------------------------------
def test_a_typo_in_stage_2_names_the_stage(capsys):
    err = validate_error(capsys, SEQUENTIAL, ["recipe.stages.1=[task.options.forget=forget05, train.lrr=0.1]"])
    valid = ", ".join(sorted(f.name for f in dataclasses.fields(TrainConfig)))
    assert err == f"recipe.stages.1.train.lrr: unknown key 'lrr' (did you mean 'lr'?); valid: {valid}"


def test_a_bad_value_in_stage_3_names_the_stage(capsys):
    err = validate_error(capsys, SEQUENTIAL, ["recipe.stages.2=[task.options.forget=forget10, train.lr=-1]"])
    assert err == "recipe.stages.2.train.lr: must be > 0, got -1.0"


def test_a_stage_that_changes_the_interventions(capsys):
    err = validate_error(capsys, SEQUENTIAL, ["recipe.stages.1=[task.options.forget=forget05, interventions.0.rank=8]"])
    assert err.startswith("recipe.stages.1: plans other interventions than stage 1 (groups ['L")
    assert err.endswith("]) but starts from stage 1's trained ones: give every stage the same interventions")


# -- output_dir, extras, markup ---------------------------------------------------------------------
def test_empty_output_dir_is_refused(capsys):
    err = plan_error(capsys, ["output_dir=''"])
    assert err == ("error: output_dir: must not be empty ('' writes the run folder into the current directory); "
                   "set a folder, e.g. output_dir: runs (or '.' on purpose)\n")


def test_a_tracker_that_is_not_installed_keeps_its_extra_in_the_hint(monkeypatch, capsys):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    err = validate_error(capsys, QUICKSTART, ["train.log_with=[tensorboard]"])
    assert err == ("train.log_with: tensorboard not installed; pip install tensorboard (tensorboard: pip install "
                   "'reftx[trackers]'), or remove it from train.log_with")


def test_lm_eval_not_installed_keeps_its_extra_in_the_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", None)  # import fails as if not installed
    assert cli.main(["lm-eval", str(tmp_path), "--tasks", "arc_easy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: lm-evaluation-harness is not installed (")
    assert err.endswith("): pip install 'reftx[lm-eval]'\n") and err.count("\n") == 1


def test_markup_in_a_message_is_text(tmp_path, capsys):
    path = tmp_path / "a[/]b[bold].yaml"  # a closing tag with nothing to close made rich raise
    assert cli.main(["plan", str(path)]) == 2
    assert capsys.readouterr().err == f"error: config file not found: {path}\n"


def test_model_output_in_the_held_out_table_is_text(monkeypatch):
    from reftx.data.examples import Example
    from reftx.recipes import summary

    console = Console(record=True, width=200)
    monkeypatch.setattr(summary, "console", console)
    results = {"name": "q", "config_hash": "0" * 12, "metrics": {}, "trainable_parameters": 1, "wall_seconds": 1.0}
    summary.report(results, [Example(prompt="say [/]", target="x")], ["[bold]b[/bold]"], ["a [/x] [red]"])
    text = console.export_text()
    assert "say [/]" in text and "[bold]b[/bold]" in text and "a [/x] [red]" in text


# -- what the fuzz (test_fuzz_yaml.py) found: each was a traceback --------------------------------------
def test_a_model_folder_whose_config_names_no_model_type(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")  # transformers raised a ValueError
    err = plan_error(capsys, [f"model.name={tmp_path}"])
    assert err == (f"error: model.name: cannot read the config of '{tmp_path}': Unrecognized model in {tmp_path}. "
                   "Should have a `model_type` key in its config.json.\n")


def test_a_model_name_too_long_for_a_file(capsys):
    err = plan_error(capsys, ["model.name=" + "m" * 300 + "/model"])  # os.stat raised OSError (ENAMETOOLONG)
    assert err.startswith(f"error: model.name: cannot read the config of '{'m' * 300}/model': ")


@pytest.mark.parametrize("override,message", [
    ("recipe.name=[sequential]", "recipe.name: expected a string naming the recipe, got list ['sequential']"),
    ("interventions.0.kind={a: 1}", "interventions.0.kind: expected a string naming the intervention, got dict {'a': 1}"),
])
def test_a_list_or_mapping_where_a_registered_name_goes(capsys, override, message):
    assert plan_error(capsys, [override]) == f"error: {message}\n"  # was TypeError: unhashable type


@pytest.mark.parametrize("override,message", [
    ("lora.r=9223372036854775808", "lora.r: must fit in a 64-bit integer (|value| < 2**63), got 9223372036854775808"),
    ("seed=-9223372036854775809", "seed: must fit in a 64-bit integer (|value| < 2**63), got -9223372036854775809"),
])
def test_integers_beyond_64_bits(capsys, override, message):
    assert plan_error(capsys, [override]) == f"error: {message}\n"  # lora.r: torch's TypeError (overflow)


def test_a_lora_rank_above_the_hidden_size(tiny_dir, capsys):
    err = plan_error(capsys, [f"model.name={tiny_dir}", "lora.mode=only", "interventions=[]", "lora.r=4611686018427387904"])
    assert err == ("error: lora.r: must be <= the model's hidden size 32 (a rank above a layer's width adds nothing), "
                   "got 4611686018427387904\n")  # was RuntimeError: Storage size calculation overflowed


# -- reftx lm-eval's numbers -------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["--limit", "0"], "--limit: must be a whole number of documents per task (>= 1) or a fraction of each task "
                       "(0 < limit < 1), got 0"),
    (["--limit", "-1"], "--limit: must be a whole number of documents per task (>= 1) or a fraction of each task "
                        "(0 < limit < 1), got -1"),
    (["--limit", "2.5"], "--limit: must be a whole number of documents per task (>= 1) or a fraction of each task "
                         "(0 < limit < 1), got 2.5"),
    (["--limit", "nan"], "--limit: must be a whole number of documents per task (>= 1) or a fraction of each task "
                         "(0 < limit < 1), got nan"),
    (["--batch-size", "0"], "--batch-size: must be >= 1 (requests per forward), got 0"),
])
def test_lm_eval_numbers_in_reftx_words(tmp_path, capsys, args, message):
    assert cli.main(["lm-eval", str(tmp_path), "--tasks", "arc_easy", *args]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
