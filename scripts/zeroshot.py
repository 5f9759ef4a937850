"""Zero-shot baseline: a task's metrics for the untrained base model on an experiment's eval subset.

    python scripts/zeroshot.py experiments/commonsense/boolq_loreft.yaml [key=value ...]

Same model, task options, eval subset (n_eval, seed) and eval settings as ``reftx run`` would use;
no training. Prints one JSON line (metrics, the gold answers' counts, wall time) and writes the
predictions to ``{output_dir}/{name}-zeroshot.jsonl``.
"""
import json
import sys
import time
from pathlib import Path

import reftx.tasks  # noqa: F401  (registers the zoo)
from reftx.data import use_chat
from reftx.experiment import load_experiment
from reftx.runner import load_base, load_task, splits

t0 = time.perf_counter()
exp = load_experiment(sys.argv[1], sys.argv[2:])
task = load_task(exp)
examples = task.examples(splits(exp, task)[1], exp.task.n_eval, exp.seed)
base, tok = load_base(exp)
metrics, preds = task.evaluate(base, tok, examples, exp.eval, use_chat(tok, exp.model.chat_template), False)
out = Path(exp.output_dir) / f"{exp.name}-zeroshot.jsonl"
out.parent.mkdir(parents=True, exist_ok=True)
with out.open("w") as f:
    for ex, pred in zip(examples, preds):
        f.write(json.dumps({"prompt": ex.prompt, "gold": str(ex.gold), "pred": pred}) + "\n")
gold = [str(ex.gold) for ex in examples]
print(json.dumps({"config": sys.argv[1], "n_eval": len(examples), "metrics": metrics,
                  "gold_counts": {g: gold.count(g) for g in sorted(set(gold))},
                  "wall_seconds": round(time.perf_counter() - t0, 1)}))
