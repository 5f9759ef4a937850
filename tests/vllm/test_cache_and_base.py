"""Prefix caching stays on and stays correct: the cache is salted per adapter and prompt length, and
the test shows that without the salt a base request reuses an edited prefix and goes wrong. Base
requests are bit-identical to vLLM without the plugin (a separate process with it left out)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from tests.vllm.cases import check, params, prompt, reference, served
from tests.vllm.conftest import ENGINE


def _fresh(seed: int, length: int = 40) -> list[int]:
    """A prompt no other test sends (the engine's prefix cache has never seen it)."""
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randint(3, 97, (length,), generator=g).tolist()


def _run(llm, ids: list[int], adapter: str | None):
    out = llm.generate([prompt(ids)], [params(adapter)], use_tqdm=False)[0]
    return served(out), out.num_cached_tokens


def test_salted_prefix_cache_is_correct_and_still_hits(llm, hf_base, adapters):
    q = _fresh(1)
    probe = reference(hf_base, adapters["probe"], q)  # loreft at the first 2 positions: block 0's states change
    got, cached = _run(llm, q, "probe")
    assert cached == 0
    check(got, probe)
    got, cached = _run(llm, q, None)  # the probe's edited block is not reused for the base
    assert cached == 0 and got.tokens == reference(hf_base, None, q).tokens
    got, cached = _run(llm, q, "probe")  # the same adapter and length: a real prefix-cache hit
    assert cached == 32
    check(got, probe)


def test_salt_includes_the_prompt_length(llm, hf_base, adapters):
    """{last: 2} on a 33-token prompt edits position 31, inside the first 32-token block; a 40-token
    prompt with the same first 33 tokens edits 38 and 39 instead, so it must not reuse that block."""
    q = _fresh(2)
    name = "loreft-first_last"
    _run(llm, q[:33], name)
    got, cached = _run(llm, q, name)
    assert cached == 0
    check(got, reference(hf_base, adapters[name], q))


def test_without_the_salt_a_base_request_reuses_the_edit(llm, hf_base, monkeypatch):
    from reftx.integrations.vllm import frontend

    monkeypatch.setattr(frontend, "salt", lambda name, fingerprint, length, user: user)
    q = _fresh(3)
    _run(llm, q, "probe")
    got, cached = _run(llm, q, None)
    assert cached == 32  # the edited block was reused ...
    assert got.tokens != reference(hf_base, None, q).tokens  # ... and the base request went wrong


_NO_PLUGIN = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
from vllm.v1.engine.input_processor import InputProcessor
args = json.loads(sys.argv[1])
llm = LLM(args["model"], **args["engine"])
assert not getattr(InputProcessor.process_inputs, "reftx", False), "the plugin was loaded"
outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in args["prompts"]],
                    [SamplingParams(max_tokens=6, temperature=0.0, logprobs=0, ignore_eos=True)] * len(args["prompts"]),
                    use_tqdm=False)
print("RESULT" + json.dumps([[list(o.outputs[0].token_ids),
                              [s[t].logprob for s, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]] for o in outs]))
"""


def test_base_requests_are_bit_identical_to_vllm_without_the_plugin(llm, base_dir):
    """The same batch in both engines: base rows, and rows the plugin engine serves with adapters (the
    plain engine serves them as base requests: same shapes every step). Base rows must match exactly."""
    prompts = [_fresh(10 + i, 9 + 7 * i) for i in range(6)]
    names = [None, "loreft-first_last", None, "grun-generated", None, "brep-all"]
    outs = llm.generate([prompt(p) for p in prompts], [params(n) for n in names], use_tqdm=False)
    mine = [served(o) for o in outs]
    env = {**os.environ, "VLLM_PLUGINS": "none", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    arg = json.dumps({"model": base_dir, "engine": ENGINE, "prompts": prompts})
    proc = subprocess.run([sys.executable, "-c", _NO_PLUGIN, arg], env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain = json.loads(proc.stdout.split("RESULT", 1)[1])
    for i, name in enumerate(names):
        if name is None:
            assert [mine[i].tokens, mine[i].logprobs] == plain[i]  # exact, bit for bit
        else:
            assert mine[i].tokens != plain[i][0]  # the adapter rows were edited
