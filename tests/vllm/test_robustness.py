"""Requests naming an adapter that cannot be served get a one-line error at request time, and the
engine keeps serving every other request; the plugin is found through its entry point; engines that
would drop edits (CUDA graphs, piecewise compilation) or are unverified (the GPU runners) are refused."""
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
    assert any("loreft-first_last" in s.names for s in plugin._serving)


def test_graph_captured_piecewise_or_unverified_compilation_is_refused():
    from vllm.config import CompilationConfig, CompilationMode, CUDAGraphMode

    from reftx.integrations.vllm import check_compilation

    def config(mode, graphs=CUDAGraphMode.NONE):
        return SimpleNamespace(compilation_config=CompilationConfig(mode=mode, cudagraph_mode=graphs))

    assert check_compilation(config(CompilationMode.NONE)) is False
    assert check_compilation(config(CompilationMode.DYNAMO_TRACE_ONCE)) is True  # vLLM's CPU compilation
    assert check_compilation(config(CompilationMode.NONE), gpu=True) is False
    refused = [(config(CompilationMode.VLLM_COMPILE), False), (config(CompilationMode.NONE, CUDAGraphMode.FULL), False),
               (config(CompilationMode.NONE, CUDAGraphMode.PIECEWISE), False),
               (config(CompilationMode.DYNAMO_TRACE_ONCE), True)]  # compiled on the unverified GPU runner
    for cc, gpu in refused:
        with pytest.raises(ReftError, match=r"^reftx adapters are verified eager and with vLLM's CPU compilation only "
                                            r"\(compilation mode .* could drop their edits\): pass enforce_eager=True "
                                            r"\(--enforce-eager\)$"):
            check_compilation(cc, gpu=gpu)


def test_the_gpu_runner_is_refused_unless_verifying_it_eager(llm, monkeypatch):
    """vLLM's V1 GPU runner is hooked only with REFTX_VLLM_UNVERIFIED_GPU=1 (benchmarks/gpu.sh sets it)."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from reftx.integrations.vllm import UNVERIFIED_GPU

    runner = SimpleNamespace(vllm_config=llm.llm_engine.vllm_config)  # eager, with the reftx section
    monkeypatch.delenv(UNVERIFIED_GPU, raising=False)
    with pytest.raises(ReftError, match=r"^reftx adapters are served by vLLM's V1 CPU model runner only for now; "
                                        r"vllm\.v1\.worker\.gpu_model_runner\.GPUModelRunner is not verified .*"
                                        r"REFTX_VLLM_UNVERIFIED_GPU=1 tries the V1 GPU runner, eager\)"):
        GPUModelRunner.load_model(runner)
    monkeypatch.setenv(UNVERIFIED_GPU, "1")
    with pytest.raises(AttributeError):  # past the plugin's checks, into vLLM's own load_model
        GPUModelRunner.load_model(runner)
