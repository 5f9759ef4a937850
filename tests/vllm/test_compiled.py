"""With vLLM's compilation on (the CPU platform compiles the whole forward once with inductor), the
plugin's hooks call the opaque op ``torch.ops.reftx.vllm_edit``, and vLLM still generates exactly what
ReftModel.generate does: every component and schedule family, adapters and base requests in one
batch, the long prompt split by chunked prefill, a prefix-cache hit. (A plain hook under the same
compilation fails at the first adapter request: Dynamo cannot trace its data-dependent rows.)
Runtime loading reuses the traced sites and refuses new ones; the traced sites join the config hash
vLLM keys its saved compiled graphs on."""
from __future__ import annotations

import pytest
import torch

from tests.vllm.cases import PROMPTS, check, params, prompt, reference, save_adapter, served
from tests.vllm.conftest import ENGINE, keep

SPECS = {  # every component, prompt and generated schedules, tying, a gated primitive
    "first_last": {"kind": "loreft", "rank": 2, "layers": [1, 3], "positions": {"first": 2, "last": 2}},
    "tied": {"kind": "direft", "rank": 2, "layers": [2], "component": "attention_output",
             "positions": {"first": 2, "last": 3}, "tie": "positions"},
    "generated": {"kind": "grun", "layers": [2], "component": "mlp_output", "positions": {"generated": 3}},
    "generated_prompt": {"kind": "loreft", "rank": 2, "layers": [0], "component": "mlp_output",
                         "positions": {"generated": 2, "prompt": True}},
}
LATE = {"kind": "loreft", "rank": 2, "layers": [3], "positions": {"last": 2}}  # a traced site (block 3)
NEW_SITE = {"kind": "loreft", "rank": 2, "layers": [0], "positions": {"last": 2}}  # block 0: never traced


@pytest.fixture(scope="module")
def folders(hf_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("compiled_adapters")
    for i, (name, spec) in enumerate({**SPECS, "late": LATE, "new_site": NEW_SITE}.items()):
        save_adapter(hf_base, spec, root / name, seed=40 + i)
    return {name: str(root / name) for name in [*SPECS, "late", "new_site"]}


@pytest.fixture(scope="module")
def compiled(base_dir, folders):
    from vllm import LLM

    served_now = {n: folders[n] for n in SPECS}
    engine = LLM(base_dir, **{**ENGINE, "enforce_eager": False}, additional_config={"reftx": {"adapters": served_now}})
    return keep(engine)


def test_the_forward_is_compiled_and_hooked_through_the_op(compiled):
    from vllm.config import CompilationMode

    from reftx.integrations import vllm as plugin

    config = compiled.llm_engine.vllm_config
    assert config.compilation_config.mode == CompilationMode.DYNAMO_TRACE_ONCE
    assert config.compilation_config.backend == "inductor"
    serving = next(s for s in reversed(plugin._serving) if s.compiled)
    assert serving.compiled and sorted(s.split("=")[1] for s in serving.graph_sites) == [
        "attention_output@2", "block_output@1", "block_output@3", "mlp_output@0", "mlp_output@2"]


def test_compiled_mixed_batch_equals_reftmodel_generate(compiled, hf_base, folders):
    reqs = [(name, p) for name in SPECS for p in PROMPTS] + [(None, p) for p in PROMPTS]
    outs = compiled.generate([prompt(PROMPTS[p]) for _, p in reqs], [params(a) for a, _ in reqs], use_tqdm=False)
    got = {r: served(o) for r, o in zip(reqs, outs)}
    for (name, which), result in got.items():
        check(result, reference(hf_base, folders[name] if name else None, PROMPTS[which]))
    changed = [r for r in reqs if r[0] and got[r].tokens != got[(None, r[1])].tokens]
    assert len(changed) >= 6, changed  # the edits run inside the compiled graph


def test_compiled_prefix_cache_hit(compiled, hf_base, folders):
    ids = torch.randint(3, 97, (40,), generator=torch.Generator().manual_seed(77)).tolist()
    want = reference(hf_base, folders["first_last"], ids)
    for expected_cached in (0, 32):
        out = compiled.generate([prompt(ids)], [params("first_last")], use_tqdm=False)[0]
        assert out.num_cached_tokens == expected_cached
        check(served(out), want)


def test_runtime_loading_reuses_traced_sites_and_refuses_new_ones(compiled, hf_base, folders):
    from reftx.integrations.vllm.runtime import RPC

    compiled.collective_rpc(RPC, args=("load", "late", folders["late"]))
    out = compiled.generate([prompt(PROMPTS["long"])], [params("late")], use_tqdm=False)[0]
    check(served(out), reference(hf_base, folders["late"], PROMPTS["long"]))
    with pytest.raises(Exception, match=r"adapter 'new_site' edits block_output of layer 0, which no adapter edited "
                                         r"when the compiled graph was traced, so it would never run: load it when "
                                         r"the server starts, or serve with --enforce-eager"):
        compiled.collective_rpc(RPC, args=("load", "new_site", folders["new_site"]))


def test_traced_sites_join_the_hash_vllm_keys_saved_graphs_on(compiled):
    config = compiled.llm_engine.vllm_config
    section = config.additional_config["reftx"]
    sites, before = list(section["compiled_sites"]), config.compute_hash()
    try:
        section["compiled_sites"] = sites[::-1]  # the same sites behind other op keys: another graph
        assert config.compute_hash() != before
    finally:
        section["compiled_sites"] = sites
    assert config.compute_hash() == before
