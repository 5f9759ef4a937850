"""reftx.core.files: atomic_write gives the mode a plain open() gives under the umask, and with
replace=False never replaces an existing file."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reftx.core import files


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_umask_is_read_without_changing_it(umask_027, monkeypatch):
    assert files.umask() == 0o027 and files.file_mode() == 0o640
    assert os.umask(0o027) == 0o027  # still set

    def no_proc(*a, **k):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(files, "open", no_proc, raising=False)  # no /proc (macOS): the os.umask swap
    assert files.umask() == 0o027
    assert os.umask(0o027) == 0o027


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o027, 0o640)])
def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path, mask, expected):
    old = os.umask(mask)
    try:
        files.atomic_write(tmp_path / "a.json", lambda p: Path(p).write_text("new\n"))
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.json") == expected == mode(tmp_path / "plain.txt")
    assert (tmp_path / "a.json").read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "plain.txt"]  # no temporary file left


def test_a_writer_that_puts_its_own_0600_file_there_still_gets_the_umask_mode(tmp_path, umask_027):
    """safetensors' save_file writes a temporary file of its own (0600) and renames it over ours."""
    import tempfile

    def own_temp(p):
        fd, other = tempfile.mkstemp(dir=tmp_path)
        os.write(fd, b"tensors")
        os.close(fd)
        os.replace(other, p)

    files.atomic_write(tmp_path / "w.safetensors", own_temp)
    assert mode(tmp_path / "w.safetensors") == 0o640 and (tmp_path / "w.safetensors").read_bytes() == b"tensors"


def test_atomic_write_replaces_unless_told_not_to(tmp_path, umask_027):
    path = tmp_path / "eval.json"
    files.atomic_write(path, lambda p: Path(p).write_text("first"))
    files.atomic_write(path, lambda p: Path(p).write_text("second"))
    assert path.read_text() == "second" and mode(path) == 0o640
    with pytest.raises(FileExistsError):
        files.atomic_write(path, lambda p: Path(p).write_text("third"), replace=False)
    assert path.read_text() == "second"
    files.atomic_write(tmp_path / "new.json", lambda p: Path(p).write_text("fresh"), replace=False)
    assert (tmp_path / "new.json").read_text() == "fresh" and mode(tmp_path / "new.json") == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "new.json"]


def test_no_replace_without_hard_links(tmp_path, monkeypatch):
    """A file system without hard links: check, then rename; an existing file is still kept."""
    def no_link(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    files.atomic_write(tmp_path / "r.json", lambda p: Path(p).write_text("one"), replace=False)
    with pytest.raises(FileExistsError, match="r.json already exists"):
        files.atomic_write(tmp_path / "r.json", lambda p: Path(p).write_text("two"), replace=False)
    assert (tmp_path / "r.json").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")

    def broken(p):
        Path(p).write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        files.atomic_write(path, broken)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
