"""The edit at one site (reftx.engine.hooks): its interventions one at a time, or several as one.

A site (one module's output or input) often holds several interventions of one kind: LoReFT at the
first and at the last prompt positions of a layer. Run one at a time, each costs its own gather, its
own small matmuls, its own ``index_put_`` and a few Python calls, forward and backward; with 64 small
interventions that was most of what reftx cost above a hand-written floor (issue 28,
benchmarks/README.md). So consecutive interventions of a site whose primitives opt in with equal
``Intervention.stack_key`` form a *stack*, run as one whenever, in this forward, they edit equally
many rows and no row twice: the rows of all of them are gathered once into (k, n, d), edited by one
``forward_stacked`` call (batched matmuls) and written back by one ``index_put_``. When rows overlap
(the order of the edits would matter) or their counts differ, the stack runs one at a time, in
schedule order, as every other intervention does. On disjoint rows the order is irrelevant, so both
ways compute the same edit (tests/contract/test_stacked.py). Whether a stack's rows qualify is
decided once per forward and shared by every layer (``ForwardState.stacks``).

The stacks of one key across the model form a *family* (LoReFT at the first and last positions of
32 layers: one family of 64). Its parameters are stacked once per forward, for every layer together
(``Intervention.stacked_params``: one ``stack`` per parameter, split into each stack's slice), when
the forward opens (``prepare``): no layer re-stacks anything, and the backward has one node per
parameter for the whole model instead of one per layer.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reftx.core.errors import ReftError
from reftx.core.intervention import cast_call

Entry = tuple[Any, Any, int]  # (intervention module, Group, layer)


class Unit(list):
    """Entries of one site run in order; ``rows`` (an int) names the row set of a stack of two or
    more (equal for stacks with the same positions at other layers), None for a single entry. A
    stack's parameters are slice ``index`` of its ``family``'s."""

    rows: int | None = None
    family: int = -1
    index: int = -1


class Family:
    """The stacks of one ``stack_key`` in a model: their modules in order, and each stack's size."""

    def __init__(self, number: int):
        self.number, self.modules, self.sizes = number, [], []

    def add(self, unit: Unit) -> None:
        unit.family, unit.index = self.number, len(self.sizes)
        self.modules += [m for m, _, _ in unit]
        self.sizes.append(len(unit))


def plan(entries: list[Entry], row_sets: dict[tuple, int], families: dict[Any, Family]) -> list[Unit]:
    """A site's entries, in schedule order, as units: runs of consecutive entries with one non-None
    ``stack_key`` become one stack, every other entry a unit of its own. ``row_sets`` and
    ``families`` (shared by the sites of one model) number the distinct position selections of the
    stacks and gather the stacks of one key."""
    units: list[Unit] = []
    keys: list[Any] = []
    for entry in entries:
        key = _key(entry[0])
        if key is not None and keys and key == keys[-1]:
            units[-1].append(entry)
        else:
            units.append(Unit([entry]))
            keys.append(key)
    for unit, key in zip(units, keys):
        if len(unit) > 1:
            spec = tuple((g.positions, g.parts) for _, g, _ in unit)
            unit.rows = row_sets.setdefault(spec, len(row_sets))
            families.setdefault(key, Family(len(families))).add(unit)
    return units


def prepare(families: list[Family]) -> dict[int, list[tuple[Tensor, ...]]]:
    """Once per forward: each family's parameters stacked, split into one tuple per stack."""
    out = {}
    for fam in families:
        params = fam.modules[0].stacked_params(fam.modules)
        out[fam.number] = list(zip(*(t.split(fam.sizes) for t in params)))
    return out


def _key(module: Any) -> Any:
    key = getattr(module, "stack_key", lambda: None)()
    try:
        hash(key)
    except TypeError:  # an unhashable key cannot be compared cheaply: run alone
        return None
    return key


def edit(h: Tensor, units: list[Unit], state: Any) -> None:
    """Edit ``h`` (B, T, d) in place with every unit of a site, in order."""
    for unit in units:
        if unit.rows is None or not _stacked(h, unit, state):
            for entry in unit:
                _one(h, entry, state)


def _check_width(h: Tensor, group: Any, layer: int) -> None:
    if h.shape[-1] != group.dim:
        raise ReftError(f"{group.key}: the hidden state at {group.component!r} (layer {layer}) has width "
                        f"{h.shape[-1]}, but the intervention was built for width {group.dim}")


def _one(h: Tensor, entry: Entry, state: Any) -> None:
    module, group, layer = entry
    _check_width(h, group, layer)
    b, p = state.rows(group.positions, group.parts)
    if b.numel() == 0:
        return
    new = cast_call(module, h[b, p], state.ctx.at(group.key, layer, b))
    h.index_put_((b, p), new)


def _stacked(h: Tensor, unit: Unit, state: Any) -> bool:
    """Run ``unit`` as one; False (nothing done) when its rows do not qualify in this forward."""
    if unit.rows not in state.stacks:
        state.stacks[unit.rows] = _stack_rows(unit, state, h.shape[1])
    rows = state.stacks[unit.rows]
    if rows is None:
        return False
    first, group, layer = unit[0]
    _check_width(h, group, layer)
    b, p = rows
    if unit.family not in state.params:  # not prepared when the forward opened
        state.params.update(prepare([state.families[unit.family]]))
    x = h[b, p].view(len(unit), -1, h.shape[-1])
    new = first.forward_stacked(state.params[unit.family][unit.index], x)
    h.index_put_((b, p), new.flatten(0, 1))
    return True


def _stack_rows(unit: Unit, state: Any, seq: int) -> tuple[Tensor, Tensor] | None:
    """The rows of every entry, concatenated, when each entry has the same nonzero number of rows
    and no row appears twice (one host sync per forward and row set); else None."""
    parts = [state.rows(g.positions, g.parts) for _, g, _ in unit]
    n = parts[0][0].numel()
    if n == 0 or any(r[0].numel() != n for r in parts):
        return None
    b, p = torch.cat([r[0] for r in parts]), torch.cat([r[1] for r in parts])
    if torch.unique(b * seq + p).numel() != b.numel():
        return None
    return b, p


__all__ = ["Family", "Unit", "edit", "plan", "prepare"]
