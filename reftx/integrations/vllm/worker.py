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

Compiled (vLLM's CPU ``torch.compile``, mode DYNAMO_TRACE_ONCE), each site's hook only calls the
opaque op ``torch.ops.reftx.vllm_edit`` (reftx.integrations.vllm.compiled), whose body makes the same
edit, so the traced graph keeps it; the sites are then fixed once the first forward has been traced.

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
from reftx.integrations.vllm.adapters import Adapter, AdapterTable
from reftx.integrations.vllm.compiled import new_site
from reftx.integrations.vllm.placement import Placement

KEY = "reft"  # SamplingParams.extra_args[KEY]: the adapter a request uses


def adapter_name(params: Any) -> Any:
    """The adapter a request's SamplingParams names (None: the base model)."""
    extra = getattr(params, "extra_args", None) or {}
    return extra.get(KEY)


class Serving:
    """reftx's hooks on one vLLM model runner's model, serving every adapter of ``table``; adapters
    can be added (:meth:`add`) and retired (:meth:`retire`) while the engine runs. ``compiled``: the
    model's forward is traced by torch.compile, so each site's hook calls the opaque edit op."""

    def __init__(self, runner: Any, model: nn.Module, table: AdapterTable, compiled: bool = False) -> None:
        self.runner, self.table, self.model, self.compiled = runner, table, model, compiled
        self.traced = False  # compiled and a forward has run: the traced graph fixes the hooked sites
        self.graph_sites: list[str] = []  # compiled: "op key=component@layer" of every hooked site
        self.index: dict[str, int] = {}  # the served adapters: name -> adapter index
        self.retired: dict[str, int] = {}  # unloaded: requests admitted before the unload keep them
        self.retiring: set[int] = set()  # replaced by a reload: dropped once no running request uses them
        self.placement: Placement | None = None
        self._present: set[int] = set()  # the adapter indices of this forward's requests
        self._count = 0
        self._by_req: dict[str, int] = {}
        self._sites: dict[int, list] = {}  # id(module) -> its (adapter index, primitive, group, layer)
        self.handles = [model.register_forward_pre_hook(self._open, with_kwargs=True),
                        model.register_forward_hook(self._close, always_call=True)]
        for name, adapter in table.adapters.items():
            self.add(name, adapter)

    @property
    def names(self) -> list[str]:
        return list(self.index)

    def add(self, name: str, adapter: Adapter) -> None:
        """Serve ``adapter`` as ``name`` from the next forward on (every hook site resolved first)."""
        if name in self.index:
            raise ReftError(f"adapter {name!r} is already loaded; unload it first")
        ai, self._count = self._count, self._count + 1
        entries = []
        for g in adapter.groups:
            for layer in g.layers:
                target = sites.resolve(self.model, g.component, layer, f"adapter {name}: {g.key}", g.dim)
                entries.append((target, g.component, (ai, adapter.modules[g.key], g, layer)))
        new = sorted({f"{e[2][2].component} of layer {e[2][3]}" for e in entries if id(e[0]) not in self._sites})
        if self.traced and new:
            raise ReftError(f"adapter {name!r} edits {', '.join(new)}, which no adapter edited when the compiled "
                            "graph was traced, so it would never run: load it when the server starts, or serve "
                            "with --enforce-eager")
        for target, component, entry in entries:
            if id(target) not in self._sites:
                self._sites[id(target)] = []
                hook = self._site(self._sites[id(target)], component == "block_output", f"{component}@{entry[3]}")
                self.handles.append(target.register_forward_hook(hook))
            self._sites[id(target)].append(entry)
        if name in self.retired:
            self.retiring.add(self.retired.pop(name))
        self.index[name] = ai
        self.table.adapters[name] = adapter

    def retire(self, name: str) -> None:
        """Stop serving ``name`` to new requests. Requests admitted before keep it (the front end refuses
        the name from now on); its edits cost nothing in forwards without such a request."""
        if name not in self.index:
            raise ReftError(f"adapter {name!r} is not loaded")
        self.retired[name] = self.index.pop(name)
        self.table.adapters.pop(name, None)

    def _sweep(self) -> None:
        """Drop the edits of replaced adapters that no running request uses any more."""
        running = self.runner.requests
        self._by_req = {r: i for r, i in self._by_req.items() if r in running}
        done = self.retiring - set(self._by_req.values())
        for entries in self._sites.values():
            entries[:] = [e for e in entries if e[0] not in done]
        self.retiring -= done

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    # -- per forward ---------------------------------------------------------------------------
    def _adapter_of(self, req_id: str) -> int:
        if req_id not in self._by_req:
            state = self.runner.requests.get(req_id)
            name = adapter_name(getattr(state, "sampling_params", None))
            ai = -1 if name is None else self.index.get(name, self.retired.get(name))
            if ai is None:  # the front end refuses these first
                raise ReftError(f"request {req_id} names adapter {name!r}, which this worker has not loaded")
            if len(self._by_req) > 4096:  # finished requests: forget them
                self._by_req = {r: i for r, i in self._by_req.items() if r in self.runner.requests}
            self._by_req[req_id] = ai
        return self._by_req[req_id]

    def _open(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.placement = None
        self.traced = self.compiled
        if self.retiring:
            self._sweep()
        if not self._sites:
            return
        batch = self.runner.input_batch
        n_req = batch.num_reqs
        if n_req == 0:  # a dummy / profiling run
            return
        adapters = [self._adapter_of(r) for r in batch.req_ids[:n_req]]
        self._present = set(adapters)
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

    def _site(self, entries: list, residual: bool, label: str):
        def edit(h: Tensor, r: Tensor | None) -> None:
            place = self.placement
            mine = [e for e in entries if e[0] in self._present] if place is not None else []
            if mine:
                _edit(place, h, r, mine)

        def split(output: Any) -> tuple[Tensor, Tensor | None]:
            if isinstance(output, Tensor):
                return output, None
            return output[0], (output[1] if residual and len(output) > 1 else None)

        if not self.compiled:
            return lambda module, args, output: edit(*split(output))
        key = new_site(edit)
        self.graph_sites.append(f"{key}={label}")

        def compiled_hook(module: nn.Module, args: tuple, output: Any) -> None:
            torch.ops.reftx.vllm_edit(*split(output), key)  # traced as one opaque call

        return compiled_hook


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
