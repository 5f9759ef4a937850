"""What the vLLM tests serve: adapters over every registered primitive × schedule family (and every
composed modifier), saved from ReftModel; their ReftModel.generate references; and the requests."""
from __future__ import annotations

import dataclasses

import torch

from reftx.engine.model import ReftModel, attach
from reftx.testing import kinds
from reftx.testing.contract.test_compositions import MODIFIER_CASES

N_NEW = 6  # greedy tokens per request
# each family: a schedule, the component it edits, layers, tying (all seven position families)
FAMILIES = {
    "first_last": dict(positions={"first": 2, "last": 2}, component="block_output", layers=[1, 3]),
    "tied": dict(positions={"first": 2, "last": 3}, tie="positions", component="attention_output", layers=[2]),
    "last_prompt": dict(positions="last_prompt", component="mlp_output", layers=[0]),
    "all_prompt": dict(positions="all_prompt", component="block_output", layers=[2]),
    "all": dict(positions="all", component="attention_output", layers=[1]),
    "generated": dict(positions={"generated": 3}, component="block_output", layers=[1, 2], tie="layers"),
    "generated_prompt": dict(positions={"generated": 2, "prompt": True}, component="mlp_output", layers=[3]),
}


def _prompt(seed: int, length: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 97, (length,), generator=g).tolist()


# 40 tokens: split by the 32-token chunked-prefill budget; 9 tokens: one chunk
PROMPTS = {"long": _prompt(1, 40), "short": _prompt(2, 9)}


def parity_cases() -> dict[str, dict]:
    """{adapter name: intervention entry}: every kind × family, and every registered modifier setting
    (input gates, dropout, bounds, basis gates) once, on kinds taken in turn among those accepting it."""
    cases = {f"{k}-{f}": {"kind": k, **spec} for k in kinds() for f, spec in FAMILIES.items()}
    by_tag: dict[str, list[tuple[str, dict]]] = {}
    for kind, mod in MODIFIER_CASES:
        by_tag.setdefault("-".join(f"{k}={v}" for k, v in mod.items() if k != "bound_tau"), []).append((kind, mod))
    for i, (tag, options) in enumerate(by_tag.items()):
        kind, mod = options[(3 * i) % len(options)]
        cases[f"{kind}-{tag}"] = {"kind": kind, "layers": [2], "positions": {"first": 2, "last": 2}, **mod}
    return cases


def save_adapter(base, spec: dict, folder, seed: int = 1, scale: float = 0.5) -> None:
    """Attach ``spec``, move every weight by ``scale`` * N(0, 1) (edits that change tokens), save."""
    model = attach(base, [spec])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    model.save_pretrained(folder)
    model.detach()


@dataclasses.dataclass
class Result:
    tokens: list[int]
    logprobs: list[float]


def reference(base, folder, prompt: list[int], n: int = N_NEW) -> Result:
    """Greedy ``ReftModel.generate`` (``folder`` None: the base) and its per-step log-probs."""
    model = ReftModel.from_pretrained(base, folder).eval() if folder is not None else None
    try:
        out = (model or base).generate(input_ids=torch.tensor([prompt]),
                                       attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                       max_new_tokens=n, do_sample=False, return_dict_in_generate=True,
                                       output_logits=True)
    finally:
        if model is not None:
            model.detach()
    tokens = out.sequences[0, len(prompt):].tolist()
    return Result(tokens, [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, tokens)])


def served(output) -> Result:
    """A vLLM RequestOutput as tokens and the sampled tokens' log-probs."""
    seq = output.outputs[0]
    tokens = list(seq.token_ids)
    return Result(tokens, [step[t].logprob for step, t in zip(seq.logprobs, tokens)])


def params(adapter: str | None, n: int = N_NEW, **kw):
    from vllm import SamplingParams

    options = dict(max_tokens=n, temperature=0.0, logprobs=0, ignore_eos=True,
                   extra_args={"reft": adapter} if adapter else None)
    return SamplingParams(**{**options, **kw})  # kw: sampling settings that replace the greedy ones


def prompt(ids: list[int]):
    from vllm.inputs import TokensPrompt

    return TokensPrompt(prompt_token_ids=ids)


def check(got: Result, want: Result, tol: float = 1e-4) -> None:
    assert got.tokens == want.tokens
    gaps = [abs(a - b) for a, b in zip(got.logprobs, want.logprobs)]
    assert len(gaps) == len(want.tokens) and max(gaps) <= tol, gaps
