"""reftx.run: a YAML path or a config dict, with dotted overrides, runs exactly as `reftx run` does."""
from __future__ import annotations

import json

import pytest

import reftx
import reftx.cli.commands as cli
from reftx.config.hashing import config_hash
from reftx.core.convert import load_yaml
from tests.integration.test_runner import REPO, tiny_overrides

QUICKSTART = REPO / "experiments" / "quickstart.yaml"


def test_reftx_run_from_a_path_and_a_dict_equals_the_command_line(tiny_dir, tmp_path):
    flags = tiny_overrides(tiny_dir, tmp_path)
    assert cli.main(["run", str(QUICKSTART), *flags, "name=cli", "--no-progress"]) == 0
    by_cli = json.loads((tmp_path / "runs" / "cli" / "results.json").read_text())

    res = reftx.run(QUICKSTART, *flags, show_progress=False, name="api")
    assert res["run_dir"] == str(tmp_path / "runs" / "api")
    assert res["metrics"] == by_cli["metrics"] and res["config_hash"] == by_cli["config_hash"]
    assert json.loads((tmp_path / "runs" / "api" / "results.json").read_text())["metrics"] == by_cli["metrics"]

    data = {**load_yaml(QUICKSTART), "name": "from-dict"}
    res = reftx.run(data, *flags, show_progress=False, **{"eval.max_new_tokens": 4})
    assert res["metrics"] == by_cli["metrics"] and res["run_dir"] == str(tmp_path / "runs" / "from-dict")


def test_reftx_run_overrides_are_checked_like_the_command_line(tiny_dir, tmp_path):
    exp = reftx.recipes.api.load(QUICKSTART, seed=3, **{"train.lr": 0.002, "task.options": {}})
    assert (exp.seed, exp.train.lr) == (3, 0.002)
    assert config_hash(exp.to_dict()) == config_hash(reftx.recipes.api.load(QUICKSTART, "seed=3", "train.lr=0.002").to_dict())
    with pytest.raises(reftx.ConfigError, match=r"train\.lrr: unknown"):
        reftx.run(QUICKSTART, **{"train.lrr": 0.1})
    with pytest.raises(reftx.ConfigError, match="an experiment given as a dict needs a name"):
        reftx.run({k: v for k, v in load_yaml(QUICKSTART).items() if k != "name"})
