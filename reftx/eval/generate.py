"""Evaluation: batched, left-padded generation and the task's scorer; one explicit loop."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from reftx.core import processes
from reftx.data.encoding import collate_prompts, encode_prompt, pad_id
from reftx.config.schema import EvalConfig
from reftx.data.examples import Example
from reftx.eval.outcomes import Predictions, recording



def progress(label: str, disable: bool = False) -> Progress:
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=disable)


@torch.no_grad()
def generate(model: Any, tokenizer: Any, examples: list[Example], cfg: EvalConfig, chat: bool,
             label: str = "generate", show_progress: bool = True) -> list[str]:
    """Greedy (or configured) completions of every prompt, decoded without special tokens.

    Prompts are sorted by length so batches pad little; results come back in input order. In a
    multi-process run (reftx.core.processes) the batches are dealt out round-robin, each process
    generates whole batches exactly as one process would batch them, and every process gets every
    completion back (so a task scores the same predictions, and the same metrics, in every process).
    With an FSDP-sharded base every forward is a collective: every process generates every batch.
    """
    was_training = model.training
    model.eval()
    prompts = [encode_prompt(tokenizer, ex.prompt, chat) for ex in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    pid = pad_id(tokenizer)
    device = next(model.parameters()).device
    batches = [order[s:s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]
    deal = 1 if processes.sharded(model) else processes.world()
    mine = batches[processes.rank() % deal::deal]  # all of them in a single process, or with a sharded base
    done, total, texts = 0, sum(map(len, mine)), []
    with progress(label, not show_progress) as bar:
        task = bar.add_task(label, total=total)
        for idx in mine:
            batch = {k: v.to(device) for k, v in collate_prompts([prompts[i] for i in idx], pid).items()}
            gen = model.generate(**batch, max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                                 num_beams=cfg.num_beams, repetition_penalty=cfg.repetition_penalty, pad_token_id=pid)
            n = batch["input_ids"].shape[1]
            texts += [(i, tokenizer.decode(gen[row, n:], skip_special_tokens=True).strip()) for row, i in enumerate(idx)]
            done += len(idx)
            bar.update(task, advance=len(idx))
            if show_progress and not sys.stderr.isatty():  # no terminal (nohup, slurm, CI): a plain line
                print(f"{label} {done}/{total}", file=sys.stderr, flush=True)
    for i, text in (processes.gather(texts) if deal > 1 else texts):
        out[i] = text
    model.train(was_training)
    return out


def evaluate(model: Any, tokenizer: Any, task: Any, examples: list[Example], cfg: EvalConfig, chat: bool,
             show_progress: bool = True, references: dict[str, Callable[[], tuple[Any, Any]]] | None = None,
             ) -> tuple[dict[str, float], list[str]]:
    """The task's metrics on ``examples`` and the predictions they were computed from
    ``task`` is a reftx.eval.task.Task (not imported: task.py imports this module for its default
    ``evaluate``). (``Task.evaluate``: generation + ``score`` unless the task scores another way).
    ``references``: loaders of the task's reference models (``Task.reference_models``), passed
    on only when there are any, so a task without reference models need not take the keyword.
    The predictions come back as ``reftx.eval.outcomes.Predictions``: with every metric's
    per-example values (what ``samples.jsonl`` keeps for paired comparisons across runs)."""
    extra = {"references": references} if references else {}
    with recording(examples) as rec:
        metrics, preds = task.evaluate(model, tokenizer, examples, cfg, chat, show_progress, **extra)
    return metrics, Predictions(preds, rec.rows, rec.aggregates)
