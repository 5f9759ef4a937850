"""`reftx adopt`: a save_pretrained folder from the Python path becomes a full run folder that
`reftx eval` and the Hub card read like any run."""
from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

import reftx
import reftx.cli.commands as cli
from reftx.config.schema import load_experiment
from reftx.core.convert import load_yaml
from reftx.models.hub import card_info_from_run
from tests.conftest import perturb
from tests.integration.test_runner import REPO, tiny_overrides

QUICKSTART = REPO / "experiments" / "quickstart.yaml"


@pytest.fixture
def saved(tiny_dir, tmp_path):
    """A Python-path model (the quickstart's interventions, perturbed) saved with save_pretrained."""
    exp = load_experiment(QUICKSTART, tiny_overrides(tiny_dir, tmp_path))
    model = perturb(reftx.attach(AutoModelForCausalLM.from_pretrained(tiny_dir), exp.interventions), scale=0.3)
    model.save_pretrained(tmp_path / "saved")
    return tmp_path / "saved"


def test_adopt_with_an_experiment_makes_a_run_that_eval_and_push_read(saved, tiny_dir, tmp_path, capsys):
    flags = tiny_overrides(tiny_dir, tmp_path)
    assert cli.main(["adopt", str(saved), str(QUICKSTART), *flags, "--name", "adopted", "--no-progress"]) == 0
    run = tmp_path / "runs" / "adopted"
    for f in ("reft_config.json", "interventions.safetensors"):
        assert (run / "intervention" / f).read_bytes() == (saved / f).read_bytes()
    meta = json.loads((saved / "reft_config.json").read_text())
    assert load_yaml(run / "config.yaml")["interventions"] == meta["interventions"]
    res = json.loads((run / "results.json").read_text())
    assert res["train"]["adopted_from"] == str(saved.resolve()) and res["n_eval"] == 3
    assert set(res["metrics"]) and all(isinstance(v, float) for v in res["metrics"].values())
    assert cli.main(["eval", str(run), "--no-progress"]) == 0
    assert json.loads((run / "eval.json").read_text())["metrics"] == res["metrics"]
    assert card_info_from_run(run)["config_hash"] == res["config_hash"]


def test_adopt_with_a_task_uses_the_folders_base_model(saved, tiny_dir, tmp_path):
    assert cli.main(["adopt", str(saved), "--task", "persona", "--output-dir", str(tmp_path / "out"),
                     "--no-progress"]) == 0
    cfg = load_yaml(tmp_path / "out" / "saved" / "config.yaml")
    assert cfg["model"]["name"] == str(tiny_dir) and cfg["task"]["name"] == "persona"
    assert (tmp_path / "out" / "saved" / "results.json").is_file()


def test_adopt_refuses_what_is_not_a_saved_folder(tmp_path, capsys):
    assert cli.main(["adopt", str(tmp_path), "--task", "persona"]) == 2
    assert f"error: {tmp_path} holds no reft_config.json: give the folder model.save_pretrained(...) wrote" in \
        " ".join(capsys.readouterr().err.split())
    assert list(tmp_path.iterdir()) == []
