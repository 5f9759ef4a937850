"""A normal (wheel) install puts methods/ and tasks/ under reftx.*, never as top-level names."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_layout_and_import(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                    "-w", str(tmp_path / "whl")], check=True, capture_output=True)
    wheel = next((tmp_path / "whl").glob("reftx-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"reftx", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "reftx/methods/loreft.py" in names and "reftx/tasks/persona.py" in names
    assert "reftx/tasks/data/persona.jsonl" in names
    library = {str(f.relative_to(REPO)) for f in (REPO / "reftx").rglob("*.py")}
    assert library - set(names) == set()  # every layer's folder is packaged
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import reftx, reftx.methods.loreft, reftx.tasks.persona, importlib.util as u;"
            "print(reftx.__file__); print(u.find_spec('methods'), u.find_spec('tasks'));"
            "print(len(reftx.tasks.persona.Persona().load('train')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}).stdout.split("\n")
    assert out[0].startswith(str(target))
    assert out[1] == "None None"
    assert out[2] == "44"
