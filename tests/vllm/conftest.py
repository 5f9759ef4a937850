"""The vLLM serving plugin's end-to-end tests: collected only where vLLM imports (.venv-vllm). In the
CI stage that runs them (scripts/test-vllm.sh sets REFTX_VLLM_STAGE=1) a missing or broken vLLM is a
failure, never a skip.

One engine serves the whole module: a tiny random llama (head size 32, which vLLM's CPU attention
supports) in fp32, eager, a 64 MiB KV cache (explicit: a share of RAM fails once the test process
has grown), prefix caching on, chunked prefill with a 32-token budget (the long prompt is split
across steps), 32-token KV blocks (the smallest the CPU attention takes), and every adapter the
tests save, including the ones that cannot be served."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process (fast start)
try:
    import vllm  # noqa: F401
except Exception as err:  # noqa: BLE001 - an import that fails for any reason
    if os.environ.get("REFTX_VLLM_STAGE"):
        raise RuntimeError(f"the vLLM stage needs vllm importable in this environment, but: {err!r}; "
                           "run bash scripts/setup.sh --vllm") from err
    collect_ignore_glob = ["test_*.py"]

ENGINE = dict(skip_tokenizer_init=True, enforce_eager=True, dtype="float32", max_model_len=128, seed=0,
              kv_cache_memory_bytes=64 << 20, block_size=32, enable_prefix_caching=True,
              enable_chunked_prefill=True, max_num_batched_tokens=32)


def tiny_base_dir(root) -> str:
    """A 4-layer random llama (hidden 64, 2 heads of 32) whose lm_head is scaled so greedy steps have
    clear winners; saved once per session."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # no eos token: vLLM (ignore_eos) and generate both run exactly max_tokens steps
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      pad_token_id=0, bos_token_id=1, eos_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(25)
    model.save_pretrained(root)
    return str(root)


_KEPT: list = []


def keep(engine):
    """Keep a module's own in-process engine up until the session ends: shutting an in-process engine down
    tears down vLLM's process-wide model-parallel groups, which the session's engine (``llm``) still uses."""
    _KEPT.append(engine)
    return engine


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    return tiny_base_dir(tmp_path_factory.mktemp("vllm_base"))


@pytest.fixture(scope="session")
def hf_base(base_dir):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()


# adapters that cannot be served, next to the good ones (tests/vllm/test_robustness.py)
BROKEN = ("other_base", "damaged", "unplaceable")


def _broken(base, root) -> dict[str, str]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.vllm.cases import save_adapter

    spec = {"kind": "loreft", "rank": 2, "layers": [1], "positions": {"last": 2}}
    other = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                                         num_attention_heads=2, num_key_value_heads=1))
    save_adapter(other, spec, root / "other_base")
    save_adapter(base, spec, root / "damaged")
    weights = root / "damaged" / "interventions.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    save_adapter(base, {**spec, "component": "mlp_up"}, root / "unplaceable")
    return {n: str(root / n) for n in BROKEN}


@pytest.fixture(scope="session")
def adapters(hf_base, tmp_path_factory):
    """{name: saved folder}: every parity case (tests.vllm.cases), a prefix-cache probe, the broken ones."""
    from tests.vllm.cases import parity_cases, save_adapter

    root = tmp_path_factory.mktemp("vllm_adapters")
    folders = {}
    for i, (name, spec) in enumerate({**parity_cases(), "probe": {"kind": "loreft", "rank": 2, "layers": [1],
                                                                    "positions": {"first": 2}}}.items()):
        save_adapter(hf_base, spec, root / name, seed=i)
        folders[name] = str(root / name)
    return {**folders, **_broken(hf_base, root)}


@pytest.fixture(scope="session")
def llm(base_dir, adapters):
    """The engine every test shares (ENGINE settings), serving ``adapters``."""
    from vllm import LLM

    engine = LLM(base_dir, **ENGINE, additional_config={"reftx": {"adapters": adapters}})
    yield engine
    engine.llm_engine.engine_core.shutdown()
