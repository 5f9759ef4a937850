"""README's "Comparing methods" block, run as test_readme runs every block: the sweep of three
methods x three seeds on the quickstart's task (a short budget, the tiny 30-layer stand-in for the
default model), then `reftx report` on its folder."""
from __future__ import annotations

import csv
import json

from tests.integration.readme_env import SHORT, Env, commands, handles


@handles(("bash", "--grid experiments/sweeps/persona_methods.yaml"))
def compare_methods(env: Env, block: str):
    sweep, report = commands(block)
    env.link_experiments()
    rc, out, _ = env.reftx(sweep, *SHORT)  # the budget is set in every cell
    assert rc == 0, out
    folder = env.root / "runs" / "quickstart-sweep"
    cells = json.loads((folder / "sweep.json").read_text())["cells"]
    assert sorted((c["method"], c["status"]) for c in cells) == sorted(
        (m, "done") for m in ("loreft", "direft", "lora") for _ in range(3))
    assert env.reftx(report)[0] == 0
    with open(folder / "report" / "groups.csv") as f:
        groups = {row["group"]: row for row in csv.DictReader(f)}
    assert sorted(groups) == ["direft", "lora", "loreft"] and {g["n"] for g in groups.values()} == {"3"}, groups
    with open(folder / "report" / "pairs.csv") as f:
        pairs = {(row["a"], row["b"]) for row in csv.DictReader(f)}
    assert len(pairs) == 3  # every pair of methods, scored on the same held-out prompts
    assert "persona_open" in (folder / "report" / "report.md").read_text()
