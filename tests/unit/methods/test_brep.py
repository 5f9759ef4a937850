"""BREP (METHODS.md §3): magnitude bounds (project, hinge, PID), scale-and-bias, the early-inference
schedule with a KV cache, and prefix-truncated supervision. Reference numbers are computed by hand."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import reftx
from reftx.parts.norm_bounds import PID_DEFAULTS, HingeBound, PIDBound, ProjectBound
from reftx.data.encoding import Encoded
from reftx.core.intervention import Context, make_intervention
from reftx.core.intervention import after_step
from reftx.train.loss import compose, parameter_terms
from reftx.data.label_truncation import prefix_truncate, truncate_labels
from tests.conftest import batch, tiny_model

INNER = 72  # tiny llama: intermediate_size = 2 * 32 + 8


def set_bias(mod, values):
    with torch.no_grad():
        b = mod.bias()
        b.zero_()
        b[: len(values)] = torch.tensor(values, dtype=b.dtype)


# -- project ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, options", [("scale_bias", {}), ("loreft", {"rank": 4})])
def test_project_hand_computed(kind, options):
    mod = make_intervention(kind, {**options, "bound": "project", "bound_tau": 2.0}, 16)
    assert isinstance(mod.bound, ProjectBound)
    set_bias(mod, [3.0, 4.0])  # ||c|| = 5 > τ = 2: c <- c * 2/5
    after_step([mod])
    assert mod.bias()[:2].tolist() == pytest.approx([1.2, 1.6])
    assert float(mod.bias().detach()[2:].abs().sum()) == 0.0
    set_bias(mod, [0.6, 0.8])  # ||c|| = 1 <= τ: unchanged
    after_step([mod])
    assert mod.bias()[:2].tolist() == pytest.approx([0.6, 0.8])
    assert parameter_terms([mod])[0] == {} and parameter_terms([mod])[1] is None


def test_project_through_the_model_every_layer():
    model = reftx.attach(tiny_model("llama"), [{"kind": "scale_bias", "layers": [0, 2], "bound": "project",
                                                "bound_tau": 0.5, "positions": "all_prompt"}])
    for _, mod in model.named_interventions():
        set_bias(mod, [0.0, 3.0, 4.0])
    model.after_optimizer_step()
    for _, mod in model.named_interventions():
        assert mod.bias()[:3].tolist() == pytest.approx([0.0, 0.3, 0.4])


# -- hinge --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, options", [("scale_bias", {}), ("loreft", {"rank": 4})])
def test_hinge_hand_computed(kind, options):
    mod = make_intervention(kind, {**options, "bound": "hinge", "bound_tau": 2.0, "bound_lambda": 0.5}, 16)
    assert isinstance(mod.bound, HingeBound)
    set_bias(mod, [3.0, 4.0])
    loss = parameter_terms([mod])[0]["bound_hinge"]
    assert loss.item() == pytest.approx(0.5 * (5 - 2) ** 2)  # 4.5
    loss.backward()
    # d/dc λ (||c|| − τ)² = 2 λ (||c|| − τ) c / ||c|| = 2 · 0.5 · 3 · [0.6, 0.8]
    assert mod.bias().grad[:2].tolist() == pytest.approx([1.8, 2.4])
    set_bias(mod, [0.6, 0.8])  # inside the ball: no loss, no gradient
    mod.bias().grad = None
    loss = parameter_terms([mod])[0]["bound_hinge"]
    loss.backward()
    assert loss.item() == 0.0 and float(mod.bias().grad.abs().sum()) == 0.0
    before = mod.bias().detach().clone()
    after_step([mod])
    assert torch.equal(mod.bias(), before) and parameter_terms([mod])[1] is None


def test_hinge_adds_to_the_loss_summed_over_layers():
    model = reftx.attach(tiny_model("llama"), [{"kind": "scale_bias", "layers": [0, 2], "bound": "hinge",
                                                "bound_tau": 1.0, "bound_lambda": 0.25, "positions": "all_prompt"}])
    for (_, mod), v in zip(model.named_interventions(), ([3.0, 4.0], [0.0, 2.0])):
        set_bias(mod, v)
    ids, mask = batch()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    expected = 0.25 * (5 - 1) ** 2 + 0.25 * (2 - 1) ** 2  # 4 + 0.25
    assert "aux_losses" not in out  # a parameter loss is the modifier's, not the forward's
    loss, terms = compose(out.loss, out.get("aux_losses"), [m for _, m in model.named_interventions()])
    assert terms["bound_hinge"].item() == pytest.approx(expected)
    assert loss.item() == pytest.approx(out.loss.item() + expected)


# -- PID ----------------------------------------------------------------------------------------------
def brep_model(layers=(0, 2), **kw):
    return reftx.attach(tiny_model("llama"), [{"kind": "brep", "component": "mlp_up", "layers": list(layers),
                                               "positions": {"generated": 8, "prompt": True},
                                               "tie": "positions", **kw}])


def pid_states(model):
    return [(int(m.bound.pid_steps), float(m.bound.pid_weight), float(m.bound.pid_integral),
             float(m.bound.pid_prev_error)) for _, m in model.named_interventions()]


def test_brep_defaults_and_recipe_shape():
    model = brep_model(layers=[0, 1, 2, 3])
    assert [g.key for g in model.plan()] == [f"L{i}.mlp_up.all_prompt+gen8" for i in range(4)]
    assert all(g.dim == INNER and g.params == 2 * INNER for g in model.plan())
    mod = model.intervention("L0.mlp_up.all_prompt+gen8")
    assert mod.config.bound == "pid" and mod.config.bound_tau == 1.0 and isinstance(mod.bound, PIDBound)
    h = torch.randn(5, INNER)
    assert torch.equal(mod(h, Context(torch.zeros(5, dtype=torch.long), 1)), h)  # a = 1, c = 0: identity
    assert make_intervention("scale_bias", {}, 8).bound is None  # plain scale_bias: no bound


def test_pid_update_sequence_hand_computed():
    """Two layers whose bias norms straddle the mean m; τ = 1 so e = 0.8 − m at steps 4, 8, 12, 16, 20.
    Norms at other steps are junk: they must be ignored."""
    model = brep_model()
    mods = [m for _, m in model.named_interventions()]
    means = {4: 0.3, 8: 1.0, 12: 2.0, 16: 0.8, 20: 10.8}  # e = 0.5, −0.2, −1.2, 0.0, −10.0
    states = {}
    for step in range(1, 21):
        m = means.get(step, 50.0)
        set_bias(mods[0], [m - 0.1])
        set_bias(mods[1], [0.0, m + 0.1])
        model.after_optimizer_step()
        states[step] = pid_states(model)
        assert states[step][0] == states[step][1]  # one shared state in every layer
    # update 1: e = 0.5, Σe = 0.5, e − e_prev = 0.5 − 0 (e_prev = 0 at the first update)
    #   adj = 0.1·0.5 + 1e-4·0.5 + 0.01·0.5 = 0.05505; w = 0.1·(1 + 5·0.05505) = 0.127525 -> clip 0.1
    # update 2: e = −0.2, Σe = 0.3, Δe = −0.7: adj = −0.02 + 0.00003 − 0.007 = −0.02697
    #   w = 0.1·(1 − 0.13485) = 0.086515
    # update 3: e = −1.2, Σe = −0.9, Δe = −1.0: adj = −0.12 − 0.00009 − 0.01 = −0.13009
    #   w = 0.086515·(1 − 0.65045) = 0.03024131825
    # update 4: e = 0.0, Σe = −0.9, Δe = 1.2: adj = 0 − 0.00009 + 0.012 = 0.01191
    #   w = 0.03024131825·1.05955 = 0.0320421887518
    # update 5: e = −10, Σe = −10.9, Δe = −10: adj = −1 − 0.00109 − 0.1 = −1.10109; 1 + 5·adj < 0 -> clip 1e-5
    expected = {4: (0.1, 0.5, 0.5), 8: (0.086515, 0.3, -0.2), 12: (0.03024131825, -0.9, -1.2),
                16: (0.0320421887518, -0.9, 0.0), 20: (1e-5, -10.9, -10.0)}
    previous = (PID_DEFAULTS.w0, 0.0, 0.0)
    for step in range(1, 21):
        s, w, integral, prev = states[step][0]
        assert s == step
        want = expected.get(step, previous)
        assert (w, integral, prev) == pytest.approx(want, rel=1e-5, abs=1e-6)
        previous = want


def test_pid_loss_scale_multiplies_the_loss_in_training_only():
    model = brep_model()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    for _, m in model.named_interventions():
        m.bound.pid_weight.fill_(0.05)
    ids, mask = batch()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    model.train()
    mods = [m for _, m in model.named_interventions()]
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    loss, _ = compose(out.loss, out.get("aux_losses"), mods)
    assert loss.item() == pytest.approx(0.05 * out.loss.item(), rel=1e-6)
    model.eval()
    plain = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert compose(plain.loss, None, mods)[0].item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_pid_state_survives_save_load_and_resumes_exactly(tmp_path):
    def drive(model, steps):
        for step in steps:
            for i, (_, m) in enumerate(model.named_interventions()):
                set_bias(m, [0.1 * step + 0.05 * i])
            model.after_optimizer_step()

    whole = brep_model()
    drive(whole, range(1, 13))
    part = brep_model()
    drive(part, range(1, 7))  # stop between updates (steps 4 and 8): the step counter matters
    part.save_pretrained(tmp_path)
    part.detach()
    again = reftx.ReftModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert pid_states(again) == pid_states(part)
    drive(again, range(7, 13))
    assert pid_states(again) == pid_states(whole)
    assert pid_states(whole)[0][1] != PID_DEFAULTS.w0  # the controller did move


def test_pid_state_stays_float32_in_a_bf16_intervention():
    model = brep_model(dtype="bfloat16")
    mod = model.intervention("L0.mlp_up.all_prompt+gen8")
    assert mod.shift.dtype == torch.bfloat16
    assert mod.bound.pid_weight.dtype == torch.float32 and mod.bound.pid_steps.dtype == torch.long


def test_pid_controllers_are_per_tau():
    a, b, c = PIDBound(1.0), PIDBound(1.0), PIDBound(10.0)
    ca, cb, cc = torch.tensor([0.1]), torch.tensor([0.3]), torch.tensor([20.0])
    for _ in range(4):
        PIDBound.after_step_all([(a, ca), (b, cb), (c, cc)])
    # τ = 1: e = 0.8 − 0.2 = 0.6 > 0, w would grow: stays at the 0.1 cap; τ = 10: e = 8 − 20 = −12 -> 1e-5
    assert float(a.pid_prev_error) == pytest.approx(0.6) and float(b.pid_prev_error) == pytest.approx(0.6)
    assert float(c.pid_prev_error) == pytest.approx(-12.0) and float(c.pid_weight) == pytest.approx(1e-5)


# -- early-inference schedule: prompt + first n decode steps, exact with a KV cache ---------------------
def greedy(model, ids, mask, n=12, **kw):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                          pad_token_id=0, eos_token_id=None, **kw)


@pytest.mark.parametrize("n", [8, 0, -1])
def test_brep_schedule_edits_prompt_and_first_n_decode_steps(n):
    positions = "all_prompt" if n == 0 else {"generated": n, "prompt": True}
    model = reftx.attach(tiny_model("llama"), [{"kind": "brep", "component": "mlp_up", "layers": "all",
                                                "positions": positions, "tie": "positions"}])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, m in model.named_interventions():
            m.scale.add_(1.0 * torch.randn(m.scale.shape, generator=g))
            m.shift.add_(2.0 * torch.randn(m.shift.shape, generator=g))
    ids, mask = batch(t=7, b=2, left_pad=True)  # row 1 has 2 padding tokens: 7 + 5 prompt tokens
    rows = []
    mod = next(m for _, m in model.named_interventions())
    handle = mod.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    cached = greedy(model, ids, mask)
    handle.remove()
    # prefill edits every prompt token; max_new_tokens = 12 means 11 decode steps (inputs: tokens 0..10)
    decode = 11 if n < 0 else n
    assert rows == [12] + [2] * decode
    assert torch.equal(cached, greedy(model, ids, mask, use_cache=False))
    full_mask = torch.cat([mask, torch.ones(2, 12, dtype=torch.long)], 1)
    full = model(input_ids=cached, attention_mask=full_mask, prompt_lengths=mask.sum(1)).logits
    assert torch.equal(full[:, 6:-1].argmax(-1), cached[:, 7:])  # teacher-forced: the same edits
    with model.disabled():
        assert not torch.equal(greedy(model, ids, mask), cached)  # the edit matters for this model


# -- prefix-truncated supervision --------------------------------------------------------------------
I = -100  # noqa: E741


def enc(labels, prompt_len):
    return Encoded(list(range(10, 10 + len(labels))), labels, prompt_len, info={"x": 1.0})


def test_truncate_labels_hand_made():
    assert truncate_labels([I, I, 5, 6, 7, 8], 2) == [I, I, 5, 6, I, I]
    assert truncate_labels([I, 5, I, 6, 7], 2) == [I, 5, I, 6, I]  # holes do not count
    assert truncate_labels([I, I, 5, 6], 3) == [I, I, 5, 6]  # shorter answer: unchanged
    assert truncate_labels([I, I, 5, 6, 7], 1) == [I, I, 5, I, I]


def test_prefix_truncate_exact_masks():
    data = [enc([I, I, 5, 6, 7, 8], 2), enc([I, 4, 5, 6], 1), enc([I, I, I, 7, 8, 9, 2], 3), enc([I, 3], 1)]
    full = prefix_truncate(data, 1.0, 2, seed=0)
    assert [e.labels for e in full] == [[I, I, 5, 6, I, I], [I, 4, 5, I], [I, I, I, 7, 8, I, I], [I, 3]]
    for a, b in zip(full, data):  # only the labels change
        assert (a.input_ids, a.prompt_len, a.info, a.truncated) == (b.input_ids, b.prompt_len, b.info, b.truncated)
    assert prefix_truncate(data, 0.0, 2, seed=0) == data
    assert [e.labels for e in data][0] == [I, I, 5, 6, 7, 8]  # the input list is not modified


def test_prefix_truncate_fraction_and_determinism():
    data = [enc([I, I, 5, 6, 7, 8], 2) for _ in range(10)]
    short, long_ = [I, I, 5, 6, 7, I], [I, I, 5, 6, 7, 8]

    def chosen(fraction, seed):
        out = prefix_truncate(data, fraction, 3, seed)
        assert all(e.labels in (short, long_) for e in out)
        return [i for i, e in enumerate(out) if e.labels == short]

    assert len(chosen(0.9, 0)) == 9 and len(chosen(0.25, 0)) == 3 and len(chosen(0.05, 0)) == 1  # half up
    assert chosen(0.5, 7) == chosen(0.5, 7)
    assert len({tuple(chosen(0.5, s)) for s in range(6)}) > 1  # the seed picks which


def test_prefix_options_are_validated():
    from reftx.core.convert import from_dict
    from reftx.config.schema import Experiment

    base = {"schema": 1, "task": {"name": "persona"}}
    for key, value in (("prefix_fraction", 1.5), ("prefix_fraction", -0.1), ("prefix_tokens", 0)):
        with pytest.raises(reftx.ConfigError, match=rf"train\.{key}"):
            from_dict(Experiment, {**base, "train": {key: value}})
    exp = from_dict(Experiment, {**base, "train": {"prefix_fraction": 0.9, "prefix_tokens": 8}})
    assert (exp.train.prefix_fraction, exp.train.prefix_tokens) == (0.9, 8)


def test_runner_applies_prefix_truncation(monkeypatch, tmp_path):
    """runner.run hands the train loop prefix-truncated examples (stopped before any training)."""
    from transformers import AutoTokenizer

    from reftx.recipes import train as runner
    from reftx.core.convert import from_dict
    from reftx.config.schema import Experiment
    from reftx.models.loading import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())
    monkeypatch.setattr(runner, "load_base", lambda exp: (tiny_model("llama"), tok))
    seen = {}

    class Stop(Exception):
        pass

    def fake_train(model, data, cfg, run_dir, **kw):
        seen["data"] = data
        raise Stop

    monkeypatch.setattr(runner, "train", fake_train)
    exp = from_dict(Experiment, {"schema": 1, "name": "p", "output_dir": str(tmp_path), "task": {"name": "persona"},
                                 "interventions": [{"kind": "brep", "component": "mlp_up", "layers": [0]}],
                                 "eval": {"show_examples": 0},
                                 "train": {"prefix_fraction": 0.5, "prefix_tokens": 3}})
    with pytest.raises(Stop):
        runner.run(exp, show_progress=False)
    supervised = [sum(y != I for y in e.labels) for e in seen["data"]]
    assert sum(s == 3 for s in supervised) == math.floor(0.5 * len(supervised) + 0.5)
    assert all(s > 3 for s in supervised if s != 3)  # persona answers are all longer than 3 tokens


def test_brep_config_is_frozen_and_validated():
    cfg = make_intervention("brep", {"bound": "project", "bound_tau": 0.5}, 8).config
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.bound = "pid"  # type: ignore[misc]
    with pytest.raises(reftx.ConfigError, match="bound_tau"):
        make_intervention("brep", {"bound_tau": 0.0}, 8)


def test_brep_records_bias_norm_and_pid_weight_in_training():
    """BREP's restraint is visible: ‖c‖₂ and the PID weight w are records of every training forward
    (rec/<group>/bias_norm, rec/<group>/pid_weight in metrics.jsonl), none in eval mode."""
    mod = make_intervention("brep", {}, 4)
    with torch.no_grad():
        mod.shift.copy_(torch.tensor([3.0, 0.0, 4.0, 0.0]))  # ‖c‖ = 5
    ctx = Context(torch.zeros(2, dtype=torch.long), 1, key="L0.mlp_up.all_prompt")
    mod.train()
    mod(torch.randn(2, 4), ctx)
    assert ctx.records["L0.mlp_up.all_prompt/bias_norm"][0].item() == pytest.approx(5.0)
    assert ctx.records["L0.mlp_up.all_prompt/pid_weight"][0].item() == pytest.approx(0.1)  # w0
    mod.eval()
    quiet = Context(torch.zeros(2, dtype=torch.long), 1, key="k")
    mod(torch.randn(2, 4), quiet)
    assert quiet.records == {}
