"""`reftx check KIND --import my_variant.py`: the shipped contract suite runs on an out-of-tree
primitive, passes for a correct one and names the broken contract of a wrong one."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import reftx.cli.commands as cli

REPO = Path(__file__).resolve().parents[2]

GOOD = '''
from reftx.parts import DeltaConfig, register_primitive, scale_bias

register_primitive("my_gain", DeltaConfig, scale_bias, "h' = a * h + c (RED under another name)")
'''

# keeps the shape but not the dtype: bf16 in, fp32 out
BROKEN = '''
from dataclasses import dataclass

import torch
from reftx.core.intervention import Intervention, register_intervention


@register_intervention("my_upcast")
class Upcast(Intervention):
    @dataclass(frozen=True)
    class Config:
        scale: float = 1.0

    def __init__(self, config, dim):
        super().__init__(config, dim)
        self.b = torch.nn.Parameter(torch.zeros(dim))

    def forward(self, h, ctx):
        return h.float() + self.b.float()
'''


def _check(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess:
    variant = tmp_path / "my_variant.py"
    variant.write_text(source)
    return subprocess.run([sys.executable, "-m", "reftx.cli", "--import", str(variant), "check", *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)


def test_check_passes_a_correct_out_of_tree_primitive(tmp_path):
    done = _check(tmp_path, GOOD, "my_gain", "--pytest=-v")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = [ln.split()[0] for ln in done.stdout.splitlines() if " PASSED" in ln]
    assert len(ran) >= 20 and all("my_gain" in t for t in ran), ran  # only the named kind, every contract test
    assert {t.split("::")[1].split("[")[0] for t in ran} >= {
        "test_shape_and_dtype_kept", "test_gradients_reach_only_interventions", "test_save_load_identical",
        "test_unscheduled_and_padded_positions_untouched", "test_config_rejects_unknown_option"}


def test_check_names_the_contract_a_broken_primitive_breaks(tmp_path):
    done = _check(tmp_path, BROKEN, "my_upcast", "--pytest=-k=shape_and_dtype or save_load")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAILED" in done.stdout and "test_shape_and_dtype_kept[my_upcast]" in done.stdout
    assert "test_save_load_identical[my_upcast] PASSED" in done.stdout or "1 failed, 1 passed" in done.stdout


def test_check_an_unknown_kind_is_one_line(capsys):
    assert cli.main(["check", "loreftt"]) == 2
    assert "error: kind: unknown intervention 'loreftt' (did you mean 'loreft'?)" in " ".join(capsys.readouterr().err.split())
