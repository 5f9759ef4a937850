"""reftx[vllm]: saved reftx interventions served per request inside vLLM, as a plugin (no fork).

    pip install -e ".[vllm]"   # or: bash scripts/setup.sh --vllm (its own environment, .venv-vllm)
    llm = LLM(base, enforce_eager=True, dtype="float32",
              additional_config={"reftx": {"adapters": {"a": "runs/x", "b": "runs/y/intervention"}}})
    llm.generate(prompts, SamplingParams(max_tokens=32, extra_args={"reft": "a"}))  # no "reft": the base

The entry point ``vllm.general_plugins: reftx`` makes vLLM call :func:`register` in every process
it starts (front end, engine core, workers). ``register`` refuses any vLLM other than the tested
one (:data:`TESTED_VLLM`), then wraps two vLLM methods, and does nothing more until an engine is
configured with an ``additional_config['reftx']`` section:

* ``InputProcessor.process_inputs`` (front end): the adapter a request names is checked, and its
  prefix cache salted per adapter and prompt length (reftx.integrations.vllm.frontend);
* ``CPUModelRunner.load_model`` (worker): after the model loads, reftx's hooks go on its decoder
  layers (reftx.integrations.vllm.worker); each forward places its tokens
  (reftx.integrations.vllm.placement) and edits every adapter's scheduled rows with the registered
  primitive, loaded from the saved folder (reftx.integrations.vllm.adapters);
* ``WorkerWrapperBase.reftx_adapters`` (worker): loads and unloads adapters while the engine runs,
  called through ``collective_rpc`` by the endpoint plugin ``vllm.endpoint_plugins: reftx_adapters``
  (reftx.integrations.vllm.runtime, reftx.integrations.vllm.endpoint).

``reftx serve RUN_DIR...`` (reftx.integrations.vllm.serve) starts vLLM's own OpenAI-compatible server
with these adapters; a request names one with ``extra_body={"vllm_xargs": {"reft": name}}``.

Compilation and CUDA graphs. What runs and is tested today is the CPU model runner, eager or
compiled; the GPU parts below are the design, refused until a GPU run proves them:

* The hooks are Python: under ``torch.compile`` Dynamo would trace them with the traced forward's
  batch baked in (vLLM traces once, on a dummy batch, without guards), and CUDA graphs replay
  kernels without running Python at all, so a plain hook's edit would be silently dropped. The edit
  is therefore one opaque custom op, ``torch.ops.reftx.vllm_edit`` (``torch.library``, as vLLM's
  attention op; reftx.integrations.vllm.compiled): compiled, every hook only calls it, and its body
  reads the forward's placement. On CPU, vLLM compiles the whole forward once with inductor
  (``CompilationMode.DYNAMO_TRACE_ONCE``, vllm/platforms/cpu.py); the parity tests run there with
  compilation on (tests/vllm/test_compiled.py). Sites are then fixed when the graph is traced: a
  runtime-loaded adapter that edits a module no adapter edited at start is refused. vLLM saves the
  compiled graph on disk keyed by the config's hash (AOT compile) for later engines with the same
  config; the plugin writes the op calls it traced (``additional_config['reftx']['compiled_sites']``)
  into that config, so a saved graph can only be reused by an engine that hooks the same sites under
  the same op keys (vLLM 0.32's CPU path fails to reload and recompiles anyway; the key is for the
  paths that do reload).
* Piecewise graphs (GPU, ``CompilationMode.VLLM_COMPILE``): the same op named in
  ``compilation_config.splitting_ops``, so each captured piece ends before it and the op runs
  eagerly with the forward's placement. Refused until ``benchmarks/gpu.sh`` proves it.
* Full CUDA graphs: per-token index buffers allocated once at the largest batch (persistent, as
  vLLM's LoRA keeps ``token_lora_indices``) and filled before each replay; the edit is then a
  fixed-shape masked op. A 1-token prefill chunk whose edit position changes between replays is
  exactly what such a graph would miss, so every CUDA-graph mode is refused until tested.
* vLLM's V1 GPU model runner shares the CPU runner's batch structures (the CPU runner subclasses
  it) but is unverified: it is refused unless ``REFTX_VLLM_UNVERIFIED_GPU=1`` (eager only), which
  ``benchmarks/gpu.sh`` sets to run the parity suite on a lent GPU. The V2 GPU model runner keeps
  its batch in other structures; it is not wrapped, and an engine with adapters on it is refused.
"""
from __future__ import annotations

import functools
import os
from typing import Any

from reftx.core.errors import ReftError

TESTED_VLLM = "0.32.0"  # the one vLLM release the parity suite (tests/vllm) passed with
_serving: list[Any] = []  # the hooks installed in this process (tests read them)


