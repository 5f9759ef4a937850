"""The training loop: one explicit loop on ``accelerate``; it never knows which method it trains.

Per optimizer step: forward (+ auxiliary losses the primitives add), a finiteness
check, backward, gradient clipping, AdamW, the LR schedule, then each
primitive's ``after_optimizer_step`` (e.g. a norm projection).

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
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Sampler
from transformers import get_scheduler

from .checkpoints import STATE_FILE, candidates, clean_stale, intact, write_manifest
from .data import Encoded, collate_train
from .errors import ReftError
from .experiment import TrainConfig
from .model import ReftModel, atomic_write
from .objectives import OBJECTIVES, objective_options



class NonFiniteLoss(ReftError):
    """The loss became NaN or inf; nothing from that step was applied."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochSampler(Sampler[int]):
    """A permutation of the dataset seeded by (seed, epoch): the same on every rank and every resume."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


@dataclass
class Progress_:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch: int = 0  # batches of the current epoch consumed (at a step boundary)
    tokens: int = 0


def total_steps(cfg: TrainConfig, n_batches: int) -> int:
    return cfg.max_steps or cfg.epochs * math.ceil(n_batches / cfg.grad_accum)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
            "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2])}


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((3, tuple(s["python"]), s["python_pos"]))
    np.random.set_state(("MT19937", s["numpy"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint folder (not verified; ``--resume`` uses ``checkpoints.intact``)."""
    ckpts = [p for p in candidates(run_dir) if (p / STATE_FILE).is_file()]
    return ckpts[0] if ckpts else None


def save_checkpoint(run_dir: Path, model: ReftModel, opt, sched, prog: Progress_, keep: int) -> Path:
    """Write checkpoints/step-N atomically (temporary folder, then rename); keep the newest ``keep``."""
    root = run_dir / "checkpoints"
    final = root / f"step-{prog.step}"
    tmp = root / f".tmp-step-{prog.step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp / "intervention")
        trainer = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": _rng_state()}
        torch.save(trainer, tmp / "trainer_state.pt")
        (tmp / STATE_FILE).write_text(json.dumps(prog.__dict__) + "\n")
        write_manifest(tmp)  # last: a checkpoint without it is incomplete
    except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(root).free
        cause = f"{e}" if isinstance(e, OSError) else f"{e} ({free:,} bytes free on that disk)"
        raise ReftError(f"cannot write the checkpoint {final}: {cause}; the previous checkpoint is intact") from None
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_weights(model: ReftModel, directory: Path) -> None:
    """Restore the trained weights ``model.save_pretrained(directory)`` wrote (any model with
    ``load_trained``: a ReftModel's interventions, or reftx.lora.LoraReft's adapter and interventions)."""
    model.load_trained(directory)


