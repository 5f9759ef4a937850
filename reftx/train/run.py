"""``reftx run``'s training: one job of the one loop (reftx.train.loop); it never knows which method it trains.

Per optimizer step (reftx.train.loop.Loop): forward (+ auxiliary losses the primitives add), a
finiteness check, backward, gradient clipping, AdamW, the LR schedule, then each primitive's
``after_optimizer_step`` (e.g. a norm projection) and the divergence guard. This module adds
what a run needs around that: the data order, logging, checkpoints, resume and Ctrl-C.

Reproducible and resumable: the data order of epoch e is a permutation seeded by
(seed, e); checkpoints (written to a temporary folder, then renamed) hold the
intervention weights, optimizer, scheduler, RNG states and the position in the
data, so a run killed at any point and resumed ends with the same weights as an
uninterrupted one. A NaN/inf loss stops the run (``NonFiniteLoss``) before any
step applies it; the last good checkpoint stays. Ctrl-C saves a checkpoint first.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from accelerate import Accelerator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader
from transformers import get_scheduler

from reftx.train import trackers as tracking
from reftx.train import checkpoints
from reftx.train.checkpoints import STATE_FILE, Progress_, candidates, clean_stale, intact, load_checkpoint, save_checkpoint
from reftx.data.encoding import Encoded, collate_train
from reftx.data.pairing import paired_order, unpair
from reftx.core.errors import ConfigError, ReftError
from reftx.config.schema import TrainConfig
from reftx.train.loop import Diverged, DivergenceGuard, Job, Loop, NonFiniteLoss, Optim, StepLoss, accelerator
from reftx.engine.checkpointing import enable as enable_checkpointing
from reftx.engine.model import ReftModel
from reftx.core.files import atomic_write
from reftx.train.loss import compose
from reftx.train.optim import adamw
from reftx.train.order import EpochSampler, rng_state, seed_everything, set_rng_state
from reftx.train import sharding, validation
from reftx.train.validation import DevEval
from reftx.train.objectives.common import OBJECTIVES, objective_options



def total_steps(cfg: TrainConfig, n_batches: int) -> int:
    return cfg.max_steps or cfg.epochs * math.ceil(n_batches / cfg.grad_accum)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint folder (not verified; ``--resume`` uses ``checkpoints.intact``)."""
    ckpts = [p for p in candidates(run_dir) if (p / STATE_FILE).is_file()]
    return ckpts[0] if ckpts else None


def load_weights(model: ReftModel, directory: Path) -> None:
    """Restore the trained weights ``model.save_pretrained(directory)`` wrote (any model with
    ``load_trained``: a ReftModel's interventions, or reftx.integrations.peft.LoraReft's adapter and interventions)."""
    model.load_trained(directory)


def _truncate_log(path: Path, step: int) -> None:
    """Drop metrics logged after ``step`` (by a run that died after its last checkpoint)."""
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        atomic_write(path, lambda p: Path(p).write_text("".join(x + "\n" for x in keep)))


