"""The one training loop: optimizer steps over a list of jobs, packed into slots.

A *job* is one training problem with its own parameters, optimizer and limits. ``reftx run`` is
one job (the experiment's data, epochs, schedule, checkpoints: reftx.train.run.RunJob); knowledge
editing is N jobs, one per edit or batch of edits (reftx.recipes.edit.engine.EditJob), trained ``slots`` at a
time side by side in one forward pass, each slot a copy of the primitive in a
``reftx.parts.slot_bank.SlotBank``. Every step of every job goes through :meth:`Loop.fit`:

    fill free slots from the queue (job.start: re-initialise, build its optimizer)
    forward once over the rows of every active job           (the caller's ``forward``)
    a non-finite loss stops the run before anything is applied
    jobs whose stop value is below their ``stop_loss`` (or at ``max_steps``) stop before stepping
    backward of Σ the training jobs' losses (+ a shared term)
    per training job: clip its gradients, optimizer step, LR schedule, its modifiers' after_step,
                      the divergence guard, ``job.on_step``
    finished jobs hand back their slot (``job.on_done``)

A slot job's loss involves only its own slot's parameters, so training K jobs together gives
each the gradient it would get alone (tests/unit/recipes/test_editing.py checks parallel == one at a time).
Gradient accumulation (``grad_accum`` > 1, one job) and mixed precision run through accelerate.
"""
from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs
from torch import Tensor

from reftx.core.errors import ReftError


class NonFiniteLoss(ReftError):
    """The loss became NaN or inf; nothing from that step was applied."""


class Diverged(NonFiniteLoss):
    """Training stopped because weights or loss left the finite, bounded range."""


class DivergenceGuard:
    """Stops a job whose weights or loss explode, before anything is saved.

    After every optimizer step: any non-finite trained parameter, or a parameter tensor whose
    norm exceeds ``factor · max(its norm at the start, 1)``, or a positive loss above
    ``factor · max(the running minimum of the positive losses, 1)``, is a divergence (``check``
    returns why). ``factor`` None disables the checks (non-finite losses are always refused,
    before they are applied)."""

    def __init__(self, params: list[torch.Tensor], factor: float | None):
        self.params, self.factor = params, factor
        self.start = self._norms().clamp(min=1.0) if params and factor is not None else None
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


@dataclass
class Optim:
    """What one job trains with: its optimizer, LR schedule (or None), the tensors gradient
    clipping and the guard see, and its modifiers' post-step work."""

    optimizer: Any
    scheduler: Any
    params: list[Tensor]
    after_step: Callable[[], None]


@dataclass
class StepLoss:
    """What the loop's ``forward`` returns for one step over the active jobs.

    losses: slot -> that job's loss (what its optimizer minimises), in slot order.
    stop:   slot -> the value compared with the job's ``stop_loss`` (e.g. the target NLL without
            the modifiers' terms), checked by the divergence guard and handed to ``on_step``;
            defaults to the loss (read from the device once per step).
    shared: a term added once to the backward sum (primitives' auxiliary losses that a forward
            over every slot produced together), or None.
    logs, out: the objective's logged values and the model output, handed to ``job.on_step``."""

    losses: dict[int, Tensor]
    stop: dict[int, float] = field(default_factory=dict)
    shared: Tensor | None = None
    logs: dict[str, float] = field(default_factory=dict)
    out: Any = None


class Job:
    """One training problem. Subclasses supply ``start`` and ``rows``; the rest has defaults.

    max_steps: optimizer steps at most; stop_loss: stop (before the next step) once the stop value
    of a forward is below it (None: never)."""

    max_steps: int = 1
    stop_loss: float | None = None
    divergence_factor: float | None = None
    clip: float | None = None

    def start(self, slot: int) -> Optim:  # pragma: no cover - abstract
        """Prepare the job in ``slot`` (e.g. re-initialise it) and return what it trains with."""
        raise NotImplementedError

    def rows(self, slot: int) -> Any:  # pragma: no cover - abstract
        """The job's part of the next forward (examples, or a collated batch for a one-job loop)."""
        raise NotImplementedError

    def on_step(self, step: int, loss: float, grad_norm: float | None, result: StepLoss) -> None:
        """After each optimizer step of this job (logging, checkpoints)."""

    def on_done(self, slot: int, steps: int, loss: float, seconds: float) -> None:
        """The job stopped (converged or at max_steps); its slot is handed to the next job."""


@dataclass
class _Active:
    job: Job
    optim: Optim
    guard: DivergenceGuard
    steps: int = 0
    last: float = math.nan  # the stop value of the latest forward
    t0: float = field(default_factory=time.perf_counter)


