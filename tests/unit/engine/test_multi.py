"""MultiReft (reftx.engine.multi): K saved adapters on one frozen base, each row routed to its adapter.

Four adapters of different primitives and schedules (LoReFT on the first/last prompt tokens, DiReFT
on all prompt tokens, a ``{generated: 3}`` edit, GRUN's gated composed edit) plus base rows share
one batch; every row must equal its adapter alone within 1e-6 in fp32 (forward, teacher-forced
scoring, KV-cached and uncached greedy generation, beams), and base rows the frozen base."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import reftx
from reftx.engine.multi import ADAPTER
from reftx.eval.scoring import score_continuations
from tests.conftest import batch, perturb, tiny_model

SPECS = {
    "lo": [{"kind": "loreft", "rank": 4, "layers": [0, 2], "positions": {"first": 2, "last": 2}}],
    "di": [{"kind": "direft", "rank": 4, "layers": [1, 3], "positions": "all_prompt"}],
    "gen": [{"kind": "lobireft", "rank": 4, "layers": [1], "positions": {"generated": 3}}],
    "grun": [{"kind": "grun", "layers": [2], "positions": "last_prompt"}],
}
ROUTES = ["lo", None, "di", "gen", "grun", "lo"]
TOL = 1e-6
NEW = 6


def save_adapters(base, folder, specs=SPECS):
    """Each spec attached alone, perturbed (a visible edit), saved and detached: {name: folder}."""
    dirs = {}
    for i, (name, spec) in enumerate(specs.items()):
        model = perturb(reftx.attach(base, spec), 2.0, seed=i + 1)
        dirs[name] = model.save_pretrained(folder / name)
        model.detach()
    return dirs


def alone(base, directory, fn):
    """``fn`` of the adapter in ``directory`` loaded alone on ``base`` (detached afterwards)."""
    model = reftx.ReftModel.from_pretrained(base, directory).eval()
    try:
        return fn(model)
    finally:
        model.detach()


def rows_of(name, routes=ROUTES):
    return [i for i, a in enumerate(routes) if a == name]


@pytest.fixture
def loaded(tmp_path):
    base = tiny_model("llama")
    dirs = save_adapters(base, tmp_path)
    return base, dirs


def teacher_forced_batch():
    """Right-padded rows (row i has 2i pads) whose last 3 real tokens are the response (labels)."""
    ids, mask = batch(seed=5, b=6, t=14)
    labels = ids.masked_fill(mask == 0, -100)
    prompt_end = mask.sum(1) - 3
    labels[torch.arange(14)[None, :] < prompt_end[:, None]] = -100
    return ids, mask, labels


def test_forward_rows_equal_each_adapter_alone(loaded):
    """Teacher-forced forward (the prompt ends where the labels start): every adapter's rows equal
    that adapter alone on the same batch, and each row alone without padding; base rows the base."""
    base, dirs = loaded
    ids, mask, labels = teacher_forced_batch()
    ref_base = base(input_ids=ids, attention_mask=mask).logits
    multi = reftx.MultiReft.from_pretrained(base, dirs).eval()
    got = multi(input_ids=ids, attention_mask=mask, labels=labels, adapters=ROUTES).logits
    assert torch.equal(base(input_ids=ids, attention_mask=mask).logits, ref_base)  # parked outside a call
    multi.detach()
    for name, directory in dirs.items():
        rows = rows_of(name)
        want = alone(base, directory, lambda m: m(input_ids=ids, attention_mask=mask, labels=labels).logits)
        assert (got[rows] - want[rows]).abs().max() <= TOL
        assert (want[rows] - ref_base[rows]).abs().max() > 0.1  # the edit is visible: the check can fail
        for r in rows:  # the row alone, unpadded
            n = int(mask[r].sum())
            one = alone(base, directory, lambda m: m(input_ids=ids[r:r + 1, :n], labels=labels[r:r + 1, :n]).logits)
            assert (got[r, :n] - one[0]).abs().max() <= TOL
    assert torch.equal(got[1], ref_base[1])


def greedy(model, ids, mask, **kw):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=0,
                         eos_token_id=None, do_sample=False, return_dict_in_generate=True, output_logits=True, **kw)
    return out.sequences, torch.stack(out.logits, 1)


@pytest.mark.parametrize("mode", [{}, {"use_cache": False}, {"num_beams": 2, "num_return_sequences": 2}])
def test_generate_rows_equal_each_adapter_alone(loaded, mode):
    """KV-cached, uncached and beam generation: each row's tokens (and step logits) are its adapter's
    alone, the ``{generated: 3}`` adapter edits exactly its first 3 generated tokens; base rows are
    ``base.generate``."""
    base, dirs = loaded
    ids, mask = batch(seed=7, b=6, t=14, left_pad=True)
    multi = reftx.MultiReft.from_pretrained(base, dirs).eval()
    seqs, logits = greedy(multi, ids, mask, adapters=ROUTES, **mode)
    multi.detach()
    per = mode.get("num_return_sequences", 1)
    expand = lambda rows: [r * per + j for r in rows for j in range(per)]  # noqa: E731
    base_seqs, base_logits = greedy(base, ids, mask, **mode)
    assert torch.equal(seqs[expand([1])], base_seqs[expand([1])])
    for name, directory in dirs.items():
        rows = expand(rows_of(name))
        want_seqs, want_logits = alone(base, directory, lambda m: greedy(m, ids, mask, **mode))
        assert torch.equal(seqs[rows], want_seqs[rows])
        if not per > 1:  # beam search's logits are per beam, not per returned sequence
            assert (logits[rows] - want_logits[rows]).abs().max() <= TOL
            assert (want_logits[rows] - base_logits[rows]).abs().max() > 0.1


def test_teacher_forced_scoring_routes_by_example_info(tiny_dir, tmp_path):
    """reftx.eval.scoring.score_continuations scores many adapters in one pass (routing travels in
    example_info through its length-sorted batches): each pair's log-probs equal that adapter alone."""
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    dirs = save_adapters(base, tmp_path, {"lo": SPECS["lo"], "gen": SPECS["gen"]})
    prompts = ["The capital of France is", "Two plus two equals", "Hi"]
    conts = [" Paris, of course", " four", " there, how are you doing today"]
    routes = ["lo"] * 3 + ["gen"] * 3 + [None] * 3
    multi = reftx.MultiReft.from_pretrained(base, dirs)
    got = score_continuations(multi, tok, prompts * 3, conts * 3, example_info=multi.route(routes), batch_size=4)
    multi.detach()
    wants = {name: alone(base, d, lambda m: score_continuations(m, tok, prompts, conts)) for name, d in dirs.items()}
    wants[None] = score_continuations(base, tok, prompts, conts)
    for i, name in enumerate(routes):
        g, w = got[i], wants[name][i % 3]
        assert g.targets == w.targets and g.argmax == w.argmax
        assert max(abs(a - b) for a, b in zip(g.logprobs, w.logprobs)) <= TOL
    assert wants["gen"][2].logprobs[:3] != wants[None][2].logprobs[:3]  # the generated-token edit is scored


