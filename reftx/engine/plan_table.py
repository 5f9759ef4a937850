"""The interventions table that ``reftx plan``, every run and ``ReftModel.plan()`` print: one row per
group, or, when the groups span more than ``max_layers`` layers, one row per kind of group with its
layers as ranges ("L0-29.block_output.first": 30 groups), so it stays readable in an 80-column terminal."""
from __future__ import annotations

import io
from typing import Any

from rich.table import Table

MAX_LAYERS = 8  # more distinct layers than this: rows grouped over layers


def layer_ranges(layers: list[int]) -> str:
    """Sorted layers as ranges: [0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    out: list[str] = []
    for n in sorted(set(layers)):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ",".join(out)


def _rows(groups: list[Any], max_layers: int) -> list[tuple[str, str, str, int, int]]:
    """(key, kind, layers, groups, params) per row: each group, or groups of one layer that differ
    only in that layer (same kind, component, positions and size) merged into one row."""
    single = [g for g in groups if len(g.layers) == 1 and g.layers != (-1,) and g.key.startswith(f"L{g.layers[0]}.")]
    if len({n for g in groups for n in g.layers if n >= 0}) <= max_layers:
        single = []
    merged: dict[tuple, list[Any]] = {}
    for g in single:
        merged.setdefault((g.kind, g.key.split(".", 1)[1], g.params), []).append(g)
    rows, done = [], set()
    for g in groups:
        if g in single:
            bucket = merged[(g.kind, g.key.split(".", 1)[1], g.params)]
            if id(bucket) in done:
                continue
            done.add(id(bucket))
            ranges = layer_ranges([b.layers[0] for b in bucket])
            rows.append((f"L{ranges}.{g.key.split('.', 1)[1]}", g.kind, ranges, len(bucket),
                         sum(b.params for b in bucket)))
        else:
            rows.append((g.key, g.kind, layer_ranges(list(g.layers)) if g.layers != (-1,) else "-", 1, g.params))
    return rows


def plan_table(groups: list[Any], title: str = "interventions", max_layers: int = MAX_LAYERS) -> Table:
    """Key, kind, layers, groups and parameters per row, and the total. A key holds the component
    and positions (``L8.block_output.first+last``); a long key folds onto a second line, never
    cut short."""
    rows = _rows(groups, max_layers)
    table = Table(title=title)
    table.add_column("key", overflow="fold", ratio=1)
    table.add_column("kind", overflow="fold")
    table.add_column("layers", overflow="fold")
    table.add_column("groups", justify="right", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    for key, kind, layers, n, params in rows:
        table.add_row(key, kind, layers, str(n), f"{params:,}")
    table.add_row("total", "", "", str(len(groups)), f"{sum(g.params for g in groups):,}", style="bold")
    return table


class Plan(list):
    """``ReftModel.plan()``: the groups (a list of ``Group``) with their table; ``str()`` is the table
    as text, ``.table`` the rich table, and a notebook shows the table."""

    @property
    def table(self) -> Table:
        return plan_table(list(self))

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=100, record=True, file=io.StringIO())
        console.print(self.table)
        return console.export_text()

    def __rich__(self) -> Table:
        return self.table

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython/Jupyter
        printer.text(str(self))


def trainable_line(trainable: int, total: int) -> str:
    """``print_trainable_parameters()``'s line, in peft's words so the two read alike."""
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / max(total, 1):.4f}"
