"""Plugins from outside the repository: a tiny out-of-tree package registers a primitive through a
``reftx.plugins`` entry point, and a loose module through ``imports:`` in YAML; each runs from YAML,
saves, and reloads in a fresh process that only has the package on its path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

VARIANT = '''
"""A ReFT variant written outside reftx: h' = h + a (one learned shift vector)."""
from dataclasses import dataclass

import torch
from torch import nn

from reftx import Intervention, register_intervention


@register_intervention("{kind}")
class Shift(Intervention):
    """h' = h + a"""

    @dataclass(frozen=True)
    class Config:
        init: float = 0.0

    def __init__(self, config, dim):
        super().__init__(config, dim)
        self.shift = nn.Parameter(torch.full((dim,), float(config.init)))

    def forward(self, h, ctx):
        return h + self.shift.to(h.dtype)
'''


def make_package(root: Path) -> Path:
    """An installed-looking distribution on ``root``: the package plus a .dist-info with an entry point."""
    pkg = root / "shift_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "variant.py").write_text(VARIANT.format(kind="shift_plugin"))
    info = root / "shift_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shift-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[reftx.plugins]\nshift = shift_pkg.variant\n")
    return root


def reftx_cli(args: list[str], path: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "reftx.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def experiment(tmp_path: Path, tiny_dir: Path, kind: str, imports: list[str] | None = None) -> Path:
    exp = {"schema": 1, "name": kind, "output_dir": str(tmp_path / "runs"), "model": {"name": str(tiny_dir)},
           "task": {"name": "persona", "n_eval": 2},
           "interventions": [{"kind": kind, "layers": [1], "positions": "last_prompt", "init": 0.5}],
           "train": {"max_steps": 2, "batch_size": 4, "log_every": 1}, "eval": {"max_new_tokens": 3,
                                                                              "show_examples": 0}}
    if imports:
        exp["imports"] = imports
    p = tmp_path / f"{kind}.yaml"
    p.write_text(yaml.safe_dump(exp))
    return p


RELOAD = textwrap.dedent('''
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM
    import reftx
    base = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    model = reftx.ReftModel.from_pretrained(base, sys.argv[2])
    mod = dict(model.named_interventions())["L1.block_output.last_prompt"]
    print(json.dumps({"kind": mod.kind, "module": type(mod).__module__, "shift0": float(mod.shift[0])}))
''')


def test_entry_point_plugin_runs_from_yaml_and_reloads_in_a_fresh_process(tmp_path, tiny_dir):
    site = make_package(tmp_path / "site")
    listed = reftx_cli(["ls", "interventions"], site, tmp_path)
    assert listed.returncode == 0 and "shift_plugin" in listed.stdout and "slot_bank" not in listed.stdout
    run = reftx_cli(["run", str(experiment(tmp_path, tiny_dir, "shift_plugin")), "--no-progress"], site, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    saved = tmp_path / "runs" / "shift_plugin" / "intervention"
    meta = json.loads((saved / "reft_config.json").read_text())
    assert meta["modules"] == {"shift_plugin": "shift_pkg.variant"}
    # a fresh interpreter with the package on its path: from_pretrained finds the kind by itself
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", RELOAD, str(tiny_dir), str(saved)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["kind"] == "shift_plugin" and got["module"] == "shift_pkg.variant"
    assert got["shift0"] != 0.5  # the trained value, not the init


def test_yaml_imports_a_loose_module(tmp_path, tiny_dir):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "my_shift.py").write_text(VARIANT.format(kind="my_shift"))
    exp = experiment(tmp_path, tiny_dir, "my_shift", imports=["my_shift"])
    without = reftx_cli(["plan", str(exp)], tmp_path / "nothing", tmp_path)  # module not on the path
    assert without.returncode == 2 and "imports.0: cannot import 'my_shift'" in without.stderr
    ok = reftx_cli(["run", str(exp), "--no-progress"], tmp_path / "mine", tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    by_file = reftx_cli(["--import", str(tmp_path / "mine" / "my_shift.py"), "ls", "interventions"], tmp_path, tmp_path)
    assert "my_shift" in by_file.stdout


MYPLUG = VARIANT.format(kind="my_shift2") + '''

from reftx.parts import SubspaceConfig, register_primitive, subspace

register_primitive("my_loreft2", SubspaceConfig, subspace(True, "linear", True), "LoReFT, registered out of tree")
'''

SAVE = textwrap.dedent('''
    import sys
    import torch
    from transformers import AutoModelForCausalLM
    import myplug  # noqa: F401  (registers my_shift2 and my_loreft2)
    import reftx
    base = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    model = reftx.attach(base, [
        {"kind": "my_shift2", "layers": [1], "positions": "last_prompt", "init": 0.5},
        {"kind": "my_loreft2", "rank": 2, "layers": [2], "positions": "last_prompt", "bound": "hinge",
         "bound_tau": 0.1, "bound_lambda": 0.5}])
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.add_(0.1)
    model.save_pretrained(sys.argv[2])
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.save(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, sys.argv[3])
''')

LOAD = textwrap.dedent('''
    import sys
    import torch
    from transformers import AutoModelForCausalLM
    import reftx
    base = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    model = reftx.ReftModel.from_pretrained(base, sys.argv[2])  # no import of myplug here
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits,
                               torch.load(sys.argv[3]), rtol=0, atol=0)
    mods = dict(model.named_interventions())
    hinge = [m.loss() for m in mods["L2.block_output.last_prompt"].modifiers()]
    print(sorted(type(m).__module__ for m in mods.values()), [sorted(h) for h in hinge])
''')


def test_both_registration_paths_reload_in_a_fresh_interpreter(tmp_path, tiny_dir):
    """A user module registering a class (@register_intervention) and a composition with a bound
    modifier (register_primitive): attach + save_pretrained in one process, from_pretrained in
    another that never imports the module itself. Both kinds record their defining module."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "myplug.py").write_text(MYPLUG)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "mine"), str(REPO)])}
    saved, logits = tmp_path / "saved", tmp_path / "logits.pt"
    run = [sys.executable, "-c"]
    done = subprocess.run(run + [SAVE, str(tiny_dir), str(saved), str(logits)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((saved / "reft_config.json").read_text())
    assert meta["modules"] == {"my_shift2": "myplug", "my_loreft2": "myplug"}
    again = subprocess.run(run + [LOAD, str(tiny_dir), str(saved), str(logits)], env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip().splitlines()[-1] == "['myplug', 'reftx.parts.compose'] [['bound_hinge']]"
