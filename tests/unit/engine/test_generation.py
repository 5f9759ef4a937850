"""reftx.engine.generation: where each forward of a generate call sits, with hand-computed windows and rows."""
from __future__ import annotations

import gc

import pytest
import torch

import reftx
from reftx.engine import positions as P
from reftx.engine.generation import GenerationState, Window, window_rows
from reftx.engine.schedule import parse_positions
from tests.conftest import batch, tiny_model


def test_greedy_cached_windows():
    """Prompt of 5: prefill [0, 5), then decode steps read token 5, 6, ... (offset = L - 1)."""
    st = GenerationState(width=5, ids_len=5)
    assert st.locate(5, 0) == Window(0, 5, True)
    st.observe(6)  # generate appended generated token 0
    assert st.locate(1, 5) == Window(5, 1, False)
    st.observe(7)
    assert st.locate(1, 6) == Window(6, 1, False)
    assert st.locate(1, None) == Window(7, 1, False)  # no stopping-criterion call: counted


def test_uncached_windows_rerun_everything():
    st = GenerationState(width=5, ids_len=5)
    assert st.locate(5, None) == Window(0, 5, True)
    st.observe(6)
    assert st.locate(6, None) == Window(0, 6, False)
    st.observe(7)
    assert st.locate(7, None) == Window(0, 7, False)


def test_assisted_windows_follow_the_sequence():
    """First forward: prompt + 3 candidates; 2 accepted + 1 new token -> the sequence grows by 3.
    The cache places the window (5.24 keeps L - 1 tokens, 5.0 one fewer); the counts bound it."""
    st = GenerationState(width=4, ids_len=4, assisted=True)
    assert st.locate(7, 0) == Window(0, 7, True)
    st.observe(7)  # 3 tokens appended: L = 7
    assert st.locate(4, 6) == Window(6, 4, False)  # transformers 5.24: last token + 3 new candidates
    st.observe(9)  # L = 9
    assert st.locate(2, 7) == Window(7, 2, False)  # transformers 5.0: the last two tokens, no candidate
    st.observe(10)
    with pytest.raises(reftx.ReftError, match="cannot continue a sequence of 10 tokens"):
        st.locate(1, 7)  # [7, 8) would skip token 9
    with pytest.raises(reftx.ReftError, match="none was found"):
        st.locate(1, None)


def test_chunked_prefill_and_user_cache():
    st = GenerationState(width=9, ids_len=9)
    assert [st.locate(4, c) for c in (0, 4)] == [Window(0, 4, True), Window(4, 4, True)]
    assert st.locate(1, 8) == Window(8, 1, True)
    cont = GenerationState(width=8, ids_len=8, offset0=5)
    assert cont.locate(3, 5) == Window(5, 3, True)
    with pytest.raises(reftx.ReftError, match="already holds 8 tokens"):
        GenerationState(width=8, ids_len=8, offset0=8)


def test_cache_disagreement_is_loud():
    st = GenerationState(width=5, ids_len=5)
    st.locate(5, 0)
    st.observe(6)
    with pytest.raises(reftx.ReftError, match="KV cache holds 3 tokens"):
        st.locate(1, 3)


def _rows(spec, part, w, width=6):
    prompt = P.spans(torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]), 2, width, torch.device("cpu"), None,
                      None, width)
    b, p = window_rows(prompt, width, w, parse_positions(spec), part)
    return list(zip(b.tolist(), p.tolist()))


def test_window_rows_by_hand():
    """Rows 0 (2 left pads) and 1; prompt width 6."""
    assert _rows({"first": 1, "last": 1}, "first", Window(0, 6, True)) == [(0, 2), (1, 0)]
    assert _rows({"first": 1, "last": 1}, "last", Window(0, 6, True)) == [(0, 5), (1, 5)]
    assert _rows({"first": 1, "last": 1}, "last", Window(6, 1, False)) == []  # decode: no prompt edits
    assert _rows({"first": 1, "last": 1}, "last", Window(4, 2, True)) == [(0, 1), (1, 1)]  # continuation tail
    assert _rows({"generated": 2}, "gen2", Window(6, 1, False)) == [(0, 0), (1, 0)]  # generated token 0
    assert _rows({"generated": 2}, "gen2", Window(8, 1, False)) == []  # generated token 2: past n
    assert _rows({"generated": 2}, "gen2", Window(0, 9, False)) == [(0, 6), (0, 7), (1, 6), (1, 7)]  # uncached
    assert _rows({"generated": -1}, "gen_all", Window(7, 3, False)) == [(0, 0), (0, 1), (0, 2),
                                                                        (1, 0), (1, 1), (1, 2)]
    assert _rows("all", "all", Window(0, 7, False)) == [(0, 2), (0, 3), (0, 4), (0, 5), (0, 6)] + \
        [(1, i) for i in range(7)]
    assert _rows("all", "all", Window(5, 3, True)) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


PROMPT = [{"kind": "loreft", "rank": 4, "layers": [0, 2], "positions": {"first": 2, "last": 2}}]


def test_dropped_wrapper_releases_the_base():
    base = tiny_model("llama")
    ids, mask = batch()
    ref = base(input_ids=ids, attention_mask=mask).logits
    model = reftx.attach(base, PROMPT)
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.add_(1.0)
    assert not torch.equal(base(input_ids=ids, attention_mask=mask).logits, ref)  # the hooks edit the base
    del model
    gc.collect()
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in base.modules())
    assert hooks == 0
    assert torch.equal(base(input_ids=ids, attention_mask=mask).logits, ref)
    assert all(p.requires_grad for p in base.parameters())
    reftx.attach(base, PROMPT)  # attach works again


def test_intervention_positions_batch_must_match():
    model = reftx.attach(tiny_model("llama"), PROMPT)
    ids, mask = batch(b=2)
    with pytest.raises(ValueError, match=r"intervention_positions has shape \(1, 2\); expected \(2, k\)"):
        model(input_ids=ids, attention_mask=mask, intervention_positions=torch.tensor([[0, 1]]))


def test_raw_path_container_and_width_rejected_at_attach():
    spec = {"kind": "loreft", "rank": 2, "layers": [0], "positions": "last_prompt"}
    with pytest.raises(reftx.ConfigError, match=r"interventions.0.component.*'model.layers' names a container"):
        reftx.attach(tiny_model("llama"), [{**spec, "component": "model.layers"}])
    with pytest.raises(reftx.ConfigError, match=r"'model.layers.0.mlp.up_proj' \(Linear\) outputs width 72, but the "
                                                r"intervention is built for width 32"):
        reftx.attach(tiny_model("llama"), [{**spec, "component": "model.layers.{layer}.mlp.up_proj"}])
    ok = reftx.attach(tiny_model("llama"), [{**spec, "component": "model.layers.{layer}.mlp.down_proj"}])
    assert ok.plan()[0].dim == 32
