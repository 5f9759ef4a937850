"""Checkpoint integrity: a manifest written last, verified before resuming, with fallback.

``checkpoints/step-N/`` is written into a temporary folder and renamed into place; its last file
is ``manifest.json`` (size and sha256 of every other file). ``intact`` walks the checkpoints from
the newest, verifies each against its manifest, warns with the reason for every damaged one
(truncated or missing file, checksum, unreadable state) and returns the newest intact one;
``clean_stale`` removes half-written ``.tmp-*`` folders of crashed writers. Checkpoints written by
a reftx without manifests are accepted with a warning (their files are still checked for being
readable JSON where they are JSON). ``save`` writes one: a failed write (a full disk, no permission)
removes the temporary folder, leaves every earlier checkpoint as it was and is one ReftError naming
the file, the cause (the OS's words) and the fix.

A checkpoint of ``reftx run`` (``save_checkpoint``) holds the trained weights (``intervention/``),
``trainer_state.pt`` (optimizer, LR schedule, every RNG state) and ``state.json`` (``Progress_``: the
position in the data, and validation's best and early-stopping state once there is any).
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from safetensors import SafetensorError

from reftx.core.errors import ReftError
from reftx.core.files import files_problem, sha256_file
from reftx.engine.serialization import WriteError, write_failure
from reftx.train.order import rng_state, set_rng_state

MANIFEST = "manifest.json"
STATE_FILE = "state.json"


def write_manifest(folder: Path) -> None:
    """Record every file of ``folder`` (size, sha256); call it after everything else is written."""
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n")


def problem(folder: Path) -> str | None:
    """Why ``folder`` is not an intact checkpoint, or None."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        state = folder / STATE_FILE
        try:
            json.loads(state.read_text())
        except (OSError, ValueError) as e:
            return f"{state} is unreadable ({type(e).__name__})"
        return None  # an older reftx wrote no manifest
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{manifest} is unreadable ({type(e).__name__})"
    return files_problem(folder, files)


def candidates(run_dir: Path) -> list[Path]:
    """``checkpoints/step-N`` folders, newest first."""
    root = run_dir / "checkpoints"
    steps = [p for p in root.glob("step-*") if p.is_dir() and p.name.split("-")[1].isdigit()]
    return sorted(steps, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def intact(run_dir: Path, warn: Callable[[str], None]) -> Path | None:
    """The newest checkpoint that verifies; a warning names each damaged newer one."""
    for ckpt in candidates(run_dir):
        why = problem(ckpt)
        if why is None:
            if not (ckpt / MANIFEST).is_file():
                warn(f"warning: {ckpt} has no manifest (an older reftx wrote it); resuming from it unverified")
            return ckpt
        warn(f"warning: skipping damaged checkpoint {ckpt}: {why}")
    return None


def save(run_dir: Path, step: int, fill: Callable[[Path], None], keep: int, protect: int | None = None) -> Path:
    """Write ``checkpoints/step-{step}``: ``fill(folder)`` writes the files into a temporary folder,
    the manifest is added last, the folder is renamed into place, and only the newest ``keep``
    checkpoints stay, besides ``protect`` (the step of the best checkpoint, reftx.train.validation). Nothing
    older is touched before the new one is complete."""
    root = run_dir / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    previous = next((c for c in candidates(run_dir) if c != final), None)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        fill(tmp)
        write_manifest(tmp)  # last: a checkpoint without it is incomplete
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, (OSError, RuntimeError, SafetensorError, WriteError)):
            raise
        raise ReftError(_failed(final, tmp, e, previous)) from None
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
        if old.name != f"step-{protect}":
            shutil.rmtree(old, ignore_errors=True)
    return final


def _failed(final: Path, tmp: Path, error: Exception, previous: Path | None) -> str:
    """The one-line error for a checkpoint that could not be written: the file (as it would have
    been named in ``final``), the cause, the fix, and that earlier work is intact."""
    if isinstance(error, WriteError):
        path, cause, fix = error.path, error.cause, error.fix
    else:  # OSError, safetensors' SafetensorError, torch.save's RuntimeError on a full disk
        path = Path(getattr(error, "filename", None) or tmp)
        cause, fix = write_failure(path, error)
    path = final / path.relative_to(tmp) if path.is_relative_to(tmp) else path
    kept = (f"the previous checkpoint {previous} is untouched (`reftx run ... --resume` continues from it)"
            if previous else "no earlier checkpoint exists")
    return f"cannot write the checkpoint {final}: {'' if path == final else f'{path}: '}{cause}; {fix}; {kept}"


def clean_stale(run_dir: Path, warn: Callable[[str], None]) -> None:
    """Remove half-written ``.tmp-*`` checkpoint folders (a crashed or killed writer's)."""
    for tmp in (run_dir / "checkpoints").glob(".tmp-*"):
        warn(f"removing the half-written checkpoint {tmp}")
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Progress_:
    """Where a run stands: what ``state.json`` of each checkpoint holds."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch: int = 0  # batches of the current epoch consumed (at a step boundary)
    tokens: int = 0
    best: float | None = None  # validation (reftx.train.validation): the best train.eval_metric so far,
    best_step: int | None = None  # its step (checkpoints/step-N, kept by rotation),
    bad_evals: int = 0  # evaluations in a row without improvement,
    stopped: bool = False  # and whether train.early_stopping ended the run

    def state(self) -> dict[str, Any]:
        """state.json's content: the position, and the validation fields once they are set."""
        position = ("step", "epoch", "batch", "tokens")
        validated = self.best_step is not None or self.bad_evals or self.stopped
        return {k: v for k, v in self.__dict__.items() if k in position or validated}


def save_checkpoint(run_dir: Path, model: Any, opt, sched, prog: Progress_, keep: int) -> Path:
    """Write checkpoints/step-N atomically (``save``: a temporary folder, then a rename; a failed write
    names the file and the cause); keep the newest ``keep``, and the best one (``prog.best_step``)."""

    def fill(folder: Path) -> None:
        model.save_pretrained(folder / "intervention")
        trainer = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state()}
        torch.save(trainer, folder / "trainer_state.pt")
        (folder / STATE_FILE).write_text(json.dumps(prog.state()) + "\n")

    return save(run_dir, prog.step, fill, keep, protect=prog.best_step)


def load_checkpoint(path: Path, model: Any, opt, sched) -> Progress_:
    """Restore the weights, optimizer, schedule and RNG states of a checkpoint; returns its ``Progress_``."""
    model.load_trained(path / "intervention")
    try:
        state = torch.load(path / "trainer_state.pt", weights_only=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        return Progress_(**json.loads((path / STATE_FILE).read_text()))
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        raise ReftError(f"cannot resume from {path}: {type(e).__name__}: {e}") from None


__all__ = ["MANIFEST", "Progress_", "load_checkpoint", "save_checkpoint", "candidates", "clean_stale", "intact", "problem", "save", "write_manifest"]
