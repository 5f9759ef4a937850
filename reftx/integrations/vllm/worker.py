"""The worker side: hooks on the model vLLM loaded, editing each adapter's scheduled rows per forward.

After the model runner loads its model (``load_model``, wrapped by :func:`reftx.integrations.vllm.register`),
:class:`Serving` installs, on that model:

* a pre-hook on the top module: it reads the forward's ``positions`` and the runner's batch
  (``input_batch.req_ids``, ``query_start_loc``, ``num_prompt_tokens``, each request's
  ``SamplingParams.extra_args['reft']``) and builds one :class:`Placement` for the forward. A forward
  with no adapter request (and vLLM's dummy and profiling runs) builds none: the hooks then return at
  once, so base requests run exactly the code vLLM runs without the plugin.
* one hook per edited module (reftx.engine.sites resolves ``block_output``, ``attention_output`` and
  ``mlp_output`` on vLLM's decoder layers, whose module names match transformers' for the llama
  family). For every (adapter, group) at that module it gathers the group's rows, runs the
  registered primitive on them (``cast_call``: in the primitive's dtype, back in the model's) and
  scatters the result in place: one gather and one scatter per group, no loop over tokens.

vLLM's decoder layers return ``(hidden, residual)`` and add them in the next layer's norm, so the
residual stream after block L (transformers' layer output, reftx's ``block_output``) is their sum.
The edit therefore reads ``hidden + residual`` on its rows, writes the edited state into ``hidden``
and zeroes ``residual`` there: the next layer's sum is then exactly the edited state.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor, nn

from reftx.core.errors import ReftError
from reftx.core.intervention import Context, cast_call
from reftx.engine import sites
from reftx.integrations.vllm.adapters import AdapterTable
from reftx.integrations.vllm.placement import Placement

KEY = "reft"  # SamplingParams.extra_args[KEY]: the adapter a request uses


def adapter_name(params: Any) -> Any:
    """The adapter a request's SamplingParams names (None: the base model)."""
    extra = getattr(params, "extra_args", None) or {}
    return extra.get(KEY)


class Serving:
    """reftx's hooks on one vLLM model runner's model, serving every adapter of ``table``."""

    def __init__(self, runner: Any, model: nn.Module, table: AdapterTable) -> None:
        self.runner, self.table = runner, table
        self.names = list(table.adapters)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.placement: Placement | None = None
        self._by_req: dict[str, int] = {}
        by_site: dict[int, list] = defaultdict(list)
        targets: dict[int, tuple[nn.Module, str]] = {}
        for ai, name in enumerate(self.names):
            adapter = table.adapters[name]
            for g in adapter.groups:
                for layer in g.layers:
                    target = sites.resolve(model, g.component, layer, f"adapter {name}: {g.key}", g.dim)
                    targets[id(target)] = (target, g.component)
                    by_site[id(target)].append((ai, adapter.modules[g.key], g, layer))
        self.handles = [model.register_forward_pre_hook(self._open, with_kwargs=True),
                        model.register_forward_hook(self._close, always_call=True)]
        for tid, entries in by_site.items():
            target, component = targets[tid]
            self.handles.append(target.register_forward_hook(self._site(entries, component == "block_output")))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    # -- per forward ---------------------------------------------------------------------------
    def _adapter_of(self, req_id: str) -> int:
        if req_id not in self._by_req:
            state = self.runner.requests.get(req_id)
            name = adapter_name(getattr(state, "sampling_params", None))
            if name is not None and name not in self.index:  # the front end refuses these first
                raise ReftError(f"request {req_id} names adapter {name!r}, which this worker has not loaded")
            if len(self._by_req) > 4096:  # finished requests: forget them
                self._by_req.clear()
            self._by_req[req_id] = -1 if name is None else self.index[name]
        return self._by_req[req_id]

    def _open(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.placement = None
        if not self.names:
            return
        batch = self.runner.input_batch
        n_req = batch.num_reqs
        if n_req == 0:  # a dummy / profiling run
            return
        adapters = [self._adapter_of(r) for r in batch.req_ids[:n_req]]
        if max(adapters) < 0:
            return
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        if positions is None:
            raise ReftError("reftx: the model's forward got no positions; cannot place interventions")
        starts = self.runner.query_start_loc.cpu[:n_req + 1]
        prompt_lens = torch.from_numpy(batch.num_prompt_tokens[:n_req].copy())
        self.placement = Placement(positions.cpu(), starts, prompt_lens, torch.tensor(adapters))

    def _close(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.placement = None

    def _site(self, entries: list, residual: bool):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            place = self.placement
            if place is None:
                return
            if isinstance(output, Tensor):
                h, r = output, None
            else:
                h, r = output[0], (output[1] if residual and len(output) > 1 else None)
            _edit(place, h, r, entries)

        return hook


def _edit(place: Placement, h: Tensor, r: Tensor | None, entries: list) -> None:
    """Apply every (adapter, primitive, group, layer) of one module to its rows of ``h`` (in place);
    with a residual ``r`` the state is ``h + r`` and the edit leaves ``h = new, r = 0`` there."""
    for ai, module, group, layer in entries:
        rows = place.rows(ai, group.positions, group.parts)
        if rows.numel() == 0:
            continue
        rows = rows.to(h.device)
        state = h[rows] if r is None else h[rows] + r[rows]
        ctx = Context(place.req[rows.cpu()].to(h.device), place.num_reqs, group.key, layer)
        h[rows] = cast_call(module, state, ctx)
        if r is not None:
            r[rows] = 0
