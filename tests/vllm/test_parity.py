"""vLLM with the reftx plugin generates exactly what ReftModel.generate does (fp32, greedy): the same
tokens, per-step log-probs within 1e-4, for every registered primitive × schedule family and every
composed modifier; all of them in one mixed batch with base requests (the long prompt split by
chunked prefill), and each family alone. Seeded sampling is reproducible."""
from __future__ import annotations

import pytest

from tests.vllm.cases import FAMILIES, PROMPTS, check, params, parity_cases, prompt, reference, served

CASES = parity_cases()
# every kind × family on both prompts; every composed modifier on the long (chunked) prompt
REQUESTS = [(name, p) for name in CASES for p in (PROMPTS if name.split("-", 1)[1] in FAMILIES else ["long"])]


@pytest.fixture(scope="module")
def mixed(llm):
    """One generate call: every adapter request, with base requests interleaved."""
    reqs = [r for i, r in enumerate(REQUESTS) for r in ([r, (None, "long" if i % 2 else "short")] if i % 25 == 0 else [r])]
    outs = llm.generate([prompt(PROMPTS[p]) for _, p in reqs], [params(a) for a, _ in reqs], use_tqdm=False)
    return {(a, p): served(o) for (a, p), o in zip(reqs, outs)}


@pytest.mark.parametrize("name, which", REQUESTS, ids=[f"{n}-{p}" for n, p in REQUESTS])
def test_mixed_batch_equals_reftmodel_generate(mixed, hf_base, adapters, name, which):
    check(mixed[(name, which)], reference(hf_base, adapters[name], PROMPTS[which]))


@pytest.mark.parametrize("which", list(PROMPTS))
def test_base_requests_in_the_mixed_batch_equal_the_base_model(mixed, hf_base, which):
    check(mixed[(None, which)], reference(hf_base, None, PROMPTS[which]))


def test_edits_change_tokens(mixed):
    """The parity above is not vacuous: most adapters generate other tokens than the base."""
    changed = [n for n, p in REQUESTS if mixed[(n, p)].tokens != mixed[(None, p)].tokens]
    assert len(changed) > 0.8 * len(REQUESTS), sorted(set(n for n, _ in REQUESTS) - set(changed))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_alone(llm, hf_base, adapters, family):
    for name in (f"loreft-{family}", f"grun-{family}"):
        out = llm.generate([prompt(PROMPTS["long"])], [params(name)], use_tqdm=False)
        check(served(out[0]), reference(hf_base, adapters[name], PROMPTS["long"]))


def test_seeded_sampling_is_reproducible(llm):
    runs = []
    for _ in range(2):
        ps = [params(a, temperature=1.0, seed=11) for a in ("loreft-generated", None, "brep-first_last")]
        outs = llm.generate([prompt(PROMPTS["short"])] * 3, ps, use_tqdm=False)
        runs.append([served(o).tokens for o in outs])
    assert runs[0] == runs[1]
