"""The dev split's scorer of ``reftx run`` (``train.eval_every``; reftx.train.validation uses it).

The dev split is held out of the training split (``task.dev_size``, reftx.eval.task.Task.hold_out_dev).
Scored at each evaluation:

- ``loss``: the teacher-forced NLL of the dev responses per response token (the sum over every dev
  token / their number, so batch boundaries do not weigh examples); a sequence classifier's
  cross-entropy of its label per example. Encoded as training encodes (chat template, EOS-ended
  response, ``train.max_length``, ``task.overlong``), without BREP's prefix truncation.
- with ``train.eval_task_metrics``: the task's own metrics (``Task.evaluate``: generation with the
  experiment's ``eval`` settings, or the task's scoring), the same numbers ``reftx eval`` reports.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import send_to_device

from reftx.config.schema import Experiment
from reftx.core.errors import ConfigError
from reftx.data import checks
from reftx.data.encoding import IGNORE, collate_train, encode, pad_id
from reftx.eval.generate import evaluate
from reftx.eval.task import Task
from reftx.train.validation import DevEval


def dev_examples(exp: Experiment, task: Task) -> list:
    """The dev split's examples; refused by name when the task holds out none."""
    if "dev" not in task.splits:
        raise ConfigError("train.eval_every", f"scores the dev split, and task {task.name!r} holds out none: set "
                          "task.dev_size (e.g. 64), the examples held out of its training split")
    return task.examples("dev")


def check(exp: Experiment, task: Task) -> None:
    """What can be checked before training (reftx validate): the dev split exists, and train.eval_metric
    is the dev loss or one of the task's metrics."""
    if not exp.train.eval_every:
        return
    dev_examples(exp, task)
    metric = exp.train.eval_metric
    if metric != "loss" and task.metrics and metric not in task.metrics:
        from reftx.core.errors import unknown

        raise unknown("train.eval_metric", metric, ("loss", *task.metrics), f"dev metric of task {task.name!r}")


def build(exp: Experiment, task: Task, tok: Any, chat: bool, model_config: Any, references: dict[str, Any],
          say: Any) -> DevEval | None:
    """The run's dev scorer, or None without ``train.eval_every``. Over-long dev examples follow
    task.overlong, as training's do (said once, here)."""
    if not exp.train.eval_every:
        return None
    check(exp, task)
    examples = dev_examples(exp, task)
    limit = checks.train_limit(exp.train.max_length, model_config)
    causal = exp.model.task == "causal-lm"
    encoded = [encode(tok, ex, limit.tokens, chat, causal) for ex in examples]
    _, encoded = checks.fit_train(examples, encoded, limit, exp.task.overlong, say)
    generates = task.generate and causal
    scored, eval_cfg = checks.fit_eval(tok, examples, chat, model_config, exp.eval, generates, exp.task.overlong, say)
    batch, pad = exp.train.batch_size, pad_id(tok)

    def score(model: Any) -> dict[str, float]:
        values = {"loss": dev_loss(model, encoded, batch, pad, causal)}
        if exp.train.eval_task_metrics:
            metrics, _ = evaluate(model, tok, task, scored, eval_cfg, chat, False, references)
            values.update(metrics)
        return values

    return score


def dev_loss(model: Any, encoded: list, batch_size: int, pad: int, causal: bool) -> float:
    """The response NLL per token over every dev example (causal LM), or the mean cross-entropy of the
    class label (sequence classifier); teacher-forced, in batches of ``batch_size``."""
    from reftx.eval.classify import LABEL
    from reftx.train.objectives.common import sequence_nll

    total, count = torch.zeros((), dtype=torch.float64), 0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for i in range(0, len(encoded), batch_size):
        rows = send_to_device(collate_train(encoded[i:i + batch_size], pad), device)
        labels = rows.pop("labels")
        out = model(**rows)
        if causal:
            total = total + sequence_nll(out.logits, labels, "sum").sum().double().cpu()
            count += int((labels[:, 1:] != IGNORE).sum())
        else:
            target = rows["example_info"][LABEL].to(out.logits.device).long()
            ce = F.cross_entropy(out.logits.float(), target, reduction="sum")
            total, count = total + ce.double().cpu(), count + len(target)
    return float(total / max(count, 1))


__all__ = ["build", "check", "dev_examples", "dev_loss"]
