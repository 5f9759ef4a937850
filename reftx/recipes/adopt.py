"""``reftx adopt FOLDER``: a ``save_pretrained`` folder (the Python path, the TRL adapters) becomes
a full run folder, so ``reftx eval``, ``reftx lm-eval`` and ``reftx push`` work on it.

The folder's ``reft_config.json`` is the truth about the interventions: they replace the
experiment's ``interventions:``. The experiment (or, with ``--task``, one built from the folder's
base model and that task) supplies the model, task and eval settings. The new run folder holds
``config.yaml``, ``intervention/`` (a copy; the source folder is never touched), ``results.json``
(the task's metrics on its eval set, ``train.adopted_from`` naming the source) and ``samples.jsonl``.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from reftx.config.hashing import config_hash
from reftx.config.schema import SCHEMA_VERSION, Experiment
from reftx.core.convert import dump_yaml, from_dict
from reftx.core.errors import ConfigError, ReftError
from reftx.engine.serialization import CONFIG_NAME, read_config
from reftx.runs.folder import run_folder


def experiment_for(folder: Path, exp: Experiment | None, task: str | None, name: str | None,
                   output_dir: str | None) -> Experiment:
    """The experiment of the adopted run: ``exp`` (or one built for ``task`` on the folder's base
    model) with the folder's interventions; ``name``/``output_dir`` override when given."""
    meta = read_config(folder / CONFIG_NAME)
    if exp is None:
        base = (meta.get("model") or {}).get("name_or_path") or ""
        if not task:
            raise ConfigError("--task", "adopting a folder needs an experiment file or --task NAME (its eval set and metrics)")
        if not base:
            raise ReftError(f"{folder / CONFIG_NAME} names no base model (model.name_or_path); give an experiment file "
                            "whose model.name is the base the interventions were trained on")
        exp = from_dict(Experiment, {"schema": SCHEMA_VERSION, "name": name or folder.name, "model": {"name": base}, "task": {"name": task},
                                     "interventions": meta["interventions"]})
    changes: dict[str, Any] = {"interventions": [dict(e) for e in meta["interventions"]]}
    if name:
        changes["name"] = name
    if output_dir:
        changes["output_dir"] = output_dir
    return dataclasses.replace(exp, **changes)


def adopt(folder: str | Path, exp: Experiment | None = None, task: str | None = None, name: str | None = None,
          output_dir: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Make ``folder`` a run (see the module docstring); returns results.json's content and ``run_dir``."""
    from reftx.eval.generate import evaluate
    from reftx.recipes import train as runner

    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise ReftError(f"{folder} holds no {CONFIG_NAME}: give the folder model.save_pretrained(...) wrote")
    exp = experiment_for(folder, exp, task, name, output_dir)
    t0 = time.perf_counter()
    with run_folder(exp.run_dir, f"reftx adopt {exp.name}", say=runner._plain) as out:
        shutil.copytree(folder, out.path / "intervention", copy_function=shutil.copy2)
        resolved = exp.to_dict()
        out.text("config.yaml", dump_yaml(resolved))
        task_obj = runner.load_task(exp)
        examples = runner.eval_examples(exp, task_obj)
        model, tok = runner.trained_model(exp, out.path)  # a folder trained for another model fails here, named
        chat = runner.use_chat(tok, exp.model.chat_template)
        examples, cfg = runner._fit_eval(exp, task_obj, tok, model, examples, chat)
        metrics, preds = evaluate(model, tok, task_obj, examples, cfg, chat, show_progress,
                                  runner.reference_loaders(task_obj))
        results = {"name": exp.name, "config_hash": config_hash(resolved), "task": task_obj.name,
                   "eval_split": runner.splits(exp, task_obj)[1], "n_eval": len(examples), "metrics": metrics,
                   "trainable_parameters": model.count_parameters(), "train": {"adopted_from": str(folder.resolve())}}
        results = out.results(results, started=t0)
        runner.write_samples(out, examples, preds)
        runner.report(results, [], None, [])
        return {**results, "run_dir": str(out.path)}


__all__ = ["adopt", "experiment_for"]
