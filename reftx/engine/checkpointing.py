"""Gradient (activation) checkpointing with interventions: the recomputed forward edits exactly as
the first one did.

How transformers 5 checkpoints (``modeling_layers.py``, ``GradientCheckpointingLayer``): every layer
class's ``forward`` is wrapped so that, in training with gradients on, the layer calls its
``_gradient_checkpointing_func`` (``torch.utils.checkpoint.checkpoint`` with the
``use_reentrant`` the user gave; False by default) on ``partial(forward, self, **kwargs)``.
Hooks on the layer itself (reftx's ``block_input`` and ``block_output``) therefore run once,
outside the checkpoint; hooks on modules *inside* it (``attention_output``, ``mlp_output``,
``mlp_up``, raw module paths) run again when the backward pass recomputes the layer, long after
the forward closed its state. Left alone, the recomputation edits nothing: non-reentrant
checkpointing then fails ("a different number of tensors was saved") and reentrant checkpointing
silently trains nothing inside the layer (its first run is under ``no_grad``).

So reftx wraps every ``_gradient_checkpointing_func`` on the base (``bind``, at each forward: a model
may switch checkpointing on after attach, and transformers then installs fresh functions); the
wrapper binds the forward state open at the call into the function it checkpoints. That function's
first run is the forward itself; every later run is a recomputation and runs under
``replaying``: the same ``ForwardState`` (the position rows already built, the forward's
rotations, its enabled/disabled flag) with a throwaway ``Context``, so auxiliary losses and records
are published once. torch's checkpoint restores the RNG state, so dropout draws the same masks.
Under reentrant checkpointing the rotations are recomputed inside the replay by the same batched QR
(the forward's R belongs to a graph the replay's own backward must not free), as are the stacked
parameters of reftx.engine.stacked (restacked at their first use in the replay), and an auxiliary loss
computed inside a checkpointed layer would get no gradient: that is refused with the fix.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from reftx.core.errors import ReftError
from reftx.core.intervention import Context
from reftx.engine.rotations import reuse_rotations, shared_rotations

FUNC = "_gradient_checkpointing_func"  # what transformers' layers call to checkpoint themselves


def candidates(base: nn.Module) -> list[nn.Module]:
    """The modules transformers may give a checkpoint function (those with ``gradient_checkpointing``)."""
    return [m for m in base.modules() if hasattr(m, "gradient_checkpointing")]


def bind(hooks: Any, modules: list[nn.Module]) -> None:
    """Wrap each module's checkpoint function (once per hook manager: several may share a base,
    reftx.engine.multi) so that its recomputation replays ``hooks``' state."""
    for m in modules:
        f = m.__dict__.get(FUNC)
        if f is None:
            continue
        inner = f
        while isinstance(inner, _Bound) and inner.hooks is not hooks:
            inner = inner.inner
        if not isinstance(inner, _Bound):
            setattr(m, FUNC, _Bound(hooks, f))


def unbind(hooks: Any, modules: list[nn.Module]) -> None:
    """Take ``hooks``' wrapper out of each module's checkpoint function (detach); others stay."""
    for m in modules:
        outer, f = m, m.__dict__.get(FUNC)
        while isinstance(f, _Bound):
            if f.hooks is hooks:
                setattr(outer, FUNC if outer is m else "inner", f.inner)
                break
            outer, f = f, f.inner


@contextmanager
def replaying(hooks: Any, state: Any, enabled: bool, fresh_rotations: bool) -> Iterator[None]:
    """Within the block, ``hooks``' sites edit as in the forward that opened ``state``: the same rows
    and enabled flag, the forward's rotations (``fresh_rotations``: the same batched QR again, for
    reentrant checkpointing); what the primitives publish goes to a throwaway context."""
    ctx = state.ctx
    fresh = fresh_rotations and state.rotations
    replay = dataclasses.replace(state, ctx=Context(ctx.batch_index, ctx.batch_size, example_info=ctx.example_info),
                                 stack=ExitStack(), params={} if fresh_rotations else state.params)
    before = hooks.swap(replay, enabled)
    try:
        with shared_rotations([b for b, _ in state.rotations]) if fresh else reuse_rotations(state.rotations):
            yield
    finally:
        hooks.swap(*before)


class _Bound:
    """transformers' checkpoint function, with the calling forward's state bound into what it runs."""

    def __init__(self, hooks: Any, inner: Any):
        self.hooks, self.inner = hooks, inner

    def __call__(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        state = self.hooks.current()
        if state is None:  # not inside a hooked forward: nothing to replay
            return self.inner(function, *args, **kwargs)
        return self.inner(_Replay(self.hooks, state, function), *args, **kwargs)


class _Replay:
    """A checkpointed function: its first run is the forward, every later run a recomputation."""

    def __init__(self, hooks: Any, state: Any, function: Any):
        self.hooks, self.state, self.function = hooks, state, function
        self.enabled = hooks.enabled
        self.grad: bool | None = None  # grad mode of the first run: False under reentrant checkpointing

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.grad is not None:
            with replaying(self.hooks, self.state, self.enabled, fresh_rotations=not self.grad):
                return self.function(*args, **kwargs)
        self.grad = torch.is_grad_enabled()
        losses = self.state.ctx.losses
        before = {k: len(v) for k, v in losses.items()}
        out = self.function(*args, **kwargs)
        if not self.grad and any(len(v) != before.get(k, 0) for k, v in losses.items()):
            name = next(k for k, v in losses.items() if len(v) != before.get(k, 0))
            raise ReftError(f"the auxiliary loss {name!r} is computed inside a layer that reentrant gradient "
                            "checkpointing runs without gradients, so it would not train; use non-reentrant "
                            "checkpointing (gradient_checkpointing_kwargs={'use_reentrant': False}, transformers' "
                            "default) or put the intervention at block_output / block_input")
        return out


def enable(model: nn.Module, reentrant: bool = False) -> nn.Module:
    """Switch on transformers' gradient checkpointing of the base model inside ``model`` (a ReftModel,
    a peft model or the base itself; the first ``PreTrainedModel`` among its modules); returns that base.
    Non-reentrant (the default) needs no gradient on the embeddings' output, so transformers'
    ``enable_input_require_grads`` is undone: the backward then stops at the lowest edit."""
    from transformers import PreTrainedModel

    base = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if base is None or not getattr(base, "supports_gradient_checkpointing", False):
        name = type(base if base is not None else model).__name__
        raise ReftError(f"train.gradient_checkpointing: {name} does not support gradient checkpointing "
                        "(transformers' supports_gradient_checkpointing); set train.gradient_checkpointing: false")
    kwargs = {"use_reentrant": reentrant}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name is deprecated
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if not reentrant and hasattr(base, "disable_input_require_grads"):
        base.disable_input_require_grads()
    return base


__all__ = ["bind", "candidates", "enable", "unbind"]