def eta_text(seconds: float) -> str:
    """A time left as the progress line prints it: ``42s``, ``3m05s``, ``2h07m``."""
    s = max(0, round(seconds))
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, honoured at a step boundary after saving a checkpoint."""


class _StopFlag:
    """Ctrl-C during training asks for a stop at the next step boundary (a second one stops at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class RunJob(Job):
    """``reftx run``'s one job: the experiment's data in seeded epochs, its optimizer and LR schedule,
    logging to metrics.jsonl and the progress bar, checkpoints every ``checkpoint_every`` steps."""

    def __init__(self, run: _Run):
        self.run = run
        self.max_steps, self.clip = run.steps, run.cfg.max_grad_norm
        self.divergence_factor = run.cfg.divergence_factor
        self.batches = self._batches()
        self.window: list[float] = []
        self.terms: dict[str, Tensor] = {}
        self.stop_all = False  # a multi-process run: some process was asked to stop (``_agree``)

    def start(self, slot: int) -> Optim:
        r = self.run
        return Optim(r.opt, r.sched, r.trained, r.model.after_optimizer_step)

    def _batches(self) -> Iterator[dict[str, Any]]:
        r, prog = self.run, self.run.prog
        while True:
            # accelerate's DataLoaderShard re-sets the sampler's epoch from its own iteration counter
            # (0 in a resumed process) on every __iter__: set the epoch through it
            (r.loader if hasattr(r.loader, "set_epoch") else r.sampler).set_epoch(prog.epoch)
            for i, batch in enumerate(r.loader):
                if i < prog.batch:
                    continue  # resuming mid-epoch: skip what the checkpoint already consumed
                self.index = i
                prog.tokens += int(batch["attention_mask"].sum()) * r.acc.num_processes
                yield batch
            prog.epoch, prog.batch = prog.epoch + 1, 0

    def rows(self, slot: int) -> dict[str, Any]:
        return next(self.batches)

    def forward(self, rows: dict[int, dict[str, Any]]) -> StepLoss:
        r = self.run
        env = {"env": r.env} if r.objective.needs_env else {}
        core, logs, out = r.objective(r.wrapped, rows[0], r.objective_opts, **env)
        loss, self.terms = compose(core, out.get("aux_losses"), (m for _, m in r.model.named_interventions()))
        value = self._agree(loss)  # the step's one read of the loss: logged, guarded, never read again
        self.window.append(value)
        return StepLoss({0: loss}, stop={0: value}, logs=logs, out=out)

    def on_step(self, step: int, loss: float, grad_norm: float | None, result: StepLoss) -> None:
        r, prog = self.run, self.run.prog
        prog.step, prog.batch = step, self.index + 1
        if step % r.cfg.log_every == 0 or step == r.steps:
            r.log(self._record(grad_norm, result))
            self.window.clear()
        saved = r.validate() if r.dev is not None and validation.due(step, r.cfg.eval_every, r.steps) else False
        if not saved and r.cfg.checkpoint_every and step % r.cfg.checkpoint_every == 0 and step < r.steps:
            r.checkpoint()
        if prog.stopped:  # train.early_stopping: the loop ends this job at this step
            self.max_steps = step
        if r.stop.requested if r.acc.num_processes == 1 else self.stop_all:
            raise Interrupted

    def _agree(self, loss: Tensor) -> float:
        """The loss every process logs and guards: its own, or in a multi-process run the mean over the
        processes, read with whether any of them was asked to stop (Ctrl-C) in one reduction, so all
        stop at the same step boundary (``stop_all``)."""
        r = self.run
        if r.acc.num_processes == 1:
            return loss.item()
        flag = torch.tensor(float(r.stop.requested), device=loss.device)
        both = r.acc.reduce(torch.stack([loss.detach().float(), flag]), "sum").tolist()
        self.stop_all = both[1] > 0
        return both[0] / r.acc.num_processes

    def _record(self, grad_norm: float | None, result: StepLoss) -> dict[str, Any]:
        r, prog = self.run, self.run.prog
        rec = {"step": prog.step, "epoch": prog.epoch, "loss": sum(self.window) / len(self.window),
               "lr": r.sched.get_last_lr()[0],
               "tokens_per_s": (prog.tokens - r.tokens0) / max(time.perf_counter() - r.t0, 1e-9)}
        if grad_norm is not None:
            rec["grad_norm"] = grad_norm
        rec.update({f"obj/{k}": float(v) for k, v in result.logs.items()})
        for k, v in self.terms.items():  # the auxiliary and parameter terms compose added
            rec[f"aux/{k}"] = float(v.detach())
        for k, v in (result.out.get("records") or {}).items():
            rec[f"rec/{k}"] = float(torch.cat([x.float().reshape(-1) for x in v]).mean())
        return rec


@dataclass
class _Run:
    """The state of one ``train`` call that its job and helpers share."""

    model: Any
    cfg: TrainConfig
    run_dir: Path
    acc: Accelerator
    steps: int = 0
    prog: Progress_ = field(default_factory=Progress_)
    show_progress: bool = True
    on_log: Callable[[dict[str, Any]], None] | None = None
    stop: _StopFlag = field(default_factory=lambda: _StopFlag())
    t0: float = 0.0
    tokens0: int = 0
    step0: int = 0  # the step this process started at (a resumed run's checkpoint step): the ETA counts from it
    env: Any = None  # what a sampling objective needs (reftx.train.objectives.grpo.Env)
    dev: DevEval | None = None  # scores the model on the dev split (train.eval_every; reftx.train.validation)

    def setup(self, data: list[Encoded], pad_id: int, seed: int) -> None:
        """Objective, data order, optimizer and schedule, wrapped by accelerate."""
        cfg, acc = self.cfg, self.acc
        self.objective = OBJECTIVES.get(cfg.objective, "train.objective")
        self.objective_opts = objective_options(cfg.objective, cfg.objective_options)
        seed_everything(seed)
        pair_by = getattr(self.objective, "pairs_by", None)  # B forget + B drawn retain rows a batch (reftx.data.pairing)
        dataset, self.sampler = (paired_order(data, seed, pair_by, f"train.objective {cfg.objective!r}") if pair_by
                                 else (data, EpochSampler(len(data), seed)))
        rows = unpair if pair_by else list
        # its own generator: iterating a DataLoader draws a worker seed from the generator it is given
        # (the global torch RNG by default), which would shift the dropout RNG of a resumed run
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=self.sampler,
                            collate_fn=lambda b: collate_train(rows(b), pad_id), generator=torch.Generator().manual_seed(seed))
        getattr(self.objective, "prepare", lambda *_: None)(self.model, self.objective_opts)  # PPO's value head, RL's KL anchor
        groups = self.model.param_groups(cfg.weight_decay)
        self.trained = [p for g in groups for p in g["params"]]  # what gradient clipping sees
        opt = adamw(groups, lr=cfg.lr)  # one flat update per group, not a loop over tensors (reftx.train.optim)
        if cfg.batch_size % acc.num_processes:  # accelerate splits each batch (reftx.train.loop.accelerator)
            raise ConfigError("train.batch_size", f"{cfg.batch_size} does not split over {acc.num_processes} processes, "
                              f"which each take an equal share of every batch: make it a multiple of {acc.num_processes}")
        self.steps = total_steps(cfg, math.ceil(len(self.sampler) / cfg.batch_size))
        self.sched = get_scheduler(cfg.scheduler if cfg.scheduler != "constant" else "constant_with_warmup", opt,
                                   num_warmup_steps=int(cfg.warmup * self.steps), num_training_steps=self.steps)
        if cfg.gradient_checkpointing:  # activations recomputed in the backward: less memory, the same gradients
            enable_checkpointing(self.model)
        if sharding.needed(acc):  # FSDP asked for on CPU processes, where accelerate runs DDP: shard the base
            acc.print(sharding.shard_base(self.model))
        self.wrapped, self.opt, self.loader = acc.prepare(self.model, opt, loader)

    def restore(self, resume: bool) -> Path | None:
        """Load the newest intact checkpoint (``resume``), or start metrics.jsonl afresh."""
        acc, metrics = self.acc, self.run_dir / "metrics.jsonl"
        ckpt = None
        if resume and acc.is_main_process:
            clean_stale(self.run_dir, acc.print)
        if resume:
            ckpt = intact(self.run_dir, acc.print)
        if ckpt is not None:
            self.prog = load_checkpoint(ckpt, self.model, self.opt, self.sched)
            if acc.is_main_process:
                _truncate_log(metrics, self.prog.step)
                acc.print(f"resumed from {ckpt} (step {self.prog.step}/{self.steps})")
        elif acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            metrics.write_text("")
        return ckpt

    def checkpoint(self) -> None:
        if self.acc.is_main_process:
            save_checkpoint(self.run_dir, self.model, self.opt, self.sched, self.prog, self.cfg.keep_checkpoints)
        self.acc.wait_for_everyone()

    def validate(self) -> bool:
        """Score the dev split at this step: a metrics.jsonl row, the trackers, a plain line; a new best
        is checkpointed at once (returns True then). Early stopping is recorded in ``prog``."""
        cfg, prog = self.cfg, self.prog
        values = validation.evaluate(self.dev, self.model, cfg.eval_metric)
        best = validation.update(prog, values, cfg.eval_metric, cfg.early_stopping)
        rec = {"step": prog.step, "epoch": prog.epoch, **{f"dev/{k}": v for k, v in values.items()}}
        if self.acc.is_main_process:
            with (self.run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(rec) + "\n")
            if cfg.log_with:
                tracking.log(self.acc, rec)
            if self.show_progress:
                validation.say(validation.line(prog, self.steps, values, cfg.eval_metric))
        if prog.stopped:
            self.acc.print(f"train.early_stopping: dev/{cfg.eval_metric} has not improved in {prog.bad_evals} "
                           f"evaluations; stopped at step {prog.step} (best: step {prog.best_step})")
        if best or prog.stopped:
            self.checkpoint()  # the best is kept; a stopped run resumes to nothing left to train
        return best or prog.stopped

    def finish(self, ckpt: Path | None) -> dict[str, Any]:
        """The run's summary; with train.load_best, the best checkpoint's weights loaded into the model."""
        self.acc.unwrap_model(self.wrapped, keep_fp32_wrapper=False)  # no autocast left: it runs as when reloaded
        best = validation.summary(self.prog, self.cfg.eval_metric)
        if best is not None and self.cfg.load_best and best["step"] != self.prog.step:
            load_weights(self.model, self.run_dir / best["checkpoint"] / "intervention")
            self.acc.print(f"train.load_best: the weights of {best['checkpoint']} ({best['metric']} {best['value']:.4g})")
        out = {"steps": self.prog.step, "tokens": self.prog.tokens, "resumed": ckpt is not None}
        return {**out, "best": best} if best is not None else out

    def where(self) -> str:
        return f" Last good checkpoint: {latest_checkpoint(self.run_dir)}"

    def log(self, rec: dict[str, Any]) -> None:
        """One logged step: metrics.jsonl, the callback, the bar, and a plain line without a terminal."""
        if self.acc.is_main_process:
            with (self.run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(rec) + "\n")
            if self.cfg.log_with:
                tracking.log(self.acc, rec)  # the same row to every tracker (train.log_with)
            if self.on_log:
                self.on_log(rec)
        self.bar.update(self.bar_task, completed=self.prog.step, info=f"loss {rec['loss']:.4f}")
        if self.show_progress and self.acc.is_main_process and not sys.stderr.isatty():
            # no terminal (nohup, slurm, CI): the bar draws nothing, print a line
            done, left = self.prog.step - self.step0, self.steps - self.prog.step
            eta = eta_text((time.perf_counter() - self.t0) / done * left) if done > 0 else "?"
            print(f"train step {self.prog.step}/{self.steps}  loss {rec['loss']:.4f}  lr {rec['lr']:.3g}  "
                  f"{rec['tokens_per_s']:.0f} tok/s  eta {eta}", file=sys.stderr, flush=True)


