"""The two tutorials under docs/ run end to end on a tiny random model (issue 31, point 5): what each
one says it does happens (files written, the reload is exact, the contract suite passes, both runs
write their results)."""
from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import torch

import reftx
from reftx.core.intervention import INTERVENTIONS, Context

REPO = Path(__file__).resolve().parents[2]
PERSONA_METRICS = ["persona_open", "persona_close", "distinct_2"]


def test_the_pyreft_quickstart_tutorial(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tutorial = runpy.run_path(str(REPO / "docs" / "tutorial_pyreft_quickstart.py"), run_name="tutorial")
    got = tutorial["main"](["--model", str(tiny_dir), "--steps", "4", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert got["losses"][-1] < got["losses"][0]  # the loop trains
    assert re.search(r"^trainable params: 260 \|\| all params: [\d,]+ \|\| trainable%: [\d.]+$", out, re.M)
    assert "L2.block_output.last_prompt" in out  # plan() printed the group: layer 0.5 of 4
    assert got["saved"] == tmp_path / "out" / "emoji-reft"
    assert sorted(p.name for p in got["saved"].iterdir()) == ["interventions.safetensors", "reft_config.json"]
    base, _ = reftx.load_model(str(tiny_dir))  # a fresh base: the saved folder alone gives the trained logits
    again = reftx.ReftModel.from_pretrained(base, got["saved"])
    with torch.no_grad():
        assert torch.equal(again(**got["batch"]).logits, got["trained_logits"])
    again.detach()
    run_dir = Path(got["results"]["run_dir"])
    assert run_dir == tmp_path / "out" / "tutorial-pyreft"
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["metrics"]) == PERSONA_METRICS and results["train"]["steps"] == 4
    assert {"config.yaml", "metrics.jsonl", "loss.png", "intervention"} <= {p.name for p in run_dir.iterdir()}


def test_the_new_variant_tutorial(tiny_dir, tmp_path):
    """As a script (its contract check runs pytest itself); then its trained run reloads and keeps norms."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "docs" / "tutorial_new_variant.py"), "--model", str(tiny_dir),
                           "--steps", "2", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "keepnorm_reft: 516 parameters at width 64, rank 4 (as LoReFT)" in done.stdout  # r·d + r·d + r
    passed = re.search(r"^(\d+) passed", done.stdout, re.M)
    assert passed and int(passed.group(1)) >= 20 and "failed" not in done.stdout  # the whole contract suite
    results = {k: json.loads((tmp_path / "out" / f"tutorial-{k}" / "results.json").read_text())
               for k in ("keepnorm_reft", "loreft")}
    for kind, res in results.items():
        assert list(res["metrics"]) == PERSONA_METRICS and res["train"]["steps"] == 2, kind
    rows = {*PERSONA_METRICS, "trainable_parameters"}  # the printed comparison: name, then one value per kind
    table = {ln.split()[0]: ln.split()[1:] for ln in done.stdout.splitlines() if ln.split()[:1] and ln.split()[0] in rows}
    assert table["persona_open"] == [f"{results[k]['metrics']['persona_open']:.4f}" for k in results]
    assert table["trainable_parameters"] == [str(results[k]["trainable_parameters"]) for k in results]
    saved = tmp_path / "out" / "tutorial-keepnorm_reft" / "intervention"
    assert json.loads((saved / "reft_config.json").read_text())["interventions"][0]["kind"] == "keepnorm_reft"
    try:
        runpy.run_path(str(REPO / "docs" / "tutorial_new_variant.py"), run_name="tutorial_new_variant")  # registers it
        model = reftx.ReftModel.from_pretrained(reftx.load_model(str(tiny_dir))[0], saved)
        for _, mod in model.named_interventions():
            h = torch.randn(6, 32)
            assert torch.allclose(mod(h, Context(torch.zeros(6, dtype=torch.long), 1)).norm(dim=-1), h.norm(dim=-1))
        model.detach()
    finally:
        INTERVENTIONS._items.pop("keepnorm_reft", None)
