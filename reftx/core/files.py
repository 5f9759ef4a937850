"""Atomic and verifiable file I/O, the same for every layer: a file is replaced whole or not at all,
and a folder's files can be checked against the sizes and sha256 sums recorded for them."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Any) -> None:
    """Write ``path`` through ``write(tmp)`` to a temporary file beside it, then rename it into
    place: a crash leaves the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


__all__ = ["atomic_write", "files_problem", "sha256_file"]
