"""`--resume` finds the run the user means: the Ctrl-C sequence of the first-week report.

Run the quickstart, run it again and Ctrl-C the second run (quickstart-2): the interrupt prints the
exact command; `reftx run EXP --resume` continues quickstart-2 (not the finished quickstart), a second
`--resume` has nothing to do and says nothing about writing, and a changed config names each folder."""
from __future__ import annotations

import json
import os
import shlex
import signal

import pytest

import reftx.cli.commands as cli
import reftx.train.run as train_run
from tests.integration.test_runner import REPO, tiny_overrides

QUICKSTART = str(REPO / "experiments" / "quickstart.yaml")


def _err(capsys) -> str:
    """stdout and stderr, whitespace-normalised."""
    got = capsys.readouterr()
    return " ".join((got.out + got.err).split())


def test_ctrl_c_then_resume_continues_the_interrupted_folder(tiny_dir, tmp_path, capsys, monkeypatch):
    flags = [*tiny_overrides(tiny_dir, tmp_path), "--no-progress"]
    runs = tmp_path / "runs"
    assert cli.main(["run", QUICKSTART, *flags]) == 0
    first = json.loads((runs / "quickstart" / "results.json").read_text())
    capsys.readouterr()

    log = train_run._Run.log

    def log_then_interrupt(self, rec):
        log(self, rec)
        if rec["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_run._Run, "log", log_then_interrupt)
    assert cli.main(["run", QUICKSTART, *flags]) == 130
    err = _err(capsys)
    assert f"interrupted: saved a checkpoint at step 2 in {runs / 'quickstart-2'}" in err
    again = shlex.join(["reftx", "run", QUICKSTART, *flags[:-1], "--resume", str(runs / "quickstart-2"), "--no-progress"])
    assert f"interrupted; continue with: {again}" in err
    assert not (runs / "quickstart-2" / "results.json").exists()
    monkeypatch.undo()

    assert cli.main(["run", QUICKSTART, *flags, "--resume"]) == 0
    res = json.loads((runs / "quickstart-2" / "results.json").read_text())
    assert res["train"]["resumed"] and res["train"]["steps"] == 4 and res["metrics"] == first["metrics"]
    assert "nothing to do" not in _err(capsys)

    assert cli.main(["run", QUICKSTART, *flags, "--resume"]) == 0  # both finished: the newest, nothing to do
    err = _err(capsys)
    assert f"--resume: {runs / 'quickstart-2'} is already finished" in err and "nothing to do" in err
    assert "wrote" not in err
    assert sorted(p.name for p in runs.iterdir()) == ["quickstart", "quickstart-2"]

    assert cli.main(["run", QUICKSTART, *flags, "--resume", str(runs / "quickstart")]) == 0  # named explicitly
    assert f"--resume: {runs / 'quickstart'} is already finished" in _err(capsys)

    assert cli.main(["run", QUICKSTART, *flags, "--resume", "train.lr=0.5"]) == 2  # an override after --resume
    assert (f"error: --resume: no run of quickstart with this config to continue ({runs / 'quickstart'}: another "
            f"config (train.lr); {runs / 'quickstart-2'}: another config (train.lr)); pass the folder and its "
            "overrides (--resume RUN_DIR), or run without --resume") in _err(capsys)


def test_resume_with_no_run_names_where_it_looked(tiny_dir, tmp_path, capsys):
    flags = [*tiny_overrides(tiny_dir, tmp_path), "--no-progress"]
    assert cli.main(["run", QUICKSTART, *flags, "--resume"]) == 2
    assert (f"error: --resume: no run of quickstart in {tmp_path / 'runs'} (looked for quickstart and quickstart-N); "
            "run without --resume to start one") in _err(capsys)
    assert cli.main(["run", QUICKSTART, *flags, "--resume", str(tmp_path / "nowhere")]) == 2
    assert f"error: no run folder at {tmp_path / 'nowhere'}" in _err(capsys)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "nowhere").exists()
