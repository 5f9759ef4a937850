"""Generation equivalence over the whole generation surface, on every supported decoder architecture.

For each architecture x batch layout x position schedule: KV-cached ``generate`` == uncached
``generate`` == a step-by-step teacher-forced forward (argmax for greedy layouts; the beam's summed
log-probabilities for beam search). This is the suite that catches a transformers release that
changes how ``generate`` drives the model (transformers 5.24 moved the cache to ``cache=``, dropped
``cache_position`` and the all-ones mask; every case below failed or was never run before).
Encoders are exempt (no generation).
"""
from __future__ import annotations

import inspect

import pytest
import torch

import reftx
from tests.conftest import batch, perturb, tiny_model

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gpt2"]
SCHEDULES = {
    "last": "last_prompt",
    "first/last": {"first": 2, "last": 2},
    "all_prompt": "all_prompt",
    "gen1": {"generated": 1},
    "gen3": {"generated": 3},
    "gen-1": {"generated": -1},
    "gen3+prompt": {"generated": 3, "prompt": True},
}
LAYOUTS = ["batch1", "equal", "left_padded", "beams"]
NEW = 7


def build(arch: str, positions) -> reftx.ReftModel:
    kind = "loreft" if not isinstance(positions, dict) or "generated" not in positions else "lobireft"
    spec = {"kind": kind, "rank": 4, "layers": [0, 2], "positions": positions}
    return perturb(reftx.attach(tiny_model(arch), [spec]), 2.0)


def inputs(layout: str):
    if layout == "batch1":
        return batch(seed=3, b=1, t=6)
    if layout == "equal":
        ids, _ = batch(seed=4, b=3, t=7)
        return ids, torch.ones_like(ids)
    return batch(seed=5, b=3 if layout == "left_padded" else 2, t=8, left_pad=True)


def generate(model, ids, mask, **kw):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                         pad_token_id=0, eos_token_id=None, return_dict_in_generate=True,
                         output_logits=True, **kw)
    return out


def teacher_forced(model, seqs, mask):
    """Logits of one full forward over prompt + generated tokens; the prompt is the padded prompt.
    Position ids count non-padding tokens, as generate counts them (absolute-position models such
    as gpt2 depend on it under left padding)."""
    width = mask.shape[1]
    full_mask = torch.cat([mask, torch.ones(seqs.shape[0], seqs.shape[1] - width, dtype=mask.dtype)], 1)
    pos = (full_mask.cumsum(1) - 1).clamp(min=0)
    return model(input_ids=seqs, attention_mask=full_mask, position_ids=pos, prompt_lengths=mask.sum(1)).logits


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_equals_uncached_equals_teacher_forced(arch, schedule, layout):
    model = build(arch, SCHEDULES[schedule])
    ids, mask = inputs(layout)
    width = ids.shape[1]
    beams = {"num_beams": 3, "length_penalty": 0.0, "output_scores": True} if layout == "beams" else {"do_sample": False}
    cached = generate(model, ids, mask, **beams)
    uncached = generate(model, ids, mask, use_cache=False, **beams)
    assert torch.equal(cached.sequences, uncached.sequences)
    seqs = cached.sequences
    assert seqs.shape == (ids.shape[0], width + NEW)
    logits = teacher_forced(model, seqs, mask)
    step_logp = torch.log_softmax(logits[:, width - 1:-1].float(), -1)
    chosen = step_logp.gather(-1, seqs[:, width:, None]).squeeze(-1)
    if layout == "beams":
        # beam search keeps the sequence of highest summed log-probability (length_penalty 0): the
        # teacher-forced sum over the returned beam must equal the score generate reports for it
        torch.testing.assert_close(chosen.sum(-1), cached.sequences_scores, atol=2e-4, rtol=0)
        torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=2e-4, rtol=0)
    else:
        assert torch.equal(logits[:, width - 1:-1].argmax(-1), seqs[:, width:])
        step_logits = torch.stack(cached.logits, 1)
        torch.testing.assert_close(step_logits, logits[:, width - 1:-1], atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(torch.stack(uncached.logits, 1), step_logits, atol=2e-4, rtol=1e-4)
    with model.disabled():  # the edit is visible in this case, so the comparisons above can fail
        plain = teacher_forced(model, seqs, mask)
    assert not torch.allclose(plain[:, width - 1:-1], logits[:, width - 1:-1], atol=1e-3)


# -- the cases of the transformers 5.24 report, verbatim -------------------------------------------
PROMPT = [{"kind": "loreft", "rank": 4, "layers": [0, 2], "positions": {"first": 2, "last": 2}}]


def gen_spec(n):
    return [{"kind": "lobireft", "rank": 4, "layers": [1, 3], "positions": {"generated": n}}]


def greedy(model, ids, mask, n=8, **kw):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                          pad_token_id=0, eos_token_id=None, **kw)