def load_checkpoint(path: Path, model: ReftModel, opt, sched) -> Progress_:
    load_weights(model, path / "intervention")
    try:
        state = torch.load(path / "trainer_state.pt", weights_only=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        return Progress_(**json.loads((path / STATE_FILE).read_text()))
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        raise ReftError(f"cannot resume from {path}: {type(e).__name__}: {e}") from None


class Diverged(NonFiniteLoss):
    """Training stopped because weights or loss left the finite, bounded range."""


class DivergenceGuard:
    """Stops a run whose weights or loss explode, before anything is saved.

    After every optimizer step: any non-finite trained parameter, or a parameter tensor whose
    norm exceeds ``factor · max(its norm at the start, 1)``, or a positive loss above
    ``factor · max(the running minimum of the positive losses, 1)``, raises ``Diverged`` with
    the step, the cause and the last good checkpoint. ``factor`` None disables the checks
    (non-finite losses are always refused, before they are applied)."""

    def __init__(self, params: list[torch.Tensor], factor: float | None):
        self.params, self.factor = params, factor
        self.start = self._norms().clamp(min=1.0) if params else None
        self.min_loss = math.inf

    def _norms(self) -> torch.Tensor:
        """Every trained tensor's norm in one fused call (one device sync per step, not one per tensor)."""
        with torch.no_grad():
            return torch.stack([n.float() for n in torch._foreach_norm([p.detach() for p in self.params])])

    def check(self, loss: float) -> str | None:
        if self.factor is None:
            return None
        if self.start is not None:
            norms = self._norms()
            bad = ~torch.isfinite(norms) | (norms > self.factor * self.start)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                n, n0, shape = float(norms[i]), float(self.start[i]), tuple(self.params[i].shape)
                if not math.isfinite(n):
                    return f"trained parameter {i} {shape} holds non-finite values"
                return (f"trained parameter {i} {shape} exploded: norm {n:.3g} > train.divergence_factor "
                        f"{self.factor:g} x {n0:.3g}")
        if loss > 0:
            if loss > self.factor * max(self.min_loss, 1.0):
                return f"loss exploded: {loss:.4g} > train.divergence_factor {self.factor:g} x {max(self.min_loss, 1.0):.4g}"
            self.min_loss = min(self.min_loss, loss)
        return None


def _truncate_log(path: Path, step: int) -> None:
    """Drop metrics logged after ``step`` (by a run that died after its last checkpoint)."""
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        atomic_write(path, lambda p: Path(p).write_text("".join(x + "\n" for x in keep)))


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
) -> dict[str, Any]:
    """Train ``model``'s interventions on encoded examples; returns a summary of the run.

    ``model`` is a ReftModel or any module with its training surface: forward, ``param_groups``
    (what the optimizer trains), ``after_optimizer_step``, ``save_pretrained`` and, for resuming,
    ``load_trained`` (e.g. reftx.lora.LoraReft: a LoRA adapter with or without interventions).
    """
    run_dir = Path(run_dir)
    objective = OBJECTIVES.get(cfg.objective, "train.objective")
    objective_opts = objective_options(cfg.objective, cfg.objective_options)
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum,
                      mixed_precision="bf16" if cfg.precision == "bf16" else "no",
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    seed_everything(seed)
    sampler = EpochSampler(len(data), seed)
    # its own generator: iterating a DataLoader draws a worker seed from the generator it is given
    # (the global torch RNG by default), which would shift the dropout RNG of a resumed run
    loader = DataLoader(data, batch_size=cfg.batch_size, sampler=sampler,
                        collate_fn=lambda b: collate_train(b, pad_id), generator=torch.Generator().manual_seed(seed))
    groups = model.param_groups(cfg.weight_decay)
    trained = [p for g in groups for p in g["params"]]  # what gradient clipping sees
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    per_epoch = math.ceil(len(data) / cfg.batch_size / acc.num_processes)
    steps = total_steps(cfg, per_epoch)
    sched = get_scheduler(cfg.scheduler if cfg.scheduler != "constant" else "constant_with_warmup", opt,
                          num_warmup_steps=int(cfg.warmup * steps), num_training_steps=steps)
    wrapped, opt, loader = acc.prepare(model, opt, loader)
    metrics_path = run_dir / "metrics.jsonl"
    prog = Progress_()
    ckpt = None
    if resume and acc.is_main_process:
        clean_stale(run_dir, acc.print)
    if resume:
        ckpt = intact(run_dir, acc.print)
    if ckpt is not None:
        prog = load_checkpoint(ckpt, model, opt, sched)
        if acc.is_main_process:
            _truncate_log(metrics_path, prog.step)
            acc.print(f"resumed from {ckpt} (step {prog.step}/{steps})")
    elif acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("")
    if prog.step >= steps:
        return {"steps": prog.step, "resumed": ckpt is not None}

    def checkpoint() -> None:
        if acc.is_main_process:
            save_checkpoint(run_dir, model, opt, sched, prog, cfg.keep_checkpoints)
        acc.wait_for_everyone()

    model.train()
    bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeRemainingColumn(), disable=not (show_progress and acc.is_main_process))
    task = bar.add_task("train", total=steps, completed=prog.step, info="")
    plain = show_progress and acc.is_main_process and not sys.stderr.isatty()
    window: list[float] = []
    guard = DivergenceGuard(trained, cfg.divergence_factor)
    t0, tokens0 = time.perf_counter(), prog.tokens
    stop = _StopFlag()
    try:
        with bar, stop:
            while prog.step < steps:
                # accelerate's DataLoaderShard re-sets the sampler's epoch from its own iteration counter
                # (0 in a resumed process) on every __iter__: set the epoch through it
                (loader if hasattr(loader, "set_epoch") else sampler).set_epoch(prog.epoch)
                for i, batch in enumerate(loader):
                    if i < prog.batch:
                        continue  # resuming mid-epoch: skip what the checkpoint already consumed
                    with acc.accumulate(wrapped):
                        loss, obj_logs, out = objective(wrapped, batch, objective_opts)
                        if not torch.isfinite(loss.detach()).all():
                            raise NonFiniteLoss(f"loss is {loss.item()} at step {prog.step + 1}; stopped before "
                                                f"applying it. Last good checkpoint: {latest_checkpoint(run_dir)}")
                        acc.backward(loss)
                        window.append(loss.item())
                        prog.tokens += int(batch["attention_mask"].sum()) * acc.num_processes
                        grad_norm = None
                        if acc.sync_gradients:
                            if cfg.max_grad_norm is not None:
                                grad_norm = float(acc.clip_grad_norm_(trained, cfg.max_grad_norm))
                            opt.step()
                            sched.step()
                            opt.zero_grad(set_to_none=True)
                    if not acc.sync_gradients:
                        continue
                    model.after_optimizer_step()
                    why = guard.check(window[-1])
                    if why is not None:
                        raise Diverged(f"step {prog.step + 1}: {why}; stopped before saving it. Last good "
                                       f"checkpoint: {latest_checkpoint(run_dir)}")
                    prog.step, prog.batch = prog.step + 1, i + 1
                    if prog.step % cfg.log_every == 0 or prog.step == steps:
                        rec = {"step": prog.step, "epoch": prog.epoch, "loss": sum(window) / len(window),
                               "lr": sched.get_last_lr()[0],
                               "tokens_per_s": (prog.tokens - tokens0) / max(time.perf_counter() - t0, 1e-9)}
                        if grad_norm is not None:
                            rec["grad_norm"] = grad_norm
                        rec.update({f"obj/{k}": float(v) for k, v in obj_logs.items()})
                        for k, v in (out.get("aux_losses") or {}).items():
                            rec[f"aux/{k}"] = float(v.detach())
                        for k, v in (out.get("records") or {}).items():
                            rec[f"rec/{k}"] = float(torch.cat([x.float().reshape(-1) for x in v]).mean())
                        window.clear()
                        if acc.is_main_process:
                            with metrics_path.open("a") as f:
                                f.write(json.dumps(rec) + "\n")
                            if on_log:
                                on_log(rec)
                        bar.update(task, completed=prog.step, info=f"loss {rec['loss']:.4f}")
                        if plain:  # no terminal (nohup, slurm, CI): the bar draws nothing, print a line
                            print(f"train step {prog.step}/{steps}  loss {rec['loss']:.4f}  lr {rec['lr']:.3g}  "
                                  f"{rec['tokens_per_s']:.0f} tok/s", file=sys.stderr, flush=True)
                    if cfg.checkpoint_every and prog.step % cfg.checkpoint_every == 0 and prog.step < steps:
                        checkpoint()
                    if stop.requested:
                        raise Interrupted
                    if prog.step >= steps:
                        break
                else:
                    prog.epoch, prog.batch = prog.epoch + 1, 0
                    continue
                break
    except Interrupted:
        checkpoint()
        acc.print(f"interrupted: saved a checkpoint at step {prog.step}; continue with --resume")
        raise
    checkpoint()
    model.eval()
    return {"steps": prog.step, "tokens": prog.tokens, "resumed": ckpt is not None,
            "train_seconds": time.perf_counter() - t0}


__all__ = ["Diverged", "Interrupted", "NonFiniteLoss", "train", "latest_checkpoint", "load_weights", "seed_everything",
           "total_steps"]