def _same_precision(mixed: str) -> None:
    """accelerate keeps one AcceleratorState per process and refuses another mixed precision in it: a
    run after one of another train.precision (a notebook, an in-process sweep) starts that state afresh
    (the process group, accelerate's PartialState, stays)."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState._shared_state.get("_mixed_precision") != mixed:
        AcceleratorState._reset_state()


def accelerator(grad_accum: int = 1, precision: str = "fp32", **trackers: Any) -> Accelerator:
    """The loop's accelerate ``Accelerator`` (bf16 autocast when ``precision`` is bf16); ``trackers``:
    accelerate's ``log_with`` and ``project_dir`` (reftx.train.trackers.accelerator_kwargs), or nothing.

    ``split_batches``: with N processes each takes 1/N of every batch, so ``train.batch_size`` is the
    global batch whatever the number of processes: the same data order, steps and (with equal
    supervised tokens per process) the same weights as one process, and a checkpoint's position in
    the data holds for any number of processes (resume on another count)."""
    _same_precision("bf16" if precision == "bf16" else "no")
    return Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision="bf16" if precision == "bf16" else "no",
                       dataloader_config=DataLoaderConfiguration(split_batches=True),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)], **trackers)


class Loop:
    """Train jobs ``slots`` at a time; ``forward(rows by slot) -> StepLoss`` runs the model once."""

    def __init__(self, acc: Accelerator, model: Any, forward: Callable[[dict[int, Any]], StepLoss],
                 slots: int = 1, where: Callable[[], str] = lambda: ""):
        self.acc, self.model, self.forward, self.slots, self.where = acc, model, forward, slots, where

    def fit(self, jobs: list[Job], steps_done: list[int] | None = None) -> None:
        """Train every job to its end. ``steps_done[j]``: optimizer steps job j already took (resume)."""
        free, queue = list(range(self.slots)), deque(enumerate(jobs))
        active: dict[int, _Active] = {}
        self.model.train()
        while queue or active:
            while free and queue:
                j, job = queue.popleft()
                k = free.pop(0)
                optim = job.start(k)
                active[k] = _Active(job, optim, DivergenceGuard(optim.params, job.divergence_factor),
                                    steps=steps_done[j] if steps_done else 0)
            for k in self._step(active):
                a = active.pop(k)
                zero_grads(a.optim.params)  # a shared term may have reached them: never carry it to the next job
                a.job.on_done(k, a.steps, a.last, time.perf_counter() - a.t0)
                free.append(k)
                free.sort()
        self.model.eval()

    def _step(self, active: dict[int, _Active]) -> list[int]:
        """One forward over every active job, then an optimizer step of each job still training.
        Returns the slots whose job has finished."""
        acc = self.acc
        rows = {k: active[k].job.rows(k) for k in sorted(active)}  # before accumulate(): an epoch's end syncs
        with acc.accumulate(self.model):
            try:
                res = self.forward(rows)
            except NonFiniteLoss as e:  # an objective's refusal (e.g. a non-finite reward): name the step
                step = min(a.steps for a in active.values()) + 1
                raise type(e)(f"step {step}: {e}{self.where()}") from None
            for k, a in active.items():
                a.last = res.stop[k] if k in res.stop else float(res.losses[k].detach())  # one sync per job
            done = [k for k in sorted(active) if self._finished(active[k])]
            training = [k for k in sorted(active) if k not in done]
            if not training:
                return done
            loss = res.shared if res.shared is not None else None
            for k in training:
                loss = res.losses[k] if loss is None else loss + res.losses[k]
            if not torch.isfinite(loss.detach()).all():
                raise NonFiniteLoss(f"loss is {loss.item()} at step {active[training[0]].steps + 1}; stopped "
                                    f"before applying it.{self.where()}")
            acc.backward(loss)
            norms = {k: self._apply(active[k]) for k in training} if acc.sync_gradients else {}
        if not acc.sync_gradients:
            return []
        for k in training:
            a = active[k]
            a.optim.after_step()
            a.steps += 1
            why = a.guard.check(a.last)
            if why is not None:
                raise Diverged(f"step {a.steps}: {why}; stopped before saving it.{self.where()}")
            a.job.on_step(a.steps, a.last, norms.get(k), res)
            if a.steps >= a.job.max_steps and a.job.stop_loss is None:
                done.append(k)
        return sorted(done)

    @staticmethod
    def _finished(a: _Active) -> bool:
        stop = a.job.stop_loss
        return (stop is not None and a.last < stop) or a.steps >= a.job.max_steps

    def _apply(self, a: _Active) -> float | None:
        """Clip the job's gradients, step its optimizer and schedule, clear its gradients."""
        norm = None
        if a.job.clip is not None:
            norm = float(self.acc.clip_grad_norm_(a.optim.params, a.job.clip))
        a.optim.optimizer.step()
        if a.optim.scheduler is not None:
            a.optim.scheduler.step()
        a.optim.optimizer.zero_grad(set_to_none=True)
        return norm


def zero_grads(params: list[Tensor]) -> None:
    """Drop the gradients of ``params``."""
    for p in params:
        p.grad = None


__all__ = ["Diverged", "DivergenceGuard", "Job", "Loop", "NonFiniteLoss", "Optim", "StepLoss", "accelerator"]
