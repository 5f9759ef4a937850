"""Experiment trackers (``train.log_with: [tensorboard, wandb, mlflow, ...]``) through accelerate.

A run with trackers logs exactly the scalars of each ``metrics.jsonl`` row (at that row's step) and,
at its start, the resolved experiment flattened to dotted keys (``train.lr``, ``interventions``
as JSON text). Tracker output goes under ``{run_dir}/trackers/`` (TensorBoard:
``trackers/{name}/events.out.tfevents.*``; wandb: ``trackers/wandb/`` unless ``WANDB_DIR`` is set;
dvclive, swanlab: ``trackers/dvclive/``, ``trackers/swanlab/``; mlflow, comet_ml, clearml, trackio and
aim keep their own stores, set by their environment variables). Nothing here runs for the default
``log_with: []``.

Built on accelerate 1.15's tracking API (accelerate/tracking.py: ``GeneralTracker``,
``TensorBoardTracker``, ``filter_trackers``; accelerate/accelerator.py: ``init_trackers``, ``log``,
``end_training``) with two differences:

* an unavailable tracker is an error naming the package to install (accelerate only logs it at
  debug level and trains without it);
* at the end each tracker is finished (what ``end_training`` does for them) without
  ``end_training``'s ``destroy_process_group``: the run still synchronises its processes afterwards.

Resuming starts the trackers again; TensorBoard gets ``purge_step`` = the checkpoint's step + 1,
so the events a killed run logged after its last checkpoint are hidden, as they are dropped from
``metrics.jsonl``. Other trackers start a new run on resume.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reftx.core.errors import ReftError

SUBDIR = "trackers"
PACKAGES = {"comet_ml": "comet-ml", "dvclive": "dvclive", "tensorboard": "tensorboard", "wandb": "wandb",
            "mlflow": "mlflow", "clearml": "clearml", "aim": "aim", "trackio": "trackio", "swanlab": "swanlab"}


def accelerator_kwargs(names: Sequence[str], run_dir: Path) -> dict[str, Any]:
    """``log_with`` and ``project_dir`` for the run's Accelerator (nothing when no tracker is asked for)."""
    if not names:
        return {}
    check_available(names)
    return {"log_with": list(names), "project_dir": str(Path(run_dir) / SUBDIR)}


def check_available(names: Sequence[str]) -> None:
    """Every named tracker's package is installed ("all": whichever are), and wandb has credentials."""
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    missing = [n for n in names if n != "all" and n not in available]
    if missing:
        pkgs = " ".join(PACKAGES.get(n, n) for n in missing)
        raise ReftError(f"train.log_with: {', '.join(missing)} not installed; pip install {pkgs} "
                        f"(tensorboard: pip install 'reftx[trackers]'), or remove it from train.log_with")
    if "wandb" in names and not wandb_credentials():
        raise ReftError("train.log_with: wandb has no credentials (no WANDB_API_KEY, no `wandb login` entry in "
                        "~/.netrc) and cannot prompt here; run `wandb login`, or set WANDB_MODE=offline to log under "
                        "{run dir}/trackers/wandb and `wandb sync` later")


def wandb_credentials() -> bool:
    """Whether a wandb run can start without prompting: offline/disabled mode, an API key or identity
    token in the environment, a ~/.netrc (or $NETRC) entry for the wandb host, or a terminal to prompt on."""
    import netrc
    import os
    import sys
    from urllib.parse import urlparse

    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or sys.stdin.isatty():
        return True
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config dicts as ``{"train.lr": 0.001, ...}``; lists as JSON text, scalars as they are
    (what every tracker's hyperparameter store accepts)."""
    if not isinstance(config, dict):
        return {prefix: config if config is None or isinstance(config, (bool, int, float, str))
                else json.dumps(config, sort_keys=True, default=str)}
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and not value:
            out[name] = "{}"
        else:
            out.update(flatten(value, name))
    return out


def start(acc: Any, names: Sequence[str], project: str, config: dict[str, Any] | None, resumed_at: int) -> None:
    """``init_trackers`` with the flattened config; on resume, TensorBoard hides events after ``resumed_at``.
    Trackers with a local folder write under ``{run_dir}/trackers/``: wandb's ``dir`` (unless
    ``WANDB_DIR`` is set), dvclive's ``dir``, swanlab's ``logdir``. A tracker that fails to start is a
    one-line error naming it and the fix."""
    if not names:
        return
    import os

    local = Path(acc.project_dir)
    init_kwargs: dict[str, dict[str, Any]] = {"tensorboard": {"purge_step": resumed_at + 1}} if resumed_at else {}
    if not os.environ.get("WANDB_DIR"):
        (local / "wandb").mkdir(parents=True, exist_ok=True)  # wandb writes into an existing folder only
        init_kwargs["wandb"] = {"dir": str(local / "wandb")}
    init_kwargs["dvclive"] = {"dir": str(local / "dvclive")}
    init_kwargs["swanlab"] = {"logdir": str(local / "swanlab")}
    try:
        acc.init_trackers(project, config=flatten(config or {}), init_kwargs=init_kwargs)
    except Exception as e:  # a tracker's own start-up failure (credentials, network): name it and the fix
        first = (str(e).strip().splitlines() or [""])[0]
        raise ReftError(f"train.log_with: starting {', '.join(names)} failed ({type(e).__name__}: {first}); fix its "
                        "setup (wandb: `wandb login` or WANDB_MODE=offline), or remove it from train.log_with") from e


def log(acc: Any, row: dict[str, Any]) -> None:
    """One metrics.jsonl row: its scalars at its step."""
    values = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    acc.log(values, step=row["step"])


def end(acc: Any) -> None:
    """Close every started tracker (flushes TensorBoard's event file); safe to call twice."""
    for tracker in list(acc.trackers):
        tracker.finish()
    acc.trackers.clear()


__all__ = ["SUBDIR", "accelerator_kwargs", "check_available", "end", "flatten", "log", "start", "wandb_credentials"]
