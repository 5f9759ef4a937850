"""reftx.runs.shared: the run folder as a process other than the main one sees it."""
from __future__ import annotations

from reftx.runs.shared import Mirror


def test_a_mirror_of_the_run_folder_writes_nothing(tmp_path):
    out = Mirror(tmp_path)
    assert out.text("config.yaml", "a: 1\n") == tmp_path / "config.yaml"
    record = out.results({"name": "q", "config_hash": "h", "metrics": {"m": 1.0}})
    assert record["metrics"] == {"m": 1.0} and "versions" in record
    out.jsonl("samples.jsonl", [{"a": 1}])
    assert list(tmp_path.iterdir()) == []