@pytest.mark.parametrize("n", [1, 3, -1])
def test_generated_positions_exact_with_kv_cache(n):
    """Cached decoding edits exactly the decode steps whose input is generated token i < n:
    it matches generation without a cache and a teacher-forced full forward."""
    model = perturb(reftx.attach(tiny_model("llama"), gen_spec(n) + [{**PROMPT[0], "name": "p"}]), 2.0)
    ids, mask = batch(t=6, b=1)
    cached = greedy(model, ids, mask)
    uncached = greedy(model, ids, mask, use_cache=False)
    assert torch.equal(cached, uncached)
    full = model(input_ids=cached, prompt_lengths=torch.tensor([6])).logits
    assert torch.equal(full[0, 5:-1].argmax(-1), cached[0, 6:])
    with model.disabled():
        plain = greedy(model, ids, mask)
    assert not torch.equal(plain, cached)  # the edit matters for this model


def test_generated_n_counts_decode_steps():
    """Record which decode steps are edited through the context's batch index."""
    seen = []
    model = reftx.attach(tiny_model("llama"), gen_spec(3))
    mod = model.intervention("L1.block_output.gen3")
    mod.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    ids, mask = batch(t=6, b=2, left_pad=True)
    greedy(model, ids, mask, n=6)
    assert seen == [2, 2, 2]  # decode steps 0, 1, 2 only; nothing at prefill (no token generated yet)


@pytest.mark.parametrize("spec", [PROMPT, gen_spec(2)])
def test_batched_left_padding_matches_rows_alone(spec):
    model = perturb(reftx.attach(tiny_model("llama"), spec), 1.0)
    ids, mask = batch(t=9, b=3, left_pad=True)
    together = greedy(model, ids, mask)
    for i in range(3):
        keep = mask[i].bool()
        alone = greedy(model, ids[i:i + 1, keep], mask[i:i + 1, keep])
        assert torch.equal(together[i, 9:], alone[0, keep.sum():])


def test_beam_search_runs_and_matches_uncached():
    model = perturb(reftx.attach(tiny_model("llama"), PROMPT + [{**gen_spec(2)[0], "name": "g"}]), 1.0)
    ids, mask = batch(t=6, b=2, left_pad=True)
    a = greedy(model, ids, mask, num_beams=3)
    b = greedy(model, ids, mask, num_beams=3, use_cache=False)
    assert a.shape == (2, 14) and torch.equal(a, b)


def test_prompt_edit_changes_prefill_only():
    model = perturb(reftx.attach(tiny_model("llama"), PROMPT), 2.0)
    ids, mask = batch(t=6, b=1)
    out = greedy(model, ids, mask)
    # teacher-forced: prompt positions edited, generated ones not
    full = model(input_ids=out, prompt_lengths=torch.tensor([6])).logits
    assert torch.equal(full[0, 5:-1].argmax(-1), out[0, 6:])


