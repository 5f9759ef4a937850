"""Requests naming an adapter that cannot be served get a one-line error at request time, and the
engine keeps serving every other request; the plugin is found through its entry point; engines that
would drop edits (compiled graphs, CUDA graphs) are refused."""
from __future__ import annotations

from importlib.metadata import entry_points
from types import SimpleNamespace

import pytest

from reftx.core.errors import ReftError
from tests.vllm.cases import PROMPTS, check, params, prompt, reference, served

BAD = [
    ("nosuch", r"^unknown adapter 'nosuch' in extra_args\['reft'\]; this server has: "),
    ("loreft-frist_last", r"^unknown adapter 'loreft-frist_last' .*\(did you mean 'loreft-first_last'\?\)"),
    ("other_base", r"^adapter 'other_base' cannot be served: .*other_base: it was trained on a 6-layer llama .*but the "
                   r"served model has 4 layers; serve it with the base it was trained on$"),
    ("damaged", r"^adapter 'damaged' cannot be served: .*interventions.safetensors cannot be read .*the file is damaged "
                r"or truncated$"),
    ("unplaceable", r"^adapter 'unplaceable' cannot be served: .*group L1.mlp_up.last: component 'mlp_up' cannot be "
                    r"placed in vLLM's layers; the vLLM plugin places block_output, attention_output, mlp_output$"),
]


@pytest.mark.parametrize("name, message", BAD, ids=[b[0] for b in BAD])
def test_bad_adapter_is_refused_at_request_time_and_serving_goes_on(llm, hf_base, adapters, name, message):
    engine = llm.llm_engine
    engine.add_request("good-before", prompt(PROMPTS["short"]), params("loreft-generated"))
    with pytest.raises(ValueError, match=message) as err:
        engine.add_request("bad", prompt(PROMPTS["short"]), params(name))
    assert "\n" not in str(err.value)
    engine.add_request("good-after", prompt(PROMPTS["long"]), params("grun-first_last"))
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = served(out)
    assert sorted(done) == ["good-after", "good-before"]
    check(done["good-before"], reference(hf_base, adapters["loreft-generated"], PROMPTS["short"]))
    check(done["good-after"], reference(hf_base, adapters["grun-first_last"], PROMPTS["long"]))


def test_plugin_is_registered_through_its_entry_point(llm):
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    from reftx.integrations import vllm as plugin

    found = [ep.value for ep in entry_points(group="vllm.general_plugins") if ep.name == "reftx"]
    assert found == ["reftx.integrations.vllm:register"]
    assert CPUModelRunner.load_model.reftx and InputProcessor.process_inputs.reftx
    assert plugin._serving and "loreft-first_last" in plugin._serving[-1].names


def test_compiled_or_graph_captured_engines_are_refused():
    from vllm.config import CompilationConfig, CompilationMode, CUDAGraphMode

    from reftx.integrations.vllm import check_eager

    check_eager(SimpleNamespace(compilation_config=CompilationConfig(mode=CompilationMode.NONE,
                                                                      cudagraph_mode=CUDAGraphMode.NONE)))
    for cc in (CompilationConfig(mode=CompilationMode.VLLM_COMPILE, cudagraph_mode=CUDAGraphMode.NONE),
               CompilationConfig(mode=CompilationMode.NONE, cudagraph_mode=CUDAGraphMode.FULL)):
        with pytest.raises(ReftError, match=r"^reftx adapters need vLLM in eager mode \(compilation mode .* would "
                                            r"drop their edits\): pass enforce_eager=True \(--enforce-eager\)$"):
            check_eager(SimpleNamespace(compilation_config=cc))
