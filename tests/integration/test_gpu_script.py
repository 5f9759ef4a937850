"""benchmarks/gpu.sh's dry run (``--device cpu``): the script a lent GPU runs works end to end before
one is lent. Every section must finish and print its table; FSDP is skipped (accelerate runs it only on
GPUs). A few minutes: the script starts about ten Python processes (marked slow and multiprocess)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu.sh"


def run(*args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_dry_run_goes_through_every_section(tmp_path):
    p = run("--device", "cpu", "--out", str(tmp_path))
    out = p.stdout
    assert p.returncode == 0, out[-5000:] + p.stderr[-2000:]
    summary = out[out.index("=== summary (cpu) ==="):]
    statuses = dict(re.findall(r"^\| ([\w-]+) \| ([^|]+?) \| \d+ \|$", summary, re.M))
    assert statuses == {"overhead": "ok", "step-7b": "ok", "generate-7b": "ok", "equivalence": "ok", "quickstart": "ok",
                        "fsdp": "skipped: accelerate runs FSDP only on GPUs"}
    assert re.search(r"^\| tiny 32-layer 1x32 \| [\d.]+ \|.* \| ok \|$", out, re.M)  # overhead: the loss check holds
    step = {m[0]: m[1] for m in re.findall(r"^\| (F0|floor|reftx|lora|reftx\+gc) \| ([\d.]+) \|", out, re.M)}
    assert sorted(step) == sorted(["F0", "floor", "reftx", "lora", "reftx+gc"])  # every contestant timed
    assert "reftx disabled == plain HF generate: True; the edit changes the output: True" in out
    assert re.search(r"^=== equivalence \(cpu\) ===\n\.{4,} +\[100%\]$", out, re.M)  # pytest -qq: a dot a test
    assert (tmp_path / "runs" / "quickstart" / "results.json").is_file()
    headers = re.findall(r"^=== ([\w-]+) \(cpu\) ===$", (tmp_path / "gpu.log").read_text(), re.M)
    assert headers == ["overhead", "step-7b", "generate-7b", "equivalence", "quickstart", "summary"]  # all kept


def test_the_vllm_part_on_a_cpu_says_why_it_is_skipped(tmp_path):
    p = run("--device", "cpu", "--vllm", "--out", str(tmp_path), timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    summary = p.stdout[p.stdout.index("=== summary (cpu) ==="):]
    assert re.findall(r"^\| ([\w-]+) \| ([^|]+?) \| \d+ \|$", summary, re.M) == [
        ("vllm", "skipped: on a CPU the vLLM stage (scripts/test-vllm.sh) runs these")]


def test_an_unknown_device_is_refused():
    p = run("--device", "tpu", timeout=60)
    assert (p.returncode, p.stderr.strip()) == (2, "--device must be cuda or cpu, got tpu")
