"""Validation during training: dev metrics every ``train.eval_every`` steps, the best checkpoint, early stopping.

The run's ``dev`` callable (built by the recipe, which knows the task: reftx.recipes.dev) scores the
model on the dev split and returns ``{"loss": ..., <task metric>: ...}``. Here that becomes:

- a ``metrics.jsonl`` row ``{"step", "epoch", "dev/loss", "dev/<metric>", ...}`` and the same scalars to
  every tracker (rows without a training ``loss``: readers tell them apart by the ``dev/`` keys);
- the best value of ``train.eval_metric`` so far (``loss``: lower is better; a task metric: higher),
  its step, and the evaluations in a row without improvement, all kept in the checkpoint's state, so a
  resumed run continues the same bookkeeping;
- a checkpoint at every new best, which rotation (``train.keep_checkpoints``) never deletes while it is
  the best: ``checkpoints/step-B`` is the best checkpoint, reported in the run's summary;
- ``train.early_stopping`` (patience, in evaluations): the job ends at that step, and the state says
  so, so ``--resume`` of a stopped run has nothing left to train.

The evaluation runs with the model in eval mode and every RNG (torch, CUDA, Python, NumPy) set aside
and restored after, so training takes the same steps with or without it (tested bit for bit).
"""
from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from reftx.core.errors import ConfigError

DevEval = Callable[[Any], dict[str, float]]  # the model -> {"loss": ..., metric: ...} on the dev split


def due(step: int, every: int, last: int) -> bool:
    """Whether step ``step`` evaluates: every ``every`` steps, and the last step ``last``."""
    return every > 0 and (step % every == 0 or step == last)


def lower_is_better(metric: str) -> bool:
    return metric == "loss"


def improved(value: float, best: float | None, metric: str) -> bool:
    """Strictly better than ``best`` (None: nothing yet); NaN never improves."""
    if math.isnan(value):
        return False
    return best is None or (value < best if lower_is_better(metric) else value > best)


@contextmanager
def set_aside(model: Any) -> Iterator[None]:
    """Eval mode and no gradients inside; every RNG state and the model's mode as before, after."""
    states = (random.getstate(), np.random.get_state())
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    was_training = model.training
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)
            random.setstate(states[0])
            np.random.set_state(states[1])


def evaluate(dev: DevEval, model: Any, metric: str) -> dict[str, float]:
    """The dev metrics of ``model``; ``metric`` (train.eval_metric) must be among them."""
    with set_aside(model):
        values = {k: float(v) for k, v in dev(model).items()}
    if metric not in values:
        raise ConfigError("train.eval_metric", f"{metric!r} is not a dev metric of this run (it has: "
                          f"{', '.join(sorted(values))}); choose one of those")
    return values


def update(prog: Any, values: dict[str, float], metric: str, patience: int) -> bool:
    """Record one evaluation at ``prog.step`` in ``prog`` (best, best_step, bad_evals, stopped);
    returns whether it is a new best."""
    value = values[metric]
    if improved(value, prog.best, metric):
        prog.best, prog.best_step, prog.bad_evals = value, prog.step, 0
        return True
    prog.bad_evals += 1
    if patience and prog.bad_evals >= patience:
        prog.stopped = True
    return False


def line(prog: Any, steps: int, values: dict[str, float], metric: str) -> str:
    """The plain progress line of one evaluation."""
    shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
    best = f"best {metric} {prog.best:.4g} at step {prog.best_step}" if prog.best is not None else "no best yet"
    stop = "  early stop" if prog.stopped else ""
    return f"dev   step {prog.step}/{steps}  {shown}  ({best}){stop}"


def summary(prog: Any, metric: str) -> dict[str, Any] | None:
    """What the run's summary reports about validation (None: no evaluation ran)."""
    if prog.best_step is None:
        return None
    return {"metric": f"dev/{metric}", "value": prog.best, "step": prog.best_step,
            "checkpoint": f"checkpoints/step-{prog.best_step}", "stopped_early": prog.stopped}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


__all__ = ["DevEval", "due", "evaluate", "improved", "line", "set_aside", "summary", "update"]
