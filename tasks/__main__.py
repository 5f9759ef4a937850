"""Commands of the task zoo besides ``reftx run``:

    python -m reftx.tasks tofu-finetune CONFIG [key=value ...]   # TOFU stage 1: train, then a merged HF checkpoint
    python -m reftx.tasks evaluate CONFIG [key=value ...]        # evaluate model.name as is (no interventions, no training)

``evaluate`` scores the experiment's model (a hub id or a local checkpoint such as stage 1's) on its
eval split with the task's metrics and writes ``{run_dir}/results.json`` (config hash, metrics, wall
time) and ``samples.jsonl`` (the predictions); the experiment's interventions, lora and train
sections are ignored.
"""
from __future__ import annotations

import json
import sys
import time

from reftx.errors import ReftError


def evaluate(args: list[str]) -> int:
    from reftx.config import config_hash
    from reftx.data import use_chat
    from reftx.experiment import load_experiment
    from reftx.runner import _versions, _write_json, load_base, load_task, report, splits

    t0 = time.perf_counter()
    exp = load_experiment(args[0], args[1:])
    task = load_task(exp)
    eval_split = splits(exp, task)[1]
    examples = task.examples(eval_split, exp.task.n_eval, exp.seed)
    model, tok = load_base(exp)
    metrics, preds = task.evaluate(model, tok, examples, exp.eval, use_chat(tok, exp.model.chat_template))
    results = {"name": exp.name, "config_hash": config_hash(exp.to_dict()), "model": exp.model.name,
               "task": task.name, "eval_split": eval_split, "n_eval": len(examples), "metrics": metrics,
               "trainable_parameters": 0, "wall_seconds": time.perf_counter() - t0, "versions": _versions()}
    exp.run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(exp.run_dir / "results.json", results)
    with (exp.run_dir / "samples.jsonl").open("w") as f:
        for ex, pred in zip(examples, preds):
            f.write(json.dumps({"prompt": ex.prompt, "gold": str(ex.gold), "after": pred}) + "\n")
    report(results, [], None, [])
    return 0


def main(argv: list[str] | None = None) -> int:
    from .tofu_finetune import main as tofu_finetune

    commands = {"tofu-finetune": tofu_finetune, "evaluate": evaluate}
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in commands:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        return commands[args[0]](args[1:])
    except ReftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
