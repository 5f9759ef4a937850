"""The only place in reftx that registers forward hooks or otherwise interposes on a module's forward.

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
  state, no Python loop over examples. Several interventions of one kind at a
  site run as one (one gather, batched matmuls, one scatter: reftx.engine.stacked).

Only the handles created here are ever removed.

Classification heads that read mean-pooled states (``model.pooling: mean``, reftx.eval.classify) get
their hooks here too: ``install_mean_pooling``; the editing engine reads a module's outputs
through ``capture_outputs`` and replays cached site states through ``replay_site`` (its fast path:
the layers below the edited site are skipped, the hooks above run as usual).
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

from reftx.engine import checkpointing
from reftx.engine import positions as P
from reftx.engine import sites, stacked
from reftx.core.errors import ReftError
from reftx.engine.generation import GenerationState, Window, cache_length, find_cache, window_rows
from reftx.core.intervention import Context, Intervention
from reftx.engine.rotations import OrthoBasis, shared_rotations
from reftx.engine.schedule import Group, PositionSpec


@dataclass
class Overrides:
    """Per-call inputs that are not arguments of the base model."""

    prompt_lengths: Tensor | None = None
    intervention_positions: Tensor | None = None
    example_info: dict[str, Tensor] = field(default_factory=dict)
    state: ForwardState | None = None  # filled in by the pre-hook, read back by the caller


@dataclass
class ForwardState:
    batch_size: int
    seq_len: int
    device: torch.device
    spans: P.Spans | None  # None inside a generate call (window / prompt describe it)
    window: Window | None
    prompt: P.Spans | None
    width: int
    explicit: tuple[Tensor, Tensor] | None
    ctx: Context
    stack: ExitStack
    only: Tensor | None = None  # (B,) bool: the rows this manager edits (reftx.engine.multi); None: all
    _rows: dict[tuple, tuple[Tensor, Tensor]] = field(default_factory=dict)
    rotations: list[tuple[OrthoBasis, Tensor]] = field(default_factory=list)  # this forward's R per basis
    stacks: dict[int, tuple[Tensor, Tensor] | None] = field(default_factory=dict)  # reftx.engine.stacked
    families: list[stacked.Family] = field(default_factory=list)  # the model's stack families
    params: dict[int, list[tuple[Tensor, ...]]] = field(default_factory=dict)  # their stacked parameters

    def rows(self, spec: PositionSpec, parts: tuple[str, ...]) -> tuple[Tensor, Tensor]:
        key = (spec, parts)
        if key not in self._rows:
            if self.explicit is not None and spec.mode != "generated":
                pieces = [self.explicit]
            elif self.window is not None:
                pieces = [window_rows(self.prompt, self.width, self.window, spec, part) for part in parts]
            else:
                pieces = [P.part_rows(self.spans, spec, part) for part in parts]
            r = pieces[0] if len(pieces) == 1 else tuple(torch.cat(x) for x in zip(*pieces))
            if self.only is not None:  # once per forward and selector, like the rows themselves
                keep = self.only[r[0]]
                r = (r[0][keep], r[1][keep])
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


class HookManager:
    """Installs and removes reftx's hooks on one base model."""

    def __init__(self, base: nn.Module, groups: list[Group], modules: dict[str, Intervention],
                 parked: bool = False):
        self.base = base
        self.groups = groups
        self.modules = modules
        self.enabled = True
        self.parked = parked  # True: the hooks place and edit nothing (outside routed(), MultiReft's managers)
        self.only: Tensor | None = None  # see routed()
        self.pending: Overrides | None = None
        self.generation: GenerationState | None = None
        self._state: ForwardState | None = None
        self._closed: list[Context] | None = None  # see collecting()
        self._handles: list[RemovableHandle] = []
        self._prompt_groups = any(g.positions.mode not in ("all", "generated") or "all_prompt" in g.parts
                                  for g in groups)
        self._bases = [m for mod in modules.values() for m in mod.modules() if isinstance(m, OrthoBasis)]
        self._checkpointed = checkpointing.candidates(base)
        by_site: dict[tuple[int, bool], list] = defaultdict(list)
        targets: dict[int, nn.Module] = {}
        for g in groups:
            for layer in g.layers:
                target = sites.resolve(base, g.component, layer, f"interventions.{g.spec_index}.component", g.dim)
                pre = sites.uses_pre_hook(g.component)
                targets[id(target)] = target
                by_site[(id(target), pre)].append((modules[g.key], g, layer))
        row_sets: dict[tuple, int] = {}
        families: dict[Any, stacked.Family] = {}
        try:
            self._handles.append(base.register_forward_pre_hook(self._open, with_kwargs=True))
            self._handles.append(base.register_forward_hook(self._close, always_call=True))
            for (tid, pre), entries in by_site.items():
                entries = stacked.plan(entries, row_sets, families)
                if pre:
                    h = targets[tid].register_forward_pre_hook(self._pre_site(entries), with_kwargs=True)
                else:
                    h = targets[tid].register_forward_hook(self._post_site(entries))
                self._handles.append(h)
        except Exception:
            self.remove()
            raise
        self._families = list(families.values())

    # -- per-call inputs: written only here, through these context managers --------------------
    @contextmanager
    def forward_call(self, call: Overrides) -> Iterator[Overrides]:
        """Within the block, the next forward of the base reads ``call`` (and fills ``call.state``)."""
        self.pending = call
        try:
            yield call
        finally:
            self.pending = None

    @contextmanager
    def generation_call(self, state: GenerationState) -> Iterator[GenerationState]:
        """Within the block, every forward is placed by the generation ``state``."""
        self.generation = state
        try:
            yield state
        finally:
            self.generation = None
            self.pending = None

    @contextmanager
    def routed(self, only: Tensor) -> Iterator[None]:
        """Within the block, edit only the rows where ``only`` (B,) bool is True, and run even when
        parked (reftx.engine.multi: K adapters on one base, each on its own rows). A generate call that
        expands rows (beams, ``num_return_sequences``) expands ``only`` the same way."""
        saved = self.only, self.parked
        self.only, self.parked = only, False
        try:
            yield
        finally:
            self.only, self.parked = saved

    @contextmanager
    def collecting(self) -> Iterator[list[Context]]:
        """Within the block, the context of every forward that closes is appended to the yielded
        list: the auxiliary losses of forwards that a trainer runs on the base model directly."""
        seen: list[Context] = []
        self._closed = seen
        try:
            yield seen
        finally:
            self._closed = None

    @contextmanager
    def switched_off(self) -> Iterator[None]:
        """Within the block, no intervention edits anything (the reference model)."""
        before, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = before

    def current(self) -> ForwardState | None:  # the forward running now (reftx.engine.checkpointing)
        return self._state

    def swap(self, state: ForwardState | None, enabled: bool) -> tuple[ForwardState | None, bool]:
        """Make ``state`` the running forward's, with ``enabled``; returns the previous pair (a checkpointed
        layer's recomputation replays the state of its forward: reftx.engine.checkpointing)."""
        before, self._state, self.enabled = (self._state, self.enabled), state, enabled
        return before

    def remove(self) -> None:
        checkpointing.unbind(self, self._checkpointed)
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- top level -------------------------------------------------------------------------
    def _open(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.parked:
            return
        pending, self.pending = self.pending, None
        pending = pending or Overrides()
        ids = kwargs.get("input_ids", args[0] if args else None)
        x = ids if ids is not None else kwargs.get("inputs_embeds")
        if x is None:
            raise ValueError("reftx needs input_ids or inputs_embeds to place interventions")
        batch, seq = x.shape[0], x.shape[1]
        mask = kwargs.get("attention_mask")
        if pending.intervention_positions is not None:
            ip = torch.as_tensor(pending.intervention_positions)
            if ip.dim() != 2 or ip.shape[0] != batch:
                raise ValueError(f"intervention_positions has shape {tuple(ip.shape)}; expected ({batch}, k) for "
                                 f"this batch of {batch} (one row of positions per example, -1 for none)")
        cache_len = cache_length(find_cache(args, kwargs))
        gen, bd, window, prompt = self.generation, None, None, None
        if gen is not None:  # inside ReftModel.generate: the generation state places the forward
            window = gen.locate(seq, cache_len)
            prompt = gen.open_prompt(batch, mask, x.device)
            self._check_prompt(prompt, pending)
        else:
            if cache_len and pending.intervention_positions is None:
                raise ReftError(
                    f"this forward continues a KV cache of {cache_len} tokens outside ReftModel.generate, so "
                    "reftx cannot tell which tokens are prompt. Use ReftModel.generate (it places every "
                    "decode step exactly), or pass intervention_positions= for this call.")
            bd = P.spans(mask, batch, seq, x.device, kwargs.get("labels"), pending.prompt_lengths)
            self._check_prompt(bd, pending)
        explicit = None
        if pending.intervention_positions is not None:
            explicit = P.explicit_rows(pending.intervention_positions.to(x.device),
                                       mask if window is None else None, seq)
        ctx = Context(torch.empty(0, dtype=torch.long), batch, example_info=pending.example_info)
        width = gen.width if gen is not None else seq
        state = ForwardState(batch, seq, x.device, bd, window, prompt, width, explicit, ctx, ExitStack(),
                             _expand(self.only, batch, x.device))
        decoding = window is not None and window.offset >= width
        state.families = self._families
        if self.enabled and (not decoding or self._any_decode_edit()):
            if self._bases:
                state.rotations = state.stack.enter_context(shared_rotations(self._bases))
            state.params = stacked.prepare(self._families)  # outside every layer: checkpointing replays it
        if self._checkpointed and torch.is_grad_enabled():  # a checkpointed layer replays this state
            checkpointing.bind(self, self._checkpointed)
        pending.state = state
        self._state = state

    def _check_prompt(self, bd: P.Spans, pending: Overrides) -> None:
        if self._prompt_groups and pending.intervention_positions is None and not bool((bd.prompt_end > bd.start).any()):
            raise ValueError("every row has an empty prompt: the labels are not -100 on any token before the "
                             "response, so prompt positions select nothing. Mask the prompt in the labels with "
                             "-100 or pass prompt_lengths=")

    def _any_decode_edit(self) -> bool:
        return any(g.positions.mode in ("all", "generated") for g in self.groups)

    def _close(self, module: nn.Module, args: tuple, output: Any) -> None:
        state, self._state = self._state, None
        if state is not None:
            state.stack.close()
            if self._closed is not None:
                self._closed.append(state.ctx)

    # -- sites -------------------------------------------------------------------------------
    def _edit(self, h: Tensor, units: list) -> None:  # gather, edit, scatter back: reftx.engine.stacked
        if self._state is not None and self.enabled:
            stacked.edit(h, units, self._state)

    def _post_site(self, entries: list):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self._edit(_hidden(output), entries)

        return hook

    def _pre_site(self, entries: list):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self._edit(_hidden(args if args else kwargs.get("hidden_states")), entries)

        return hook


def _expand(only: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
    """A (B,) row selection over the ``batch`` rows a forward runs (generate repeats each row for
    beams and returned sequences, consecutively)."""
    if only is None:
        return None
    if batch % only.shape[0]:
        raise ReftError(f"the rows were routed for a batch of {only.shape[0]}, but the model runs {batch}")
    return only.to(device).repeat_interleave(batch // only.shape[0])


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


class Captured(list):
    """The hidden states a module output, in order, and whether it returned a tuple (``as_tuple``)."""

    as_tuple: bool = False


@contextmanager
def capture_outputs(module: nn.Module) -> Iterator[Captured]:
    """Within the block, the hidden state of every output of ``module`` is appended to the yielded
    list (not detached), and ``as_tuple`` records whether the module returns a tuple; the hook is
    removed on exit (reftx.recipes.edit.engine reads site states with it)."""
    seen = Captured()

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        seen.as_tuple = isinstance(out, tuple)
        seen.append(_hidden(out))

    handle = module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def replay_site(base: Any, layer: int, states: Tensor, as_tuple: bool = False) -> Iterator[None]:
    """Within the block, a forward of ``base`` skips the layers up to ``layer``: those below pass
    their input through and layer ``layer`` returns ``states`` (its cached output), so the hooks on
    that layer's output (the edit) and the layers above run as usual. The embeddings still run
    (cheap). Exact when ``states`` are what the layer would output, i.e. the unedited model's states
    at an edited site with no edit below it. Works for any architecture the sites table describes
    (the layers are found through reftx.engine.sites; each layer's own ``forward`` is swapped, so hooks
    registered on the modules stay in place); ``as_tuple``: the layers return tuples."""
    mods = [sites.resolve(base, "block_output", i) for i in range(layer + 1)]
    wrap = (lambda h: (h,)) if as_tuple else (lambda h: h)
    saved = [m.__dict__.get("forward") for m in mods]

    def through(*args: Any, **kwargs: Any) -> Any:
        return wrap(args[0] if args else kwargs["hidden_states"])

    for m in mods[:-1]:
        m.forward = through
    mods[-1].forward = lambda *args, **kwargs: wrap(states.to(args[0].device if args else states.device))
    try:
        yield
    finally:
        for m, f in zip(mods, saved):
            if f is None:
                del m.forward
            else:
                m.forward = f
