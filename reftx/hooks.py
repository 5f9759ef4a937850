"""The only place in reftx that registers forward hooks.

Two kinds of hooks are installed on the base model:

* a top-level pre-hook / post-hook pair on the base model itself. The pre-hook
  reads the call's ``input_ids``/``attention_mask``/``labels`` and opens a
  ``ForwardState``: position indices are built lazily, once per forward and per
  position selector, and shared by every layer; rotations are orthonormalised
  in one batched QR. The post-hook (``always_call``, so it also runs when the
  forward raises) closes the state. Nothing survives between calls.
* one hook per edited module (site), serving every group at that site: it
  gathers only the scheduled rows ``h[b, p]``, runs the primitive on them and
  writes them back in place with ``index_put_``: no copy of the full hidden
  state, no Python loop over examples.

Only the handles created here are ever removed.

Classification heads that read mean-pooled states (``model.pooling: mean``, reftx.classify) get
their hooks here too: ``install_mean_pooling``; the editing engine reads a module's outputs
through ``capture_outputs``.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from . import positions as P
from . import sites
from .intervention import Context, Intervention, cast_call
from .parts import OrthoBasis, shared_rotations
from .schedule import Group, PositionSpec


@dataclass
class Overrides:
    """Per-call inputs that are not arguments of the base model."""

    prompt_lengths: Tensor | None = None
    intervention_positions: Tensor | None = None
    example_info: dict[str, Tensor] = field(default_factory=dict)
    state: ForwardState | None = None  # filled in by the pre-hook, read back by the caller


@dataclass
class Generation:
    """Set for the duration of one ``generate`` call."""

    prompt_len: int | None = None  # padded prompt length, learned at the prefill forward


@dataclass
class ForwardState:
    batch_size: int
    seq_len: int
    device: torch.device
    bounds: P.Bounds | None  # None during cached decoding
    decode_step: int | None
    explicit: tuple[Tensor, Tensor] | None
    ctx: Context
    stack: ExitStack
    _rows: dict[tuple, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def rows(self, spec: PositionSpec, parts: tuple[str, ...]) -> tuple[Tensor, Tensor]:
        key = (spec, parts)
        if key not in self._rows:
            if self.decode_step is not None:
                pieces = [P.decode_rows(self.batch_size, self.decode_step, spec, part, self.device) for part in parts]
            elif self.explicit is not None and spec.mode != "generated":
                pieces = [self.explicit]
            else:
                pieces = [P.part_rows(self.bounds, spec, part) for part in parts]
            r = pieces[0] if len(pieces) == 1 else tuple(torch.cat(x) for x in zip(*pieces))
            self._rows[key] = r
        return self._rows[key]


def _hidden(x: Any) -> Tensor:
    """The hidden-state tensor inside a module's output or input."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], Tensor):
        return x[0]
    if hasattr(x, "last_hidden_state"):
        return x.last_hidden_state
    raise TypeError(f"cannot find a hidden-state tensor in {type(x).__name__}")


def _cached_length(kwargs: dict, mask: Tensor | None, seq: int) -> int:
    """How many tokens the KV cache already holds before this forward (0 for a full forward)."""
    cache = kwargs.get("past_key_values")
    if cache is not None and hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    cache_position = kwargs.get("cache_position")
    if cache_position is not None and cache_position.numel():
        return int(cache_position.reshape(-1)[0])
    if mask is not None and mask.dim() == 2 and mask.shape[1] > seq:
        return mask.shape[1] - seq
    return 0


