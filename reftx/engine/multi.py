"""MultiReft: K saved adapters on one frozen base, each row of a batch routed to its adapter.

    multi = reftx.MultiReft.from_pretrained(base, {"a": "runs/x/intervention", "b": "runs/y/intervention"})
    out = multi(input_ids=ids, attention_mask=mask, adapters=["a", None, "b"])   # None: the base model
    multi.generate(input_ids=ids, attention_mask=mask, adapters=["a", None, "b"], max_new_tokens=20)
    score_continuations(multi, tok, prompts, continuations, example_info=multi.route(["a", None, "b"]))

Each adapter keeps its own hook manager (reftx.engine.hooks) with its own schedule, positions,
layers and kinds; in a call, a manager places the forward exactly as that adapter alone would
(its own generation state, ``{generated: n}`` edits included) and edits only its rows: the row
selection filters its gathered (batch, position) indices once per forward and selector, so it
gathers and scatters only its own rows' scheduled positions (no loop over examples). Adapters a
call does not use stay parked (their hooks do nothing), and so do all of them outside a call:
a plain forward of the base is the frozen base. A row therefore gets what its adapter alone gives
it, to float rounding (the primitive runs on fewer rows), which is how ``reftx report``-style
evaluation scores many runs in one pass. Research use: the adapters' auxiliary losses are reported
per adapter, but there is no optimizer support; adapters that train base modules
(``train_modules``, e.g. a classifier head) are refused, since those weights cannot be routed.
"""
from __future__ import annotations

import os
import weakref
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import StoppingCriteriaList

from reftx.core.errors import ReftError, unknown
from reftx.core.intervention import Intervention
from reftx.engine.generation import open_generation
from reftx.engine.hooks import HookManager, Overrides
from reftx.engine.inputs import check_forward, check_real_weights
from reftx.engine.model import _ATTACHED, ReftModel  # one registry of hooked bases, shared with ReftModel
from reftx.engine.schedule import Group
from reftx.engine.serialization import CONFIG_NAME, WEIGHTS_NAME, read_config
from reftx.models import hub as share

ADAPTER = "reft_adapter"  # example_info key: each row's adapter index (-1: the base); see MultiReft.route