def test_routing_errors_are_one_line(loaded):
    base, dirs = loaded
    ids, mask = batch(seed=5, b=6, t=14)
    multi = reftx.MultiReft.from_pretrained(base, dirs)
    with pytest.raises(reftx.ConfigError, match=r"^adapters\.1: unknown adapter 'loo' \(did you mean 'lo'\?\); valid: "
                                                r"di, gen, grun, lo; or None for the base model$"):
        multi(input_ids=ids, attention_mask=mask, adapters=["lo", "loo", None, None, None, None])
    with pytest.raises(reftx.ReftError, match=r"^adapters: 2 entries for a batch of 6 rows; pass one adapter name"):
        multi(input_ids=ids, attention_mask=mask, adapters=["lo", "di"])
    with pytest.raises(reftx.ReftError, match=r"^adapters: 5 entries for a batch of 6 rows"):
        multi.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapters=ROUTES[:5], max_new_tokens=2)
    with pytest.raises(reftx.ReftError, match=r"^MultiReft needs adapters=\[one adapter name or None per row\]"):
        multi(input_ids=ids, attention_mask=mask)
    info = {ADAPTER: torch.tensor([0.0, 1, 2, 3, 4, -1])}
    with pytest.raises(reftx.ReftError, match=r"^example_info\['reft_adapter'\] must hold 6 adapter indices in \[-1, 3\]"):
        multi(input_ids=ids, attention_mask=mask, example_info=info)
    with pytest.raises(reftx.ReftError, match=r"^pass adapters= or example_info\['reft_adapter'\]"):
        multi(input_ids=ids, attention_mask=mask, adapters=ROUTES, example_info=info)
    with pytest.raises(reftx.ReftError, match="already has reftx interventions attached"):
        reftx.attach(base, SPECS["lo"])
    multi.detach()
    with pytest.raises(reftx.ReftError, match=r"^MultiReft.forward: this MultiReft was detached"):
        multi(input_ids=ids, attention_mask=mask, adapters=ROUTES)


def test_load_errors_name_the_adapter(loaded, tmp_path):
    """Another base, a base-module-training adapter (refused before any weight is copied), an
    attached base."""
    base, dirs = loaded
    with pytest.raises(reftx.ReftError, match=r"^adapter 'lo' \(.*lo\): model: interventions were trained on "
                                              r"model_type 'llama', not 'gpt2'$"):
        reftx.MultiReft.from_pretrained(tiny_model("gpt2"), dirs)
    head = reftx.attach(base, SPECS["lo"], train_modules=["lm_head"])
    with torch.no_grad():
        base.lm_head.weight.add_(1.0)
    head.save_pretrained(tmp_path / "head")
    base.lm_head.weight.data.sub_(1.0)
    head.detach()
    before = base.lm_head.weight.clone()
    with pytest.raises(reftx.ReftError, match=r"^adapter 'head' \(.*\): it trains base modules \['lm_head'\], which "
                                              r"cannot be routed per row"):
        reftx.MultiReft.from_pretrained(base, {**dirs, "head": tmp_path / "head"})
    assert torch.equal(base.lm_head.weight, before)
    model = reftx.attach(base, SPECS["lo"])  # nothing was left attached by the failure
    with pytest.raises(reftx.ReftError, match="already has reftx interventions attached; detach"):
        reftx.MultiReft.from_pretrained(base, dirs)
    model.detach()


def test_detach_restores_the_base(loaded):
    base, dirs = loaded
    base.model.layers[1].requires_grad_(True)
    want = {n: p.requires_grad for n, p in base.named_parameters()}
    hooks = {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in base.named_modules()}
    multi = reftx.MultiReft.from_pretrained(base, dirs)
    assert not any(p.requires_grad for p in base.parameters())
    keys = [k for k, _ in multi.named_interventions()]
    assert keys[:2] == ["lo/L0.block_output.first", "lo/L0.block_output.last"] and len(keys) == 4 + 2 + 1 + 1
    assert multi.detach() is base
    assert {n: p.requires_grad for n, p in base.named_parameters()} == want
    assert {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in base.named_modules()} == hooks
