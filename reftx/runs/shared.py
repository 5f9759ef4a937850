"""The run folder of a multi-process run: one folder, one writer.

Every process of ``accelerate launch -m reftx run EXP.yaml`` runs the same recipe. The main process
opens the folder as a single process would (reftx.runs.folder.run_folder: the free ``{name}-N``,
the lock, "wrote ..."), and hands its path to the others, which get a ``Mirror`` of it: the same
path, whose writes do nothing. So only the main process writes run-folder files (config.yaml,
results.json, samples.jsonl; the training loop's metrics and checkpoints are the main process's
too: reftx.train.run), and a second process never meets the first one's lock.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from reftx.core import processes
from reftx.runs.folder import RunFolder
from reftx.runs.folder import run_folder as _run_folder


class Mirror(RunFolder):
    """The main process's run folder as another process sees it: its files are the main process's
    to write; ``text`` (and so ``json``, ``jsonl``, ``results``) writes nothing."""

    def text(self, name: str, text: str, *, replace: bool = True) -> Path:
        return self.path / name


@contextmanager
def run_folder(base: Path, what: str, *, reuse: bool = False, say: Any = None) -> Iterator[RunFolder]:
    """``reftx.runs.folder.run_folder`` for every process of a run: the main process opens (and locks)
    the folder and writes it; the others get a ``Mirror`` of the same folder. In a single process it
    is ``reftx.runs.folder.run_folder`` itself. An error opening the folder (another writer holds it)
    is raised in every process."""
    with ExitStack() as stack:
        opened: list[RunFolder] = []

        def open_it() -> Path:
            opened.append(stack.enter_context(_run_folder(base, what, reuse=reuse, say=say)))
            return opened[0].path

        path = processes.main_decides(open_it)  # only the main process runs open_it
        yield opened[0] if opened else Mirror(path)


__all__ = ["Mirror", "run_folder"]
