"""The interventions table (reftx plan, run start) at 80 columns: nothing cut, many layers grouped."""
from __future__ import annotations

from rich.console import Console

import reftx
from reftx.engine.plan_table import layer_ranges, plan_table
from tests.conftest import tiny_config


def render(groups, **kw) -> list[str]:
    console = Console(width=80, record=True, file=open("/dev/null", "w"))
    console.print(plan_table(groups, **kw))
    return console.export_text().splitlines()


def test_layer_ranges():
    assert layer_ranges([7, 0, 1, 2, 5, 8, 1]) == "0-2,5,7-8"
    assert layer_ranges([3]) == "3" and layer_ranges(list(range(30))) == "0-29"


def test_few_layers_one_row_per_group_full_keys():
    spec = {"kind": "loreft", "rank": 4, "layers": [8, 15, 23], "positions": {"first": 3, "last": 5}, "tie": "positions"}
    _, groups = reftx.plan([spec], tiny_config("llama", layers=30))
    lines = render(groups)
    assert max(map(len, lines)) <= 80 and not any("…" in ln for ln in lines)
    body = [ln.split("│")[1:-1] for ln in lines if ln.startswith("│")]
    assert [[c.strip() for c in row] for row in body] == [
        ["L8.block_output.first+last", "loreft", "8", "1", "260"],
        ["L15.block_output.first+last", "loreft", "15", "1", "260"],
        ["L23.block_output.first+last", "loreft", "23", "1", "260"],
        ["total", "", "", "3", "780"],
    ]  # LoReFT rank 4 on d = 32: R 4x32 + W 4x32 + b 4 = 260 per group


def test_many_layers_grouped_with_totals_and_all_on_request():
    """30 layers x first/last (60 groups): two rows, each with its count and summed parameters; the
    keys of a grouped row are what a reader needs to find the saved weights (L0-29 = L0 ... L29)."""
    spec = {"kind": "loreft", "rank": 4, "layers": "all", "positions": {"first": 3, "last": 3}}
    lora = {"kind": "loreft", "rank": 2, "layers": [4], "positions": "last_prompt", "component": "mlp_output"}
    _, groups = reftx.plan([spec, lora], tiny_config("llama", layers=30))
    lines = render(groups)
    assert max(map(len, lines)) <= 80 and not any("…" in ln for ln in lines)
    body = [[c.strip() for c in ln.split("│")[1:-1]] for ln in lines if ln.startswith("│")]
    per = groups[0].params
    assert body == [
        ["L0-29.block_output.first", "loreft", "0-29", "30", f"{30 * per:,}"],
        ["L0-29.block_output.last", "loreft", "0-29", "30", f"{30 * per:,}"],
        ["L4.mlp_output.last_prompt", "loreft", "4", "1", f"{groups[-1].params:,}"],
        ["total", "", "", "61", f"{60 * per + groups[-1].params:,}"],
    ]
    assert len([ln for ln in render(groups, max_layers=10**6) if ln.startswith("│")]) == 62


def test_model_plan_prints_its_table_and_returns_the_groups(capsys):
    from tests.conftest import tiny_model

    model = reftx.attach(tiny_model("llama"), [{"kind": "loreft", "rank": 2, "layers": [1, 2],
                                               "positions": {"first": 1}}])
    groups = model.plan()
    shown = capsys.readouterr().out
    assert [g.key for g in groups] == ["L1.block_output.first", "L2.block_output.first"]
    assert shown == str(groups) and "L1.block_output.first" in shown and "total" in shown
    assert f"{sum(g.params for g in groups):,}" in shown.splitlines()[-2]
    assert model.plan(show=False) == groups and capsys.readouterr().out == ""
    model.print_trainable_parameters()
    trainable, total = model.count_parameters(), model.count_parameters(trainable_only=False)
    assert trainable == sum(g.params for g in groups) == 2 * (2 * 32 * 2 + 2)
    assert capsys.readouterr().out == (f"trainable params: {trainable:,} || all params: {total:,} || "
                                       f"trainable%: {100 * trainable / total:.4f}\n")