def test_prompt_edit_on_unpadded_prompt_is_not_reapplied_at_decode():
    """transformers 5.24 sends an unpadded prompt's decode steps with no mask and no cache_position;
    the old keyword-based detection re-applied prompt edits to every generated token
    ([28, 95, 95, 95, ...]). Count the edited rows per forward instead of trusting the tokens (with
    the interventions run one at a time, so the module's own forward sees its rows: a stack of the first
    and last edits calls forward_stacked instead, reftx.engine.stacked)."""
    from reftx.parts.compose import Delta

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Delta, "stack_key", lambda self: None)
        model = build("llama", {"first": 2, "last": 2})
    seen = []
    model.intervention("L0.block_output.first").register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    ids, mask = batch(t=6, b=1)
    generate(model, ids, mask, do_sample=False)
    assert seen == [2]  # the prefill's two first tokens, then nothing on the 6 decode steps


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sampling_same_seed_cached_uncached(arch):
    model = build(arch, {"generated": 3, "prompt": True})
    ids, mask = batch(seed=7, b=2, t=6, left_pad=True)
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        runs.append(generate(model, ids, mask, do_sample=True, top_k=0, temperature=1.0, use_cache=use_cache,
                             num_return_sequences=2))
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    seqs = runs[0].sequences
    assert seqs.shape[0] == 4  # num_return_sequences expands every row
    logits = teacher_forced(model, seqs, mask.repeat_interleave(2, 0))
    torch.testing.assert_close(torch.stack(runs[0].logits, 1), logits[:, 5:-1], atol=2e-4, rtol=1e-4)


def test_prompt_lookup_decoding_matches_greedy():
    """Assisted (prompt-lookup) decoding verifies several candidate tokens in one cached forward and
    may append several tokens per step; the generation state follows it through the stopping
    criterion. The result must equal plain greedy decoding."""
    model = build("llama", {"generated": 4, "prompt": True})
    ids = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7]])  # repeats, so the lookup proposes candidates
    mask = torch.ones_like(ids)
    greedy = generate(model, ids, mask, do_sample=False).sequences
    lengths = []
    spy = model.base.register_forward_pre_hook(lambda m, a, kw: lengths.append(kw["input_ids"].shape[1]),
                                               with_kwargs=True)
    # eos_token_id is set (min_new_tokens keeps it from being generated): transformers 5.0's prompt
    # lookup fails on eos_token_id=None inside torch.isin
    looked = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                            pad_token_id=0, eos_token_id=2, do_sample=False, prompt_lookup_num_tokens=3)
    spy.remove()
    assert torch.equal(looked, greedy)
    assert lengths[0] > ids.shape[1] and max(lengths[1:]) > 1  # candidates were verified in batches


def test_chunked_prefill_matches_one_prefill():
    model = build("llama", {"first": 2, "last": 2})
    ids, mask = batch(seed=8, b=1, t=9)
    one = generate(model, ids, mask, do_sample=False).sequences
    with model.disabled():
        try:
            generate(model, ids, mask, do_sample=False, prefill_chunk_size=4)
        except ValueError as e:  # transformers 5.0: "Cannot use prefill chunking without a cache"
            pytest.skip(f"this transformers release cannot chunk the prefill even without reftx: {e}")
    chunked = generate(model, ids, mask, do_sample=False, prefill_chunk_size=4).sequences
    assert torch.equal(one, chunked)


def _cache_kw(model) -> str:
    """The keyword this transformers release takes the KV cache under (5.24 renamed it)."""
    params = inspect.signature(type(model.base).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def test_user_cache_continuation():
    """A cache built by this model over a prefix, then generate on prefix + new tokens with that cache:
    only the uncached tail runs; with an `all` schedule (every position edited, so the cached prefix
    was built exactly as a full run would) the result equals generating from scratch."""
    from transformers import DynamicCache

    model = build("llama", "all")
    ids, mask = batch(seed=9, b=1, t=8)
    scratch = generate(model, ids, mask, do_sample=False).sequences
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :5], use_cache=True, **{_cache_kw(model): cache})
    assert cache.get_seq_length() == 5
    cont = generate(model, ids, mask, do_sample=False, **{_cache_kw(model): cache}).sequences
    assert torch.equal(cont, scratch)


def test_forward_with_a_filled_cache_outside_generate_is_refused():
    from transformers import DynamicCache

    model = build("llama", {"first": 2, "last": 2})
    ids, _ = batch(b=1, t=6)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, use_cache=True, **{_cache_kw(model): cache})
    with pytest.raises(reftx.ReftError, match="outside ReftModel.generate"):
        model(input_ids=ids[:, -1:], use_cache=True, **{_cache_kw(model): cache})