class MultiReft(nn.Module):
    """A frozen base with K named adapters; every call routes each row to one of them (or none)."""

    def __init__(self, base: nn.Module, adapters: dict[str, tuple[list[Group], dict[str, Intervention]]]):
        super().__init__()
        if base in _ATTACHED:
            raise ReftError("this base model already has reftx interventions attached; detach() them first")
        if not adapters:
            raise ReftError("MultiReft needs at least one adapter: {name: saved intervention folder}")
        self.base = base
        self.names: tuple[str, ...] = tuple(adapters)
        self.groups: list[list[Group]] = [groups for groups, _ in adapters.values()]
        self.adapters = nn.ModuleList(nn.ModuleDict({k.replace(".", "|"): m for k, m in mods.items()})
                                      for _, mods in adapters.values())
        self._token_labels = bool(getattr(base, "can_generate", bool)())
        frozen = {n: p.requires_grad for n, p in base.named_parameters()}
        base.requires_grad_(False)
        self._hooks: list[HookManager] = []
        try:
            for groups, mods in adapters.values():
                self._hooks.append(HookManager(base, groups, mods, parked=True))
        except Exception:
            _release(self._hooks, base, frozen)
            raise
        _ATTACHED.add(base)
        self._release = weakref.finalize(self, _release, self._hooks, base, frozen)

    @classmethod
    def from_pretrained(cls, base: nn.Module, adapters: dict[str, str | os.PathLike], allow_nonfinite: bool = False,
                        *, revision: str | None = None, token: str | None = None, cache_dir: Any = None) -> MultiReft:
        """Load every ``{name: folder}`` onto ``base``: a folder ``save_pretrained`` wrote, a run
        folder (its ``intervention/``), or a Hub repo id (at ``revision``), with
        ReftModel.from_pretrained's checks (the base it was trained for, shapes, finite weights);
        an error names the adapter."""
        check_real_weights(base)
        if base in _ATTACHED:
            raise ReftError("this base model already has reftx interventions attached; detach() them first")
        loaded: dict[str, tuple[list[Group], dict[str, Intervention]]] = {}
        for name, directory in adapters.items():
            if not isinstance(name, str) or not name:
                raise ReftError(f"adapter names must be non-empty strings, got {name!r}")
            try:
                run = Path(directory) / "intervention"
                if not (Path(directory) / CONFIG_NAME).is_file() and (run / CONFIG_NAME).is_file():
                    directory = run  # a run folder
                resolved = share.resolve(directory, (CONFIG_NAME, WEIGHTS_NAME), revision=revision, token=token,
                                         cache_dir=cache_dir)
                trains = read_config(Path(resolved) / CONFIG_NAME).get("train_modules")
                if trains:
                    raise ReftError(f"it trains base modules {list(trains)}, which cannot be routed per row; "
                                    "load it alone with reftx.ReftModel.from_pretrained")
                model = ReftModel.from_pretrained(base, resolved, allow_nonfinite)
            except ReftError as e:
                raise ReftError(f"adapter {name!r} ({directory}): {e}") from None
            loaded[name] = (model.groups, {g.key: model.intervention(g.key) for g in model.groups})
            model.detach()  # the modules stay; the hooks move to this MultiReft
        return cls(base, loaded)

    # -- introspection -------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.base.config

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    def named_interventions(self):
        """(``name/key``, primitive) of every group of every adapter, in order."""
        for name, groups, mods in zip(self.names, self.groups, self.adapters):
            for g in groups:
                yield f"{name}/{g.key}", mods[g.key.replace(".", "|")]

    def route(self, adapters: list[str | None]) -> list[dict[str, float]]:
        """Per-example ``example_info`` routing example i to ``adapters[i]`` (None: the base): what
        row-wise evaluation helpers take (reftx.eval.scoring.score_continuations(..., example_info=))."""
        return [{ADAPTER: float(i)} for i in self._indices(adapters, len(adapters)).tolist()]

    def _indices(self, adapters: Any, batch: int) -> Tensor:
        """(B,) long: each row's adapter index, -1 for the base."""
        if isinstance(adapters, str) or not hasattr(adapters, "__len__"):
            raise ReftError(f"adapters: expected a list with one adapter name (or None) per row, got {adapters!r}")
        if len(adapters) != batch:
            raise ReftError(f"adapters: {len(adapters)} entries for a batch of {batch} rows; pass one adapter "
                            "name (or None for the base model) per row")
        out = []
        for i, name in enumerate(adapters):
            if name is not None and name not in self.names:
                raise unknown(f"adapters.{i}", name, self.names, "adapter", "; or None for the base model")
            out.append(-1 if name is None else self.names.index(name))
        return torch.tensor(out, dtype=torch.long)

    def _rows(self, adapters: Any, info: dict[str, Tensor], batch: int) -> Tensor:
        if adapters is not None and ADAPTER in info:
            raise ReftError(f"pass adapters= or example_info[{ADAPTER!r}] (MultiReft.route), not both")
        if adapters is not None:
            return self._indices(adapters, batch)
        if ADAPTER not in info:
            raise ReftError("MultiReft needs adapters=[one adapter name or None per row] (or example_info "
                            f"from MultiReft.route); its adapters: {', '.join(self.names)}")
        idx = info[ADAPTER].reshape(-1).long()
        if idx.shape[0] != batch or bool(((idx < -1) | (idx >= len(self.names))).any()):
            raise ReftError(f"example_info[{ADAPTER!r}] must hold {batch} adapter indices in [-1, "
                            f"{len(self.names) - 1}]; build it with MultiReft.route([name or None, ...])")
        return idx

    def _check_alive(self, call: str) -> None:
        if not self._release.alive:
            raise ReftError(f"MultiReft.{call}: this MultiReft was detached; load the adapters again with "
                            "reftx.MultiReft.from_pretrained(base, {name: folder})")

    # -- running -------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, *, adapters: list[str | None] | None = None,
                prompt_lengths: Tensor | None = None, intervention_positions: Tensor | None = None,
                example_info: dict[str, Tensor] | None = None, **kwargs: Any) -> Any:
        """ReftModel.forward with row i edited by ``adapters[i]`` alone (None: the base), or by the
        adapter ``example_info`` names (``route``). ``out["aux_losses"]`` and ``out["records"]`` are
        keyed ``name/...`` per adapter."""
        self._check_alive("forward")
        check_forward(input_ids, kwargs.get("inputs_embeds"), labels, self._token_labels)
        x = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        if x is None:
            raise ValueError("MultiReft.forward needs input_ids (or inputs_embeds)")
        info = dict(example_info or {})
        rows = self._rows(adapters, info, x.shape[0]).to(x.device)
        info.pop(ADAPTER, None)
        calls: dict[str, Overrides] = {}
        with ExitStack() as stack:
            for k in self._used(rows):
                calls[self.names[k]] = call = Overrides(prompt_lengths, intervention_positions, info)
                stack.enter_context(self._hooks[k].forward_call(call))
                stack.enter_context(self._hooks[k].routed(rows == k))
            out = self.base(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        records, losses = {}, {}
        for name, call in calls.items():
            ctx = call.state.ctx if call.state is not None else None
            if ctx is not None:
                records |= {f"{name}/{k}": v for k, v in ctx.records.items()}
                losses |= {f"{name}/{k}": torch.stack(v).sum() for k, v in ctx.losses.items()}
        if records:
            out["records"] = records
        if losses:
            out["aux_losses"] = losses
        return out

    @torch.no_grad()
    def generate(self, *args: Any, adapters: list[str | None], prompt_lengths: Tensor | None = None,
                 **kwargs: Any) -> Any:
        """ReftModel.generate with row i generated under ``adapters[i]`` alone (None: the base).
        Every adapter in use places each forward with its own generation state (prompt positions
        at prefill, ``{generated: n}`` on generated token i < n), KV-cached or not; beams and
        ``num_return_sequences`` follow their row."""
        self._check_alive("generate")
        x = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else kwargs.get("inputs_embeds")))
        if x is None:
            raise ValueError("MultiReft.generate needs input_ids (or inputs_embeds)")
        rows = self._indices(adapters, x.shape[0]).to(x.device)
        criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
        with ExitStack() as stack:
            for k in self._used(rows):
                state = open_generation(self.base, args, kwargs, prompt_lengths, "MultiReft.generate")
                criteria.append(state.criterion())
                stack.enter_context(self._hooks[k].generation_call(state))
                stack.enter_context(self._hooks[k].routed(rows == k))
            return type(self.base).generate(self.base, *args, stopping_criteria=criteria, **kwargs)

    def _used(self, rows: Tensor) -> list[int]:
        """The adapters some row uses (one sync)."""
        return [k for k in torch.unique(rows).tolist() if k >= 0]

    def detach(self) -> nn.Module:
        """Remove every adapter's hooks and return the base exactly as it was (also done when the
        MultiReft is garbage-collected); the MultiReft is then spent."""
        self._release()
        return self.base


def _release(hooks: list[HookManager], base: nn.Module, frozen: dict[str, bool]) -> None:
    for h in hooks:
        h.remove()
    for n, p in base.named_parameters():
        p.requires_grad_(frozen.get(n, p.requires_grad))
    _ATTACHED.discard(base)


__all__ = ["ADAPTER", "MultiReft"]
