"""Schedules expand into named groups without loading weights; bad entries name the field."""
from __future__ import annotations

import pytest

import reftx
from reftx.engine.schedule import layer_tag, plan, resolve_layers
from tests.conftest import tiny_config


@pytest.mark.parametrize("value, expected", [
    ("all", (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)),
    (3, (3,)),
    (-1, (9,)),
    ([1, 4], (1, 4)),
    (0.5, (5,)),
    ([0.625, 0.78, 0.97], (6, 8, 9)),
    ({"start": 2, "stop": 8, "step": 3}, (2, 5)),
    ({"every": 4}, (0, 4, 8)),
])
def test_resolve_layers(value, expected):
    assert resolve_layers(value, 10) == expected


def test_fractions_match_grun_on_32_layers():
    assert resolve_layers([0.625, 0.78, 0.97], 32) == (20, 25, 31)


@pytest.mark.parametrize("value, msg", [
    (10, "layers: layer 10 is out of range for a model with 10 layers"),
    ([1, 1], "repeats a layer"),
    (1.5, "fractional layer must be in"),
    ({"stop": 5, "steps": 2}, "layers.steps: unknown key (did you mean 'step'?)"),
])
def test_bad_layers(value, msg):
    with pytest.raises(reftx.ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        resolve_layers(value, 10)


def test_layer_tag():
    assert layer_tag((0, 1, 2, 5)) == "L0-2+5"
    assert layer_tag((7,)) == "L7"


CFG = tiny_config("llama", layers=6)
BASE = {"kind": "loreft", "rank": 4, "layers": [2, 5], "positions": {"first": 3, "last": 3}}


@pytest.mark.parametrize("tie, keys", [
    ("none", ["L2.block_output.first", "L2.block_output.last", "L5.block_output.first", "L5.block_output.last"]),
    ("positions", ["L2.block_output.first+last", "L5.block_output.first+last"]),
    ("layers", ["L2+5.block_output.first", "L2+5.block_output.last"]),
    ("all", ["L2+5.block_output.first+last"]),
])
def test_tying_keys(tie, keys):
    _, groups = plan([{**BASE, "tie": tie}], CFG)
    assert [g.key for g in groups] == keys
    # loreft rank 4 on width 32: R (32x4) + W (4x32) + b (4) = 260
    assert all(g.params == 260 for g in groups)


def test_mlp_up_width_and_embeddings():
    _, groups = plan([{"kind": "lobireft", "rank": 2, "component": "mlp_up", "layers": [0], "positions": "all"},
                      {"kind": "lobireft", "rank": 2, "component": "embeddings", "positions": "last_prompt"}], CFG)
    assert [(g.key, g.dim, g.params) for g in groups] == [
        ("L0.mlp_up.all", 72, 72 * 2 + 2), ("embeddings.last_prompt", 32, 32 * 2 + 2)]


def test_duplicate_keys_need_names():
    with pytest.raises(reftx.ConfigError, match=r"interventions.1.name: group key 'L2.block_output.first'"):
        plan([BASE, BASE], CFG)
    _, groups = plan([BASE, {**BASE, "name": "second"}], CFG)
    assert groups[-1].key == "second.L5.block_output.last"


@pytest.mark.parametrize("patch, msg", [
    ({"kind": "lorft"}, r"interventions.0.kind: unknown intervention 'lorft' \(did you mean 'loreft'\?\)"),
    ({"rnak": 4}, r"interventions.0.rnak: unknown key \(did you mean 'rank'\?\)"),
    ({"rank": "four"}, r"interventions.0.rank: expected int, got str 'four'"),
    ({"rank": 0}, r"interventions.0.rank: must be >= 1"),
    ({"component": "block_outptu"}, r"interventions.0.component: unknown component 'block_outptu' \(did you mean 'block_output'\?\)"),
    ({"positions": "last"}, r"interventions.0.positions: unknown positions 'last'"),
    ({"positions": {"frist": 3}}, r"interventions.0.positions.frist: unexpected key \(did you mean 'first'\?\)"),
    ({"tie": "position"}, r"interventions.0.tie: unknown tie 'position' \(did you mean 'positions'\?\)"),
    ({"layers": [2, 6]}, r"interventions.0.layers.1: layer 6 is out of range"),
    ({"activation": "swish"}, r"interventions.0.activation: invalid value 'swish'; choices: 'identity', 'relu'"),
])
def test_bad_entries_name_the_field(patch, msg):
    with pytest.raises(reftx.ConfigError, match=msg):
        plan([{**BASE, **patch}], CFG)


def test_rank_larger_than_width():
    with pytest.raises(reftx.ConfigError, match=r"interventions.0.rank: rank 64 is larger than the hidden width 32"):
        plan([{**BASE, "rank": 64}], CFG)


def test_unknown_model_type_lists_known():
    cfg = tiny_config("llama")
    cfg.model_type = "falcon"
    with pytest.raises(reftx.ConfigError, match=r"unknown model type .*'falcon'.*valid: bert, gemma3_text, gpt2, llama"):
        plan([BASE], cfg)


def test_raw_module_path():
    from tests.conftest import tiny_model
    model = reftx.attach(tiny_model("llama", layers=6),
                         [{**BASE, "component": "model.layers.{layer}.mlp.down_proj", "tie": "positions"}])
    assert [g.key for g in model.plan()] == ["L2.model_layers_L_mlp_down_proj.first+last",
                                              "L5.model_layers_L_mlp_down_proj.first+last"]
