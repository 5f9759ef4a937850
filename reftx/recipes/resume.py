"""Which folder ``reftx run EXP --resume`` continues: the run the user means, never a guess.

Running an experiment again writes ``{name}-2``, ``{name}-3``, ... (reftx.runs.folder.free_folder),
so after a Ctrl-C the interrupted run is often not ``{output_dir}/{name}``. ``--resume`` without a
folder takes the newest unfinished folder of the experiment whose config hashes as the current one;
when every such folder is finished, the newest finished one (nothing to do); then a folder with no
run yet (one another process just started: its lock names the process); otherwise it names each
folder and what it holds. ``--resume RUN_DIR`` names the folder explicitly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reftx.config.hashing import config_hash, hash_differences
from reftx.config.schema import Experiment
from reftx.core.convert import load_yaml
from reftx.core.errors import ReftError
from reftx.runs.folder import run_folder_at, siblings


def state(folder: Path, resolved: dict[str, Any]) -> str:
    """What ``folder`` holds for a run of ``resolved``: "unfinished", "finished", "no run" or
    "another config (the fields that differ)"."""
    cfg = folder / "config.yaml"
    if not cfg.is_file():
        return "no run"
    saved = load_yaml(cfg)
    if config_hash(saved) != config_hash(resolved):
        return f"another config ({', '.join(hash_differences(saved, resolved)) or 'the type of a value'})"
    return "finished" if (folder / "results.json").is_file() else "unfinished"


def resume_target(exp: Experiment, resume: bool | str | Path) -> Path:
    """The folder ``--resume`` continues (see the module docstring); a one-line error when none fits."""
    if not isinstance(resume, bool):
        return run_folder_at(resume)
    resolved = exp.to_dict()
    found = [(f, state(f, resolved)) for f in siblings(exp.run_dir)]
    for wanted in ("unfinished", "finished", "no run"):  # "no run": just started elsewhere (the lock names who) or empty
        match = [f for f, st in found if st == wanted]
        if match:
            return match[-1]
    if not found:
        raise ReftError(f"--resume: no run of {exp.name} in {exp.run_dir.parent} (looked for {exp.run_dir.name} and "
                        f"{exp.run_dir.name}-N); run without --resume to start one")
    listing = "; ".join(f"{f}: {st}" for f, st in found)
    raise ReftError(f"--resume: no run of {exp.name} with this config to continue ({listing}); pass the folder and "
                    "its overrides (--resume RUN_DIR), or run without --resume")


def finished_results(folder: Path, resolved: dict[str, Any]) -> dict[str, Any] | None:
    """A finished run's results when ``folder`` holds one of ``resolved`` (nothing to do), else None."""
    if state(folder, resolved) != "finished":
        return None
    return json.loads((folder / "results.json").read_text())


__all__ = ["finished_results", "resume_target", "state"]