def check_version(installed: str) -> None:
    """Refuse a vLLM release the plugin was not tested with (one line, with the fix)."""
    if installed.split("+")[0] != TESTED_VLLM:
        raise ReftError(f"reftx's vLLM plugin is tested with vLLM {TESTED_VLLM} only, but vLLM {installed} is "
                        f"installed: install vllm=={TESTED_VLLM} (bash scripts/setup.sh --vllm), or leave the "
                        "plugin out with VLLM_PLUGINS (a list of plugin names without 'reftx')")


def check_compilation(vllm_config: Any, gpu: bool = False) -> bool:
    """Whether the forward is compiled (the hooks then call the opaque edit op); refuse what would drop
    edits or is not verified (see the docstring): CUDA graphs, piecewise compilation, and any
    compilation on the unverified GPU runner (``gpu``)."""
    from vllm.config import CompilationMode, CUDAGraphMode

    cc = vllm_config.compilation_config
    graphs = cc.cudagraph_mode not in (None, CUDAGraphMode.NONE)
    if graphs or cc.mode not in (CompilationMode.NONE, CompilationMode.DYNAMO_TRACE_ONCE) or (
            gpu and cc.mode != CompilationMode.NONE):
        raise ReftError(f"reftx adapters are verified eager and with vLLM's CPU compilation only (compilation mode "
                        f"{cc.mode.name}, cudagraph mode {getattr(cc.cudagraph_mode, 'name', cc.cudagraph_mode)} "
                        "could drop their edits): pass enforce_eager=True (--enforce-eager)")
    return cc.mode != CompilationMode.NONE


def _wrap_processor(cls: type) -> None:
    from reftx.integrations.vllm.frontend import admit

    original = cls.process_inputs

    @functools.wraps(original)
    def process_inputs(self: Any, *args: Any, **kwargs: Any) -> Any:
        return admit(self, original(self, *args, **kwargs))

    process_inputs.reftx = True
    cls.process_inputs = process_inputs


UNVERIFIED_GPU = "REFTX_VLLM_UNVERIFIED_GPU"  # =1: hook the V1 GPU runner (eager) to verify it on a GPU


def _wrap_runner(cls: type, kind: str) -> None:
    """Wrap ``cls.load_model``; ``kind``: "cpu" (verified), "gpu" (V1 GPU runner, unverified), "v2" (refused)."""
    from reftx.integrations.vllm.frontend import table_for
    from reftx.integrations.vllm.worker import Serving

    original = cls.load_model

    @functools.wraps(original)
    def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        table = table_for(self.vllm_config)
        verifying = kind == "gpu" and os.environ.get(UNVERIFIED_GPU) == "1"
        if table is not None and kind != "cpu" and not verifying:
            raise ReftError(f"reftx adapters are served by vLLM's V1 CPU model runner only for now; "
                            f"{cls.__module__}.{cls.__name__} is not verified (see reftx.integrations.vllm's "
                            f"docstring; {UNVERIFIED_GPU}=1 tries the V1 GPU runner, eager); on CPU unset "
                            "VLLM_USE_V2_MODEL_RUNNER")
        compiled = table is not None and check_compilation(self.vllm_config, gpu=kind != "cpu")
        out = original(self, *args, **kwargs)
        if table is not None:
            self.reftx_serving = Serving(self, self.model, table, compiled)  # runtime loading finds it here
            if compiled:  # vLLM keys its saved compiled graphs on this config's hash: the op calls join it
                self.vllm_config.additional_config["reftx"]["compiled_sites"] = self.reftx_serving.graph_sites
            _serving.append(self.reftx_serving)
        return out

    load_model.reftx = True
    cls.load_model = load_model


def _add_worker_rpc() -> None:
    """The worker method runtime loading calls through ``collective_rpc`` (reftx.integrations.vllm.runtime)."""
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    from reftx.integrations.vllm.runtime import RPC, worker_rpc

    if not hasattr(WorkerWrapperBase, RPC):
        setattr(WorkerWrapperBase, RPC, worker_rpc)


def register() -> None:
    """vLLM's ``vllm.general_plugins`` entry point (runs once per process; safe to run again)."""
    import vllm
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    check_version(vllm.__version__)
    if not getattr(InputProcessor.process_inputs, "reftx", False):
        _wrap_processor(InputProcessor)
    runners = [(CPUModelRunner, "cpu"), (GPUModelRunner, "gpu")]
    try:  # the V2 runner (needs Triton): refused, never silently unhooked
        from vllm.v1.worker.gpu.model_runner import GPUModelRunner as RunnerV2

        runners.append((RunnerV2, "v2"))
    except ImportError:
        pass
    for cls, kind in runners:
        if "load_model" in vars(cls) and not getattr(vars(cls)["load_model"], "reftx", False):
            _wrap_runner(cls, kind)
    _add_worker_rpc()


__all__ = ["TESTED_VLLM", "UNVERIFIED_GPU", "check_compilation", "check_version", "register"]
