"""No command replaces a result it wrote before: ``reftx eval`` writes eval.json, then eval-2.json,
eval-3.json, ... and leaves the run's results.json alone; a path that is not a run folder fails in
one line and creates nothing. (``reftx lm-eval``'s are in test_lm_eval.py.)"""
from __future__ import annotations

import json

import reftx.cli.commands as cli
from tests.integration.test_faults import files, finished  # noqa: F401  (finished: the fixture)

FIX = "give the folder `reftx run` printed (it holds config.yaml)"


def test_eval_twice_writes_a_new_file_each_time(finished, capsys):  # noqa: F811
    before = files(finished)
    for k, name in enumerate(["eval.json", "eval-2.json", "eval-3.json"], 1):
        assert cli.main(["eval", str(finished), "--no-progress"]) == 0
        assert f"wrote {finished / name}" in capsys.readouterr().err.replace("\n", "")
        if k == 1:
            first = (finished / "eval.json").read_bytes()
    after = files(finished)
    assert sorted(set(after) - set(before)) == ["eval-2.json", "eval-3.json", "eval.json"]
    assert {k: v for k, v in after.items() if k in before and k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"}  # results.json and every run file untouched
    assert after["eval.json"] == first  # the first result is kept as it was
    evals = [json.loads(after[n]) for n in ("eval.json", "eval-2.json", "eval-3.json")]
    results = json.loads(after["results.json"])
    assert [e["metrics"] for e in evals] == [results["metrics"]] * 3  # greedy: the same answers each time
    assert {e["config_hash"] for e in evals} == {results["config_hash"]}


def test_eval_of_a_mistyped_path_creates_nothing(tmp_path, capsys):
    bad = tmp_path / "runs" / "quickstrat"
    assert cli.main(["eval", str(bad), "--no-progress"]) == 2
    assert capsys.readouterr().err.replace("\n", "") == f"error: no run folder at {bad}; {FIX}"
    assert list(tmp_path.iterdir()) == []


def test_eval_of_a_folder_without_config_creates_nothing(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert cli.main(["eval", str(tmp_path / "runs"), "--no-progress"]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert err == f"error: {tmp_path / 'runs'} holds no config.yaml, so it is not a run folder; {FIX}"
    assert list((tmp_path / "runs").iterdir()) == []  # no .lock, no eval.json


def test_eval_with_eval_only_overrides_and_a_training_key_refused(finished, capsys):  # noqa: F811
    results = json.loads((finished / "results.json").read_text())
    assert cli.main(["eval", str(finished), "task.n_eval=2", "eval.max_new_tokens=2", "--no-progress"]) == 0
    got = json.loads((finished / "eval.json").read_text())
    assert got["overrides"] == ["task.n_eval=2", "eval.max_new_tokens=2"] and got["n_eval"] == 2
    assert got["config_hash"] != results["config_hash"]  # another eval setting: another hash, named in the file
    capsys.readouterr()
    before = files(finished)
    assert cli.main(["eval", str(finished), "train.lr=0.5", "--no-progress"]) == 2
    assert capsys.readouterr().err.replace("\n", "") == (
        "error: train.lr: reftx eval takes eval-only overrides (eval.*, task.n_eval, task.eval_seed, task.eval_split, "
        "task.overlong); this one changes the trained run: retrain with reftx run")
    assert files(finished) == before