class HookManager:
    """Installs and removes reftx's hooks on one base model."""

    def __init__(self, base: nn.Module, groups: list[Group], modules: dict[str, Intervention]):
        self.base = base
        self.groups = groups
        self.modules = modules
        self.enabled = True
        self.pending: Overrides | None = None
        self.generation: Generation | None = None
        self._state: ForwardState | None = None
        self._handles: list[RemovableHandle] = []
        self._prompt_groups = any(g.positions.mode not in ("all", "generated") or "all_prompt" in g.parts
                                  for g in groups)
        self._bases = [m for mod in modules.values() for m in mod.modules() if isinstance(m, OrthoBasis)]
        by_site: dict[tuple[int, bool], list] = defaultdict(list)
        targets: dict[int, nn.Module] = {}
        for g in groups:
            for layer in g.layers:
                target = sites.resolve(base, g.component, layer)
                pre = sites.uses_pre_hook(g.component)
                targets[id(target)] = target
                by_site[(id(target), pre)].append((modules[g.key], g, layer))
        try:
            self._handles.append(base.register_forward_pre_hook(self._open, with_kwargs=True))
            self._handles.append(base.register_forward_hook(self._close, always_call=True))
            for (tid, pre), entries in by_site.items():
                if pre:
                    h = targets[tid].register_forward_pre_hook(self._pre_site(entries), with_kwargs=True)
                else:
                    h = targets[tid].register_forward_hook(self._post_site(entries))
                self._handles.append(h)
        except Exception:
            self.remove()
            raise

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- top level -------------------------------------------------------------------------
    def _open(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        pending, self.pending = self.pending, None
        pending = pending or Overrides()
        ids = kwargs.get("input_ids", args[0] if args else None)
        x = ids if ids is not None else kwargs.get("inputs_embeds")
        if x is None:
            raise ValueError("reftx needs input_ids or inputs_embeds to place interventions")
        batch, seq = x.shape[0], x.shape[1]
        mask = kwargs.get("attention_mask")
        past = _cached_length(kwargs, mask, seq)
        decode_step, prompt_end, gen = None, None, self.generation
        if gen is not None and gen.prompt_len is None:
            gen.prompt_len = seq
        if past:  # cached decoding: the input is the token(s) after `past` cached ones
            decode_step = past - gen.prompt_len if gen is not None else past
            mask = None
        elif gen is not None:
            prompt_end = gen.prompt_len
        bd = None
        if decode_step is None:
            bd = P.bounds(mask, batch, seq, x.device, kwargs.get("labels"), pending.prompt_lengths, prompt_end)
            if self._prompt_groups and pending.intervention_positions is None and not bool((bd.prompt_end > bd.start).any()):
                raise ValueError("every row has an empty prompt: the labels are not -100 on any token before the "
                                 "response, so prompt positions select nothing. Mask the prompt in the labels with "
                                 "-100 or pass prompt_lengths=")
        explicit = None
        if pending.intervention_positions is not None:
            explicit = P.explicit_rows(pending.intervention_positions.to(x.device), mask, seq)
        ctx = Context(torch.empty(0, dtype=torch.long), batch, example_info=pending.example_info)
        state = ForwardState(batch, seq, x.device, bd, decode_step, explicit, ctx, ExitStack())
        if self.enabled and self._bases and (decode_step is None or self._any_decode_edit()):
            state.stack.enter_context(shared_rotations(self._bases))
        pending.state = state
        self._state = state

    def _any_decode_edit(self) -> bool:
        return any(g.positions.mode in ("all", "generated") for g in self.groups)

    def _close(self, module: nn.Module, args: tuple, output: Any) -> None:
        state, self._state = self._state, None
        if state is not None:
            state.stack.close()

    # -- sites -------------------------------------------------------------------------------
    def _edit(self, h: Tensor, entries: list) -> None:
        state = self._state
        if state is None or not self.enabled:
            return
        for module, group, layer in entries:
            b, p = state.rows(group.positions, group.parts)
            if b.numel() == 0:
                continue
            new = cast_call(module, h[b, p], state.ctx.at(group.key, layer, b))
            h.index_put_((b, p), new)

    def _post_site(self, entries: list):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self._edit(_hidden(output), entries)

        return hook

    def _pre_site(self, entries: list):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self._edit(_hidden(args if args else kwargs.get("hidden_states")), entries)

        return hook


class _CallMask:
    """The attention mask of the model's current call (all ones when the call has none)."""

    def __init__(self) -> None:
        self.mask: Tensor | None = None

    def capture(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if mask is None:
            ref = ids if ids is not None else kwargs["inputs_embeds"][..., 0]
            mask = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
        self.mask = mask

    def mean(self, states: Tensor) -> Tensor:
        """(B, T, H) -> (B, H): mean over the positions the mask keeps."""
        m = self.mask.to(states.dtype).unsqueeze(-1)
        return (states * m).sum(1) / m.sum(1).clamp(min=1)


def install_mean_pooling(model: nn.Module, module: nn.Module, where: str) -> list[RemovableHandle]:
    """Make ``module`` of ``model`` work on the masked mean of the token states.

    where "input": ``module``'s first input (B, T, H) becomes the mean broadcast to every position
    (a head that picks one position then reads the mean); "output": ``module``'s output becomes
    the mean of its first input (B, H) (a pooler). A pre-hook on ``model`` keeps each call's mask.
    """
    state = _CallMask()
    if where == "input":
        def pooled(mod: nn.Module, args: tuple) -> tuple:
            return (state.mean(args[0]).unsqueeze(1).expand_as(args[0]), *args[1:])

        inner = module.register_forward_pre_hook(pooled)
    elif where == "output":
        inner = module.register_forward_hook(lambda mod, args, out: state.mean(args[0]))
    else:
        raise ValueError(f"where must be 'input' or 'output', got {where!r}")
    return [model.register_forward_pre_hook(state.capture, with_kwargs=True), inner]


@contextmanager
def capture_outputs(module: nn.Module) -> Iterator[list[Tensor]]:
    """Within the block, the hidden state of every output of ``module`` is appended to the yielded
    list (not detached); the hook is removed on exit (reftx.editing reads site states with it)."""
    seen: list[Tensor] = []
    handle = module.register_forward_hook(lambda mod, args, out: seen.append(_hidden(out)))
    try:
        yield seen
    finally:
        handle.remove()
