"""Run folders that one process writes at a time.

Every command that writes a folder (``reftx run`` its run folder, ``baseline`` its ``baseline/``
subfolder, ``edit`` its ``{name}-{mode}`` folder) holds an OS lock on ``.lock`` inside it for as
long as it writes: ``fcntl.flock``, which the kernel releases when the process exits for any
reason (an exception, Ctrl-C, SIGKILL), so a crash never leaves a stale lock. The file keeps the
holder's PID and command, so a second writer is told who holds the folder.

Where ``fcntl`` does not exist (Windows) the lock degrades to the PID file alone (a warning).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ReftError

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
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
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


__all__ = ["LOCK_NAME", "locked"]
