"""Short fixed runs of each shipped CPU experiment family, for before/after checks of a refactor.

    python benchmarks/families.py OUT.json [--only quickstart,math_brep]
    python benchmarks/families.py --compare BEFORE.json AFTER.json   # max |difference| per family

Each family runs through the command line (so the script does not depend on reftx's Python API,
which a refactor may change) with tiny overrides, at seed 0, into a temporary folder, and the
metrics of its results.json are collected. Two checkouts give the same numbers when every metric
agrees to 1e-6. About 6 minutes on 2 cores; needs the default model and the MiniLM wheel.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (family, command, experiment, overrides)
FAMILIES = [
    ("quickstart", "run", "experiments/quickstart.yaml",
     ["train.max_steps=4", "task.n_eval=4", "eval.max_new_tokens=8", "eval.show_examples=0"]),
    ("boolq_loreft", "run", "experiments/commonsense/boolq_loreft.yaml",
     ["train.max_steps=4", "task.n_train=32", "task.n_eval=16"]),
    ("math_brep", "run", "experiments/math/math_brep.yaml",
     ["train.max_steps=3", "task.n_train=24", "task.n_eval=4", "eval.max_new_tokens=16"]),
    ("counterfact_baft", "edit", "experiments/editing/counterfact_baft.yaml",
     ["task.n_eval=4", "train.max_steps=8", "recipe.mode=single", "recipe.parallel=2", "recipe.locality_prompts=4"]),
    ("tofu_grun", "run", "experiments/unlearning/tofu_grun.yaml",
     ["model.name=default", "task.options.retain_model=null", "train.max_steps=3", "task.options.n_utility=4",
      "task.options.n_forget_eval=4", "eval.max_new_tokens=8"]),
    ("hdfs_minilm_loreft", "run", "experiments/logs/hdfs_minilm_loreft.yaml",
     ["train.max_steps=4", "task.n_train=32", "task.n_eval=32"]),
]
CLI = "import sys; from reftx.cli import main; sys.exit(main(sys.argv[1:]))"  # `reftx` without the script


def _metrics(folder: Path) -> dict[str, float]:
    found = sorted(folder.rglob("results.json")) + sorted(folder.rglob("eval.json"))
    if not found:
        raise SystemExit(f"no results.json under {folder}")
    data = json.loads(found[0].read_text())
    out = {k: float(v) for k, v in data["metrics"].items() if isinstance(v, (int, float))}
    for log in folder.rglob("metrics.jsonl"):  # the training curve: every logged loss
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            out[f"loss@{rec['step']}"] = float(rec["loss"])
    for log in folder.rglob("edits.jsonl"):  # each edit's final loss
        for i, line in enumerate(log.read_text().splitlines()):
            out[f"edit_loss#{i}"] = float(json.loads(line)["loss"])
    return out


def run(out: Path, only: set[str] | None) -> None:
    results: dict[str, dict[str, float]] = {}
    for name, cmd, exp, overrides in FAMILIES:
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            args = [sys.executable, "-c", CLI, cmd, exp, *overrides, f"output_dir={tmp}", "--no-progress"]
            print("$ reftx", " ".join(args[3:]), flush=True)
            done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
            if done.returncode:
                print(done.stdout[-3000:], done.stderr[-3000:])
                raise SystemExit(f"{name} failed (rc {done.returncode})")
            results[name] = _metrics(Path(tmp))
        print(name, json.dumps(results[name]), flush=True)
    out.write_text(json.dumps(results, indent=1) + "\n")


def compare(before: Path, after: Path) -> int:
    """Max |difference| per family over the metrics both runs report; a metric the "after" run lost
    fails the comparison, a metric it added (a new protocol) is listed, not compared."""
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    worst_all = 0.0
    for fam in a:
        new = b.get(fam, {})
        lost = sorted(set(a[fam]) - set(new))
        diffs = [0.0 if math.isnan(a[fam][k]) and math.isnan(new[k]) else abs(a[fam][k] - new[k])
                 for k in a[fam] if k in new]
        worst = math.inf if lost else max(diffs, default=0.0)
        worst_all = max(worst_all, worst)
        added = sorted(set(new) - set(a[fam]))
        print(f"{fam:20s} {len(diffs):3d} metrics  max |diff| {worst:.2e}" + (f"  lost: {lost}" if lost else "")
              + (f"  (+{len(added)} new: {', '.join(added)})" if added else ""))
    return 0 if worst_all <= 1e-6 else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path, help="where to write the metrics (JSON)")
    ap.add_argument("--only", default="", help="comma-separated family names")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    a = ap.parse_args()
    if a.compare:
        sys.exit(compare(*a.compare))
    run(a.out, set(filter(None, a.only.split(","))) or None)
