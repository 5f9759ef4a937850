"""Run folders: the one writer every command uses, one process at a time.

``RunFolder`` (below) is how ``reftx run``, ``edit``, ``baseline`` and ``eval`` write their
folders: ``free_folder`` picks ``{base}`` or, when that already holds a run, the first free
``{base}-2``, ``{base}-3``, ... (so no command overwrites another's output and the same command
works every time); every file goes through ``atomic_write`` (a crash leaves the old file or the
new one; files get the mode a plain ``open()`` gives, ``0o666`` less the umask); and the command
ends by printing the folder it wrote.

Commands that add a result to a finished run (``reftx eval``'s ``eval.json``, ``reftx lm-eval``'s
``lm_eval/{tasks}.json``) never replace one they wrote before: ``RunFolder.free_name`` gives
``eval.json``, then ``eval-2.json``, ``eval-3.json``, ... (the ``-N`` of ``free_folder``), and the
file is written with ``replace=False``. ``run_folder_at`` checks that such a command was given a
run folder before anything is created.

Every command that writes a folder (``reftx run`` its run folder, ``baseline`` its ``baseline/``
subfolder, ``edit`` its ``{name}-{mode}`` folder) holds an OS lock on ``.lock`` inside it for as
long as it writes: ``fcntl.flock``, which the kernel releases when the process exits for any
reason (an exception, Ctrl-C, SIGKILL), so a crash never leaves a stale lock. The file keeps the
holder's PID and command, so a second writer is told who holds the folder.

Where ``fcntl`` does not exist (Windows) the lock degrades to the PID file alone (a warning).
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reftx.core.errors import ReftError
from reftx.core.files import atomic_write
from reftx.core.version import __version__

LOCK_NAME = ".lock"


def _describe_io(path: Path, err: OSError) -> str:
    """An OSError as a sentence naming the path and the cause (disk full, permission, ...)."""
    cause = os.strerror(err.errno) if err.errno else str(err)
    hint = {28: " (the disk is full: free space or choose another output_dir)",
            13: " (no permission: choose an output_dir you can write)",
            30: " (read-only file system: choose another output_dir)"}.get(err.errno or 0, "")
    return f"cannot write {path}: {cause}{hint}"


@contextmanager
def locked(folder: Path, what: str) -> Iterator[Path]:
    """Create ``folder`` and hold its write lock within the block; ``what`` names the command."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask, as open() gives
    except OSError as e:
        raise ReftError(_describe_io(folder, e)) from None
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None
            print(f"warning: no fcntl on {sys.platform}: {folder} is not locked against a second writer",
                  file=sys.stderr)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
                raise ReftError(f"{folder} is being written by {holder}; wait for it to finish, or give this "
                                "run another name (name=...) or output_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} ({what})\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the flock


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` already holds a run's output (its config, results or a checkpoint)."""
    folder = Path(folder)
    return ((folder / "config.yaml").is_file() or (folder / "results.json").is_file()
            or any((folder / "checkpoints").glob("step-*")))


def siblings(base: Path) -> list[Path]:
    """``base`` and the ``base-2``, ``base-3``, ... folders next to it that exist, oldest name first:
    the folders runs of one experiment wrote (``free_folder``'s names)."""
    base = Path(base)
    found = [(1, base)] if base.is_dir() else []
    if base.parent.is_dir():
        for p in base.parent.glob(f"{base.name}-*"):
            k = p.name[len(base.name) + 1:]
            if p.is_dir() and k.isdigit() and int(k) >= 2:
                found.append((int(k), p))
    return [p for _, p in sorted(found)]


def run_folder_at(path: str | Path) -> Path:
    """``path`` as a finished run's folder (it holds ``config.yaml``), checked before a command that
    reads one (``reftx eval``, ``reftx lm-eval``) creates or locks anything; a one-line error otherwise."""
    path = Path(path)
    fix = "give the folder `reftx run` printed (it holds config.yaml)"
    if not path.is_dir():
        raise ReftError(f"no run folder at {path}; {fix}")
    if not (path / "config.yaml").is_file():
        raise ReftError(f"{path} holds no config.yaml, so it is not a run folder; {fix}")
    return path


def free_folder(base: Path) -> Path:
    """``base`` if it holds no run, else the first of ``base-2``, ``base-3``, ... that holds none."""
    k, folder = 1, Path(base)
    while holds_run(folder):
        k += 1
        folder = Path(base).with_name(f"{Path(base).name}-{k}")
    return folder


class RunFolder:
    """A locked run folder and its files, each written atomically (see the module docstring)."""

    def __init__(self, folder: Path):
        self.path = Path(folder)
        self._cpu0 = time.process_time()  # results' cpu_seconds count from here

    def text(self, name: str, text: str, *, replace: bool = True) -> Path:
        """Write ``name`` (relative to the folder); ``replace`` False: never over an existing file."""
        path = self.path / name
        atomic_write(path, lambda p: Path(p).write_text(text), replace=replace)
        return path

    def json(self, name: str, obj: Any, *, replace: bool = True) -> Path:
        return self.text(name, json.dumps(obj, indent=2) + "\n", replace=replace)

    def free_name(self, name: str) -> str:
        """``name`` (relative to the folder) if no file has it, else the first free ``{stem}-2{suffix}``,
        ``{stem}-3{suffix}``, ...: ``eval.json``, ``eval-2.json``, ``lm_eval/arc_easy-2.json``."""
        rel, k = Path(name), 1
        while (self.path / rel).exists():
            k += 1
            rel = Path(name).with_name(f"{Path(name).stem}-{k}{Path(name).suffix}")
        return rel.as_posix()

    def log(self, line: str, name: str = "progress.log") -> None:
        """Append ``line``, timestamped, to ``name``: progress of long work that prints nothing else
        (``reftx edit`` with progress bars off, as a sweep runs it). Appended and flushed line by line,
        so it shows how far an interrupted run got."""
        with open(self.path / name, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    def jsonl(self, name: str, rows: list[dict[str, Any]]) -> Path:
        return self.text(name, "".join(json.dumps(r) + "\n" for r in rows))

    def results(self, fields: dict[str, Any], started: float | None = None, name: str = "results.json",
                *, replace: bool = True) -> dict[str, Any]:
        """The one writer of a command's results (``results.json``; ``eval.json``, ``eval-2.json``, ...
        for ``reftx eval``, with ``replace`` False): ``fields`` (``name``, ``config_hash`` and ``metrics``
        required, then the command's own), then ``wall_seconds`` since ``started`` (a
        ``time.perf_counter()`` reading) with ``cpu_seconds``, the CPU time of this process (every
        thread) since the folder was opened, and the stack's ``versions``. Returns what it wrote."""
        missing = [k for k in ("name", "config_hash", "metrics") if k not in fields]
        if missing:
            raise ValueError(f"{name} needs {', '.join(missing)}")
        record = dict(fields)
        if started is not None:
            record["wall_seconds"] = time.perf_counter() - started
            record["cpu_seconds"] = time.process_time() - self._cpu0
        record["versions"] = versions()
        self.json(name, record, replace=replace)
        return record


def versions() -> dict[str, str]:
    """The versions of reftx, torch, transformers, accelerate and Python (every results file records them)."""
    import platform

    import accelerate
    import torch
    import transformers

    return {"reftx": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}


@contextmanager
def run_folder(base: Path, what: str, *, reuse: bool = False, say: Any = None) -> Iterator[RunFolder]:
    """Open the folder a command writes: ``base`` when ``reuse`` (``--resume``, ``eval``) or when it
    holds no run, else the next free ``base-N`` (said through ``say``); locked while the block
    runs; "wrote <folder>" is said when it ends without an error."""
    say = say or (lambda text: print(text, file=sys.stderr))
    folder = Path(base) if reuse else free_folder(base)
    if folder != Path(base):
        say(f"{base} already holds a run (continue that one with --resume {base}); this run writes {folder}")
    with locked(folder, what):
        yield RunFolder(folder)
    say(f"wrote {folder}")


__all__ = ["LOCK_NAME", "RunFolder", "versions", "free_folder", "holds_run", "locked", "run_folder", "run_folder_at",
           "siblings"]
