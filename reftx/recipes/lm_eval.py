"""``reftx lm-eval``: lm-evaluation-harness tasks on a finished run's trained model (the adapter
itself, ``ReftLM``, is reftx.integrations.lm_eval).

    from reftx.recipes.lm_eval import from_run
    lm = from_run("runs/quickstart", batch_size=8)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reftx.config.hashing import config_hash
from reftx.config.schema import load_experiment
from reftx.data.encoding import use_chat
from reftx.integrations.lm_eval import (  # noqa: F401  (the pre-0.2 reftx.recipes.lm_eval names, re-exported)
    INSTALL_HINT,
    OUTPUT_DIR,
    dataset_bars,
    hflm,
    reft_lm_class,
    request_rows,
    score_requests,
    task_manager,
)
from reftx.recipes.train import trained_model
from reftx.runs.folder import RunFolder, locked, run_folder_at, versions


def __getattr__(name: str) -> Any:
    if name == "ReftLM":  # built on first use, so that importing this module does not import lm_eval
        return reft_lm_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _load(run_dir: Path) -> tuple[Any, Any, Any]:
    exp = load_experiment(run_folder_at(run_dir) / "config.yaml")
    return (exp, *trained_model(exp, run_dir))


def from_run(run_dir: str | Path, batch_size: int = 1, **kwargs: Any) -> Any:
    """A ``ReftLM`` over a finished run's trained model (``config.yaml`` and ``intervention/``)."""
    hflm()
    _, model, tok = _load(Path(run_dir))
    return reft_lm_class()(model, tok, batch_size=batch_size, **kwargs)


def evaluate_run(run_dir: str | Path, tasks: list[str], include_path: str | None = None,
                 limit: float | None = None, batch_size: int = 8, chat_template: bool | None = None,
                 show_progress: bool = True) -> tuple[dict[str, float], Path]:
    """``reftx lm-eval``: lm-eval ``tasks`` on a finished run's trained model. Writes a new
    ``{run_dir}/lm_eval/{t1}+{t2}.json`` (lm-eval's results without samples, plus the run's name,
    config hash and versions; ``{t1}+{t2}-2.json``, ``-3``, ... when earlier calls wrote that name,
    never replacing one) and nothing else; returns ({task/metric: value}, that path). A path that
    is not a run folder fails before anything is created. ``chat_template``: None applies the
    tokenizer's chat template as the run did (model.chat_template)."""
    hflm()
    import lm_eval

    run_dir = run_folder_at(run_dir)
    manager = task_manager(tasks, include_path)
    with locked(run_dir, "reftx lm-eval"):  # never while a run still writes the folder
        exp, model, tok = _load(run_dir)
        chat = use_chat(tok, exp.model.chat_template if chat_template is None else chat_template)
        lm = reft_lm_class()(model, tok, batch_size=batch_size, show_progress=show_progress)
        with dataset_bars(show_progress):
            out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                          apply_chat_template=chat, log_samples=False)
        record = {"run": exp.name, "config_hash": config_hash(exp.to_dict()), "tasks": list(tasks),
                  "limit": limit, "chat_template": chat,
                  "versions": {**versions(), "lm_eval": lm_eval.__version__},
                  "lm_eval": {k: v for k, v in out.items() if k != "samples"}}
        (run_dir / OUTPUT_DIR).mkdir(exist_ok=True)
        folder = RunFolder(run_dir)
        path = folder.text(folder.free_name(f"{OUTPUT_DIR}/{'+'.join(tasks)}.json"),
                           json.dumps(record, indent=2, default=str) + "\n", replace=False)
    metrics = {f"{task}/{name.removesuffix(',none')}": float(v) for task, res in out["results"].items()
               for name, v in res.items()
               if "," in name and "_stderr," not in name and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return metrics, path


__all__ = ["evaluate_run", "from_run"]