def train(
    model: ReftModel,
    data: list[Encoded],
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    pad_id: int,
    seed: int = 0,
    resume: bool = False,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    show_progress: bool = True,
    name: str | None = None,
    config: dict[str, Any] | None = None,
    env: Any = None,
    dev: DevEval | None = None,
) -> dict[str, Any]:
    """Train ``model``'s interventions on encoded examples (one job of reftx.train.loop's loop); returns a
    summary of the run. With ``cfg.log_with``, trackers (reftx.train.trackers) record every logged row and
    ``config`` (the resolved experiment) under the project ``name`` (default: the run folder's name).
    ``env``: what an objective that samples needs (reftx.train.objectives.grpo.Env: the tokenizer and the task's reward).
    ``dev``: scores the model on the dev split every ``cfg.eval_every`` steps (reftx.train.validation);
    the summary's ``best`` names the best checkpoint by ``cfg.eval_metric``.

    ``model`` is a ReftModel or any module with its training surface: forward, ``param_groups``
    (what the optimizer trains), ``after_optimizer_step``, ``save_pretrained`` and, for resuming,
    ``load_trained`` (e.g. reftx.integrations.peft.LoraReft: a LoRA adapter with or without interventions).
    """
    run_dir = Path(run_dir)
    acc = accelerator(cfg.grad_accum, cfg.precision, **tracking.accelerator_kwargs(cfg.log_with, run_dir))
    if cfg.eval_every and dev is None:
        raise ReftError("train.eval_every scores a dev split: pass dev= (reftx.train.validation.DevEval; "
                        "`reftx run` builds it from task.dev_size)")
    r = _Run(model, cfg, run_dir, acc, show_progress=show_progress, on_log=on_log, env=env,
             dev=dev if cfg.eval_every else None)
    r.setup(data, pad_id, seed)
    if r.objective.needs_env and env is None:
        raise ReftError(f"train.objective {cfg.objective!r} samples and scores completions: it needs env= "
                        "(reftx.train.objectives.grpo.Env; `reftx run` supplies it)")
    ckpt = r.restore(resume)
    if r.prog.step >= r.steps or r.prog.stopped:  # finished (or stopped early) before: nothing left to train
        return r.finish(ckpt)
    tracking.start(acc, cfg.log_with, name or run_dir.name, config, r.prog.step)
    try:
        return _fit(r, ckpt)
    finally:
        tracking.end(acc)  # also after Ctrl-C and errors: the event files are flushed and closed


def _fit(r: _Run, ckpt: Path | None) -> dict[str, Any]:
    """The loop over ``r``'s one job, with the progress bar; a final checkpoint."""
    main = r.show_progress and r.acc.is_main_process
    r.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                     TimeRemainingColumn(), disable=not main)
    r.bar_task = r.bar.add_task("train", total=r.steps, completed=r.prog.step, info="")
    job = RunJob(r)
    r.t0, r.tokens0, r.step0 = time.perf_counter(), r.prog.tokens, r.prog.step
    try:
        with r.bar, r.stop:
            Loop(r.acc, r.wrapped, job.forward, where=r.where).fit([job], [r.prog.step])
    except Interrupted:
        r.checkpoint()
        r.acc.print(f"interrupted: saved a checkpoint at step {r.prog.step} in {r.run_dir}; resuming continues from it")
        raise
    r.checkpoint()
    return {**r.finish(ckpt), "train_seconds": time.perf_counter() - r.t0}


__all__ = ["Diverged", "DivergenceGuard", "Interrupted", "RunJob", "NonFiniteLoss", "train", "latest_checkpoint", "load_weights", "seed_everything",
           "total_steps"]
