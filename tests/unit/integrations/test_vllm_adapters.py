"""The vLLM plugin's adapter table (no vLLM needed): saved folders load into the registered
primitives bit for bit, and every folder that cannot be served keeps a one-line error that a request
naming it gets, while the others load."""
from __future__ import annotations

import pytest
import torch

from reftx.core.errors import ReftError
from reftx.core.intervention import Context
from reftx.engine.model import attach
from reftx.integrations.vllm import check_version
from reftx.integrations.vllm.adapters import AdapterError, load_table
from reftx.integrations.vllm.frontend import salt
from reftx.testing.tiny import perturb, tiny_model

SPEC = {"kind": "loreft", "rank": 2, "layers": [1, 2], "positions": {"first": 2, "last": 2}}


def _save(base, spec, folder):
    model = attach(base, [spec])
    perturb(model)
    model.save_pretrained(folder)
    model.detach()
    return model


@pytest.fixture
def table(tmp_path):
    base = tiny_model("llama")
    good = _save(base, SPEC, tmp_path / "good" / "intervention")  # a run folder: its intervention/
    _save(tiny_model("llama", layers=6), SPEC, tmp_path / "deeper")
    _save(tiny_model("qwen2"), SPEC, tmp_path / "qwen")
    _save(base, {**SPEC, "component": "block_input"}, tmp_path / "unplaceable")
    damaged = _save(base, SPEC, tmp_path / "damaged")
    weights = tmp_path / "damaged" / "interventions.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    names = ("good", "deeper", "qwen", "unplaceable", "damaged")
    return good, load_table({n: tmp_path / n for n in names}, base.config, torch.float32), tmp_path, damaged


def test_good_adapter_loads_the_saved_primitives_exactly(table):
    model, t, tmp, _ = table
    adapter = t.get("good")
    assert adapter.folder == tmp / "good" / "intervention"
    assert [g.key for g in adapter.groups] == [g.key for g in model.groups]
    h = torch.randn(5, 32)
    for g in model.groups:
        ctx = Context(torch.zeros(5, dtype=torch.long), 1, g.key, g.layers[0])
        assert torch.equal(adapter.modules[g.key](h, ctx), model.intervention(g.key)(h, ctx))
    assert adapter.prompt_only() and len(adapter.fingerprint) == 16
    assert sorted(t.errors) == ["damaged", "deeper", "qwen", "unplaceable"]


@pytest.mark.parametrize("name, message", [
    ("deeper", r"adapter 'deeper' cannot be served: .*deeper: it was trained on a 6-layer llama .*but the served "
               r"model has 4 layers; serve it with the base it was trained on"),
    ("qwen", r"adapter 'qwen' cannot be served: .*it was trained on model_type 'qwen2' .*but vLLM serves 'llama'"),
    ("unplaceable", r"group L1.block_input.first: component 'block_input' cannot be placed in vLLM's layers; the "
                    r"vLLM plugin places block_output, attention_output, mlp_output"),
    ("damaged", r"interventions.safetensors cannot be read .*the file is damaged or truncated"),
    ("goood", r"unknown adapter 'goood' in extra_args\['reft'\] \(did you mean 'good'\?\); this server has: "
              r"damaged, deeper, good, qwen, unplaceable"),
])
def test_unservable_adapters_fail_at_request_time_with_one_line(table, name, message):
    _, t, _, _ = table
    with pytest.raises(AdapterError, match=message) as err:
        t.get(name)
    assert "\n" not in str(err.value) and isinstance(err.value, ValueError)  # vLLM answers 400, serves on


def test_adapter_name_must_be_a_string(table):
    with pytest.raises(AdapterError, match=r"extra_args\['reft'\] must be an adapter name \(a non-empty string\), got 3"):
        table[1].get(3)


def test_cache_salt_is_per_adapter_weights_and_prompt_length():
    assert salt("a", "f00d", 12, None) == "reftx:a:f00d:12"
    assert salt("a", "f00d", 12, "user") == "user|reftx:a:f00d:12"
    assert len({salt("a", "x", 12, None), salt("b", "x", 12, None), salt("a", "y", 12, None),
                salt("a", "x", 13, None)}) == 4


def test_untested_vllm_is_refused_with_the_fix():
    check_version("0.32.0")
    check_version("0.32.0+cpu")
    with pytest.raises(ReftError, match=r"^reftx's vLLM plugin is tested with vLLM 0.32.0 only, but vLLM 0.33.1 is "
                                        r"installed: install vllm==0.32.0 \(bash scripts/setup.sh --vllm\), or leave "
                                        r"the plugin out with VLLM_PLUGINS"):
        check_version("0.33.1")
