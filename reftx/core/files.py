"""Atomic and verifiable file I/O, the same for every layer: a file is replaced whole or not at all,
created with the mode a plain ``open()`` gives (``0o666`` less the umask), and a folder's files can
be checked against the sizes and sha256 sums recorded for them."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``);
    elsewhere through a set-and-restore of ``os.umask`` (briefly process-wide)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permission bits ``open(path, "w")`` gives a new file: ``0o666`` less the umask."""
    return 0o666 & ~umask()


def atomic_write(path: Path, write: Any, *, replace: bool = True) -> None:
    """Write ``path`` through ``write(tmp)`` to a temporary file beside it, then rename it into
    place: a crash leaves the old file or the new one, never half of one. The file gets the mode a
    plain ``open()`` would give (``tempfile.mkstemp`` alone makes it ``0600``). ``replace`` False
    never replaces an existing ``path`` (``FileExistsError``): commands that keep every result
    they wrote use it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())  # after write: some writers (safetensors) put their own 0600 file there
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _link_new(tmp: str, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if no file has it (one atomic ``link``), then drop ``tmp``."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links (FAT, some network shares): check, then rename
        if path.exists():
            raise FileExistsError(f"{path} already exists") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints' manifests, the model cache)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files_problem(folder: Path, files: dict, full: bool = True) -> str | None:
    """Why the files a manifest lists (``{relative name: {"size", "sha256"}}``) under ``folder``
    do not match it, or None; ``full`` False compares sizes only (cheap). Checkpoints and the
    default model's cache (reftx.models.loading) are verified with it."""
    for rel, meta in files.items():
        p = folder / rel
        if not p.is_file():
            return f"{p} is missing"
        if p.stat().st_size != meta["size"]:
            return f"{p} has {p.stat().st_size} bytes, expected {meta['size']} (truncated?)"
        if full and sha256_file(p) != meta["sha256"]:
            return f"{p} does not match its sha256 (damaged)"
    return None


__all__ = ["atomic_write", "file_mode", "files_problem", "sha256_file", "umask"]
