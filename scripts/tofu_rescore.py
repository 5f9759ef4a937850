"""Re-score finished TOFU runs with the current ROUGE-L scorer, from their samples.jsonl (no model run).

ROUGE-L recall is the only TOFU metric computed from the greedy answers, and every run keeps its
answers in ``samples.jsonl``; so a change of scorer (tasks/tofu_metrics.py ``rouge_l_recall``) needs no
new generation. For each run directory this recomputes ``rougeL_recall_<set>`` (split ``tofu``,
sets from the run's own config) or ``rougeL_recall`` (other splits, e.g. stage 1's ``tofu_qa``),
then Model Utility from the new ROUGE and the stored prob / truth ratio, and writes
``{run}/rescored.json`` (results.json with the new metrics and ``"rescored_from"``):

    python scripts/tofu_rescore.py runs/tofu_grun_npo_forget01 [runs/... ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from reftx.config.schema import load_experiment
from reftx.core.files import atomic_write
from reftx.recipes.train import load_task
from reftx.tasks.tofu_metrics import rouge_l_recall
from reftx.tasks.tofu_metrics import UTILITY_SETS, model_utility


def rescore(run_dir: Path) -> dict[str, float]:
    results = json.loads((run_dir / "results.json").read_text())
    samples = [json.loads(ln) for ln in (run_dir / "samples.jsonl").read_text().splitlines() if ln.strip()]
    recall = [rouge_l_recall(s["after"], s["gold"]) for s in samples]
    metrics = dict(results["metrics"])
    if results["eval_split"] == "tofu":  # TOFU's metrics: one recall per set
        exp = load_experiment(run_dir / "config.yaml")
        set_of = {(ex.prompt, str(ex.gold)): ex.meta["set"] for ex in load_task(exp).load("tofu")}
        by_set: dict[str, list[float]] = {}
        for s, r in zip(samples, recall, strict=True):
            by_set.setdefault(set_of[(s["prompt"], s["gold"])], []).append(r)
        for name, values in by_set.items():
            metrics[f"rougeL_recall_{name}"] = sum(values) / len(values)
        if all(f"prob_{s}" in metrics for s in UTILITY_SETS):
            metrics["model_utility"] = model_utility(metrics)
    else:
        metrics["rougeL_recall"] = sum(recall) / len(recall)
    out = {**results, "metrics": metrics, "rescored_from": "samples.jsonl"}
    atomic_write(run_dir / "rescored.json", lambda p: Path(p).write_text(json.dumps(out, indent=2) + "\n"))
    return metrics


def main(args: list[str]) -> int:
    if not args:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for d in args:
        m = rescore(Path(d))
        print(d, json.dumps({k: round(v, 4) for k, v in m.items() if k.startswith(("rougeL", "model_utility"))}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
