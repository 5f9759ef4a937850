"""Files and folders a run writes get the mode a plain ``open()`` / ``mkdir()`` gives under the
process's umask: atomic writes (config.yaml, results.json, samples.jsonl, intervention/*,
checkpoints) included, which ``tempfile.mkstemp`` alone would leave at 0600."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.integration.test_faults import run

WRITTEN = {".lock", "config.yaml", "results.json", "samples.jsonl", "metrics.jsonl", "loss.png",
           "intervention/reft_config.json", "intervention/interventions.safetensors"}


def modes(folder: Path) -> dict[str, int]:
    """{path relative to ``folder``: permission bits} of everything under it."""
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_run_folder_modes_follow_the_umask(tiny_dir, tmp_path, mask, file_mode, dir_mode):
    old = os.umask(mask)
    try:
        run(tiny_dir, tmp_path)
    finally:
        os.umask(old)
    folder = tmp_path / "runs" / "quickstart"
    got = modes(folder)
    files = {k for k in got if (folder / k).is_file()}
    dirs = set(got) - files
    assert WRITTEN <= files
    ckpt = {k for k in files if k.startswith("checkpoints/")}
    assert {Path(k).name for k in ckpt} >= {"interventions.safetensors", "reft_config.json", "trainer_state.pt"}
    assert {k: m for k, m in got.items() if k in files and m != file_mode} == {}
    assert {"intervention", "checkpoints", "checkpoints/step-4"} <= dirs
    assert {k: m for k, m in got.items() if k in dirs and m != dir_mode} == {}
    assert not [k for k in got if Path(k).name.endswith(".tmp")]  # no temporary file left behind
    assert stat.S_IMODE(folder.stat().st_mode) == dir_mode
