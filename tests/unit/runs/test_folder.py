"""reftx.runs.folder: the free ``-N`` names of result files (no command replaces a result it wrote)
and the check that a command reading a run was given a run folder (before anything is created)."""
from __future__ import annotations

import pytest

from reftx.core.errors import ReftError
from reftx.runs.folder import RunFolder, run_folder_at


def test_free_name_counts_up_like_free_folder(tmp_path):
    out = RunFolder(tmp_path)
    assert out.free_name("eval.json") == "eval.json"
    for k, expected in enumerate(["eval.json", "eval-2.json", "eval-3.json"], 1):
        assert out.free_name("eval.json") == expected
        out.json(out.free_name("eval.json"), {"k": k}, replace=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval-2.json", "eval-3.json", "eval.json"]
    assert (tmp_path / "eval-2.json").read_text() == '{\n  "k": 2\n}\n'
    (tmp_path / "lm_eval").mkdir()
    (tmp_path / "lm_eval" / "arc_easy+hellaswag.json").write_text("{}")
    assert out.free_name("lm_eval/arc_easy+hellaswag.json") == "lm_eval/arc_easy+hellaswag-2.json"


def test_run_folder_at_names_the_path_and_the_fix(tmp_path):
    fix = r"; give the folder `reftx run` printed \(it holds config.yaml\)$"
    with pytest.raises(ReftError, match=rf"^no run folder at {tmp_path / 'runs' / 'typo'}{fix}"):
        run_folder_at(tmp_path / "runs" / "typo")
    with pytest.raises(ReftError, match=rf"^{tmp_path} holds no config.yaml, so it is not a run folder{fix}"):
        run_folder_at(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing created
    (tmp_path / "config.yaml").write_text("schema: 1\n")
    assert run_folder_at(str(tmp_path)) == tmp_path
