"""CARFT's contrastive signal (reftx.train.objectives.carft) on tiny hand-made vectors, exact values;
the learned projection (trained, saved and resumed with the interventions), the value-head hook,
and the signal's direction where pooled cosines exceed the clamp.

Cosines are chosen to be read off: a = (1, 0) against (2, 0) is 1, against (0, 1) is 0, against
(1, 1) is 1/√2, against (-1, 0) is -1; (3, 4) against (1, 0) is 3/5.
"""
from __future__ import annotations

import math

import pytest
import torch

import reftx
from reftx.train.objectives.carft import (
    PROJECTION,
    CARFTOptions,
    CoTProjection,
    contrastive_loss,
    cot_pair,
    cot_representation,
    embedding_partial_reward,
    group_similarity,
    prepare_projection,
)
from reftx.train.objectives.common import OBJECTIVES
from reftx.core.convert import from_dict
from tests.conftest import batch, tiny_model

R2 = 1 / math.sqrt(2)
E = math.exp


def two_questions():
    """Q = 2, G = 2, d = 2. Sample 1 of each question is correct, sample 2 wrong.
    cos(a_q, s_q'g') (rows q; columns s11, s12, s21, s22):
        a1 = (1, 0):  1, 0, 1/√2, -1
        a2 = (0, 3):  0, 1, 1/√2,  0
    """
    annotated = torch.tensor([[1.0, 0.0], [0.0, 3.0]], requires_grad=True)
    sampled = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-1.0, 0.0]]], requires_grad=True)
    correct = torch.tensor([[True, False], [True, False]])
    return annotated, sampled, correct


# -- representation ---------------------------------------------------------------------------------

def test_cot_representation_mean_and_empty_row():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]],
                           [[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    z = cot_representation(hidden, mask)
    # row 0: ((1, 0) + (3, 2)) / 2 = (2, 1); the padded (100, 100) does not count
    # row 1: no CoT token (an empty completion): the zero vector
    torch.testing.assert_close(z, torch.tensor([[2.0, 1.0], [0.0, 0.0]]))
    z.sum().backward()
    # d(sum z)/dh_t = 1/|M| on the CoT's tokens, 0 elsewhere (also the whole empty row)
    torch.testing.assert_close(hidden.grad, torch.tensor([[[0.5, 0.5], [0.5, 0.5], [0.0, 0.0]],
                                                         [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]]))


def test_cot_representation_score_weights():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]], [[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    scores = torch.tensor([[0.0, math.log(3.0), 50.0], [1.0, 2.0, 3.0]], requires_grad=True)
    z = cot_representation(hidden, mask, scores)
    # row 0: softmax(0, ln 3) over the two CoT tokens = (1/4, 3/4): (1, 0)/4 + 3·(3, 2)/4 = (2.5, 1.5);
    # the masked score 50 gets no weight. Row 1 (no CoT token): zero, with finite gradients.
    torch.testing.assert_close(z, torch.tensor([[2.5, 1.5], [0.0, 0.0]]))
    z.sum().backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[0, 2] == 0 and (scores.grad[1] == 0).all()


def test_cot_representation_is_float32_and_checks_shapes():
    z = cot_representation(torch.ones(1, 4, 3, dtype=torch.bfloat16), torch.ones(1, 4, dtype=torch.bool))
    assert z.dtype == torch.float32
    with pytest.raises(ValueError, match=r"mask \(B, T\)"):
        cot_representation(torch.ones(2, 4, 3), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="scores"):
        cot_representation(torch.ones(2, 4, 3), torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 3))


# -- contrastive term -------------------------------------------------------------------------------

def test_single_question_reference_with_clamp():
    a = torch.tensor([[1.0, 0.0]])
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    correct = torch.tensor([[True, False]])
    loss, logs = contrastive_loss(a, s, correct, 0.5)
    # c = (1, 0), τ = 0.5, κ = 0.9: −log(e^{0.9/0.5} / (e^{1/0.5} + e^{0/0.5})) = ln(e² + 1) − 1.8
    assert loss.item() == pytest.approx(math.log(E(2) + 1) - 1.8, abs=1e-6)
    # without the clamp: ln(e² + 1) − 2 = ln(1 + e^-2)
    loss, _ = contrastive_loss(a, s, correct, 0.5, max_similarity=None)
    assert loss.item() == pytest.approx(math.log(1 + E(-2)), abs=1e-6)
    assert logs["carft_sim_correct"] == pytest.approx(1.0) and logs["carft_sim_wrong"] == pytest.approx(0.0)
    assert logs["carft_positives"] == 1 and logs["carft_questions"] == 1


def test_batch_negatives_reference():
    """negatives = batch (the authors' code): every sampled CoT of the batch is in the denominator."""
    a, s, correct = two_questions()
    loss, logs = contrastive_loss(a, s, correct, 1.0, max_similarity=None)
    # τ = 1. Positive (1,1): ln(e^1 + e^0 + e^{1/√2} + e^-1) − 1
    #        positive (2,1): ln(e^0 + e^1 + e^{1/√2} + e^0) − 1/√2; the loss is their mean
    l11 = math.log(E(1) + 1 + E(R2) + E(-1)) - 1
    l21 = math.log(1 + E(1) + E(R2) + 1) - R2
    assert loss.item() == pytest.approx((l11 + l21) / 2, abs=1e-6)
    assert logs["carft_loss"] == pytest.approx((l11 + l21) / 2, abs=1e-6)
    # cos of the correct samples to their anchor: (1 + 1/√2)/2; of the wrong ones: (0 + 0)/2
    assert logs["carft_sim_correct"] == pytest.approx((1 + R2) / 2, abs=1e-6)
    assert logs["carft_sim_wrong"] == pytest.approx(0.0, abs=1e-6)
    assert (logs["carft_positives"], logs["carft_questions"]) == (2, 2)


def test_wrong_negatives_reference():
    """negatives = wrong (ours): the positive against its own question's wrong samples only."""
    a, s, correct = two_questions()
    loss, _ = contrastive_loss(a, s, correct, 1.0, max_similarity=None, negatives="wrong")
    # (1,1): ln(e^1 + e^0) − 1 = ln(1 + e^-1); (2,1): ln(e^{1/√2} + e^0) − 1/√2 = ln(1 + e^{-1/√2})
    expected = (math.log(1 + E(-1)) + math.log(1 + E(-R2))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # κ = 0.5 clamps only the numerator: (1,1): ln(e + 1) − 0.5; (2,1): ln(e^{1/√2} + 1) − 0.5
    loss, _ = contrastive_loss(a, s, correct, 1.0, max_similarity=0.5, negatives="wrong")
    expected = (math.log(E(1) + 1) - 0.5 + math.log(E(R2) + 1) - 0.5) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_no_positive_contributes_zero():
    a, s, _ = two_questions()
    for negatives in ("batch", "wrong"):
        loss, logs = contrastive_loss(a, s, torch.zeros(2, 2, dtype=torch.bool), 0.2, negatives=negatives)
        assert loss.item() == 0.0 and loss.requires_grad
        assert (logs["carft_positives"], logs["carft_questions"]) == (0, 0) and "carft_sim_correct" not in logs
        loss.backward()
        assert (s.grad == 0).all()
        s.grad = None


def test_no_negative():
    a = torch.tensor([[1.0, 0.0]])
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    everything = torch.ones(1, 2, dtype=torch.bool)
    # batch: still defined, the other samples are the denominator. τ = 1, no clamp:
    # (ln(e + 1) − 1 + ln(e + 1) − 0)/2 = ln(e + 1) − 1/2
    loss, _ = contrastive_loss(a, s, everything, 1.0, max_similarity=None)
    assert loss.item() == pytest.approx(math.log(E(1) + 1) - 0.5, abs=1e-6)
    # wrong: nothing to contrast with, the question contributes nothing
    loss, logs = contrastive_loss(a, s, everything, 1.0, negatives="wrong")
    assert loss.item() == 0.0 and logs["carft_questions"] == 0


def test_questions_without_positive_or_negative_do_not_break_the_others():
    """Q = 3: a mixed question, an all-correct and an all-wrong one; only the mixed one counts in
    the wrong mode, and every gradient stays finite."""
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]],
                     requires_grad=True)
    correct = torch.tensor([[True, False], [True, True], [False, False]])
    loss, logs = contrastive_loss(a, s, correct, 1.0, max_similarity=None, negatives="wrong")
    assert loss.item() == pytest.approx(math.log(1 + E(-1)), abs=1e-6)  # question 1 only
    assert (logs["carft_positives"], logs["carft_questions"]) == (1, 1)
    loss.backward()
    assert torch.isfinite(s.grad).all() and (s.grad[1:] == 0).all()


def test_anchor_is_detached_and_signal_pulls_correct_and_pushes_wrong():
    """The authors compute the annotated representation without gradients: only the samples move.
    One gradient step raises cos(a, correct) and lowers cos(a, wrong)."""
    a, s, correct = two_questions()
    loss, _ = contrastive_loss(a, s, correct, 0.5, max_similarity=None, negatives="wrong")
    loss.backward()
    assert a.grad is None
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    before = group_similarity(a.detach(), s.detach())
    after = group_similarity(a.detach(), (s - 0.1 * s.grad).detach())
    # s11 already has cos 1 (it cannot rise); s21 (cos 1/√2) rises; both wrong samples fall
    assert after[1, 0] > before[1, 0] and after[0, 0] >= before[0, 0] - 1e-6
    assert (after[:, 1] < before[:, 1]).all()
    # detach_anchor False: the anchor gets a gradient too
    a, s, correct = two_questions()
    contrastive_loss(a, s, correct, 0.5, max_similarity=None, detach_anchor=False)[0].backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_clamp_stops_the_pull():
    """Above κ the positive's numerator has no gradient: one sample with c = 0.95, κ = 0.9, τ = 0.2
    gives ℓ = (c − κ)/τ = 0.25, whose gradient lowers c (the unclamped self term in the denominator)."""
    s = torch.tensor([[[0.95, math.sqrt(1 - 0.95 ** 2)]]], requires_grad=True)
    a = torch.tensor([[1.0, 0.0]])
    loss, _ = contrastive_loss(a, s, torch.ones(1, 1, dtype=torch.bool), 0.2)
    assert loss.item() == pytest.approx(0.25, abs=1e-5)
    loss.backward()
    after = group_similarity(a, (s - 0.01 * s.grad).detach())
    assert after.item() < 0.95


def test_contrastive_loss_shape_errors():
    a, s, correct = two_questions()
    with pytest.raises(ValueError, match=r"correct must be \(Q, G\)"):
        contrastive_loss(a, s, correct[:, :1], 0.2)
    with pytest.raises(ValueError, match=r"annotated must be \(Q, d\)"):
        contrastive_loss(a[:1], s, correct, 0.2)
    with pytest.raises(ValueError, match="negatives"):
        contrastive_loss(a, s, correct, 0.2, negatives="all")
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(a, s, correct, 0.0)


# -- partial reward ---------------------------------------------------------------------------------

def test_embedding_partial_reward():
    a = torch.tensor([[1.0, 0.0]], requires_grad=True)
    s = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [0.0, 1.0]]], requires_grad=True)
    rewards = torch.tensor([[1.0, 0.1, 0.0]])
    out = embedding_partial_reward(a, s, rewards)
    # only the partial reward 0.1 changes: 0.1 · cos((1, 0), (3, 4)) + 0.2 = 0.1 · 3/5 + 0.2 = 0.26
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.26, 0.0]]))
    assert not out.requires_grad
    out = embedding_partial_reward(a, s, rewards, partial=0.0, scale=1.0, offset=0.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.1, 0.0]]))  # the 0 reward: cos((1,0),(0,1)) = 0
    with pytest.raises(ValueError, match="rewards must be"):
        embedding_partial_reward(a, s, rewards[:, :2])


# -- options ----------------------------------------------------------------------------------------

def test_options_defaults_and_errors():
    o = CARFTOptions()
    assert (o.weight, o.temperature, o.max_similarity, o.negatives, o.detach_anchor, o.layer) == \
        (0.1, 0.2, 0.9, "batch", True, -1)
    assert from_dict(CARFTOptions, {"max_similarity": None, "layer": 0.5}, "recipe.carft").max_similarity is None
    cases = [({"temperature": 0}, r"^recipe\.carft\.temperature: must be a finite number > 0"),
             ({"weight": -1.0}, r"^recipe\.carft\.weight: must be a finite number >= 0"),
             ({"max_similarity": 1.5}, r"^recipe\.carft\.max_similarity: must be a cosine"),
             ({"layer": 1.5}, r"^recipe\.carft\.layer: must be a layer index or a depth fraction"),
             ({"partial_scale": float("nan")}, r"^recipe\.carft\.partial_scale: must be a finite number"),
             ({"negatives": "all"}, r"^recipe\.carft\.negatives"),
             ({"temprature": 0.1}, r"^recipe\.carft\.temprature: unknown key.*did you mean 'temperature'")]
    for raw, message in cases:
        with pytest.raises(reftx.ConfigError, match=message):
            from_dict(CARFTOptions, raw, "recipe.carft")
    with pytest.raises(reftx.ConfigError, match=r"^negatives: must be one of batch, wrong"):
        CARFTOptions(negatives="all")
    with pytest.raises(reftx.ConfigError, match=r"^layer"):
        CARFTOptions(layer=True)


# -- on a real (tiny) model -------------------------------------------------------------------------

def test_on_a_tiny_model_gradients_reach_only_the_interventions():
    """The recipe's path: hidden states of the ReftModel -> representations -> loss -> backward."""
    base = tiny_model("llama", layers=4)
    model = reftx.attach(base, [{"kind": "loreft", "rank": 2, "layers": [1], "positions": "all"}])
    ids, mask = batch(b=3, t=10)
    cot = mask.bool().clone()
    cot[:, :4] = False  # the first 4 tokens are the prompt
    with torch.no_grad():  # the annotated CoT (row 0): no gradients, as the authors compute it
        h = model(input_ids=ids[:1], attention_mask=mask[:1], output_hidden_states=True).hidden_states[-1]
        anchor = cot_representation(h, cot[:1])
    h = model(input_ids=ids[1:], attention_mask=mask[1:], output_hidden_states=True).hidden_states[-1]
    sampled = cot_representation(h, cot[1:]).view(1, 2, -1)  # Q = 1 question, G = 2 samples
    loss, logs = contrastive_loss(anchor, sampled, torch.tensor([[True, False]]), 0.2)
    assert math.isfinite(loss.item()) and logs["carft_positives"] == 1
    loss.backward()
    assert all(p.grad is None for p in base.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.interventions.parameters())


# -- the authors' representation: a learned projection, trained and saved with the interventions ------

def _dominant_model(seed: int, representation: str, init: str = "centred"):
    """A tiny llama (width 64) whose last-layer states share a dominant component (every token
    embedding +0.3 in one coordinate), as a real model's do: mean-pooled CoTs then have cosines
    above κ = 0.9 (0.96-0.98 here, 0.94-0.99 on the default model), the regime where the clamp
    inverts the pooled signal. LoReFT on prompt positions, as the CARFT experiment places it."""
    base = tiny_model("llama", layers=4, hidden=64)
    with torch.no_grad():
        base.model.embed_tokens.weight[:, 5] += 0.3
    model = reftx.attach(base, [{"kind": "loreft", "rank": 2, "layers": [1, 2], "positions": {"first": 2, "last": 2}}])
    c = CARFTOptions(representation=representation, projection_init=init)
    torch.manual_seed(seed)
    prepare_projection(model, c)  # as the runner does (the objective's prepare), before the optimizer
    g = torch.Generator().manual_seed(seed)
    prompt, ann = torch.randint(3, 97, (1, 5), generator=g), torch.randint(3, 97, (1, 6), generator=g)
    batch = {"input_ids": torch.cat([prompt, ann], 1), "attention_mask": torch.ones(1, 11, dtype=torch.long),
             "labels": torch.cat([torch.full((1, 5), -100), ann], 1)}
    tokens = torch.randint(3, 97, (2, 6), generator=g)  # Q = 1 question, G = 2 samples: correct, wrong

    def pair():
        out = model(input_ids=torch.cat([prompt.repeat(2, 1), tokens], 1), output_hidden_states=True)
        return cot_pair(model, batch, out.hidden_states, 5, torch.ones(2, 6, dtype=torch.long), c, 3, 2)

    return model, c, pair


def _pull(a, s, correct, c) -> float:
    """How a small gradient step of L_CL on the samples' representations (the anchor fixed) changes
    the correct sample's cosine: > 0 pulls it toward the anchor, < 0 pushes it away."""
    leaf = s.detach().requires_grad_(True)
    contrastive_loss(a.detach(), leaf, correct, c.temperature, max_similarity=c.max_similarity)[0].backward()
    before = group_similarity(a.detach(), leaf.detach())[0, 0]
    return float(group_similarity(a.detach(), (leaf - 1e-3 * leaf.grad).detach())[0, 0] - before)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_projection_pulls_a_correct_sample_where_pooled_cosines_exceed_the_clamp(seed):
    """Q = 1 question, a correct and a wrong sample. Pooled states: both cosines start above κ, the
    clamped numerator is constant, and the term's gradient pushes the correct sample away (issue 26's
    inversion); one AdamW step (lr 1e-3, the CARFT experiment's) lowers its cosine. The authors'
    projection at its random init: cosines above κ as well, the same inverted gradient. The default
    (the projection reading the states minus their first-batch mean): cosines start below κ, the
    gradient pulls, and one AdamW step raises the correct sample's cosine and lowers the wrong one's."""
    correct = torch.tensor([[True, False]])
    for rep, init in (("pooled", "centred"), ("projection", "random"), ("projection", "centred")):
        model, c, pair = _dominant_model(seed, rep, init)
        opt = torch.optim.AdamW(model.param_groups(0.0), lr=1e-3)
        a, s = pair()
        before = group_similarity(a.detach(), s.detach())[0]
        pull = _pull(a, s, correct, c)
        loss, _ = contrastive_loss(a, s, correct, c.temperature, max_similarity=c.max_similarity)
        loss.backward()
        opt.step()
        with torch.no_grad():
            after = group_similarity(*pair())[0]
        if init == "random" or rep == "pooled":
            assert (before > 0.9).all() and pull < 0, (rep, init, before, pull)  # above κ: pushed away
        if rep == "pooled":
            assert after[0] < before[0]
        if rep == "projection" and init == "centred":
            assert (before < 0.9).all() and pull > 0
            assert after[0] > before[0] + 0.02 and after[1] < before[1]


def test_projection_is_trained_saved_and_resumed_with_the_interventions(tmp_path):
    from reftx.train.objectives.common import objective_options

    base = tiny_model("llama", layers=4)
    model = reftx.attach(base, [{"kind": "loreft", "rank": 2, "layers": [1], "positions": "all"}])
    opts = objective_options("carft", {"beta": 0.0})
    OBJECTIVES.get("carft").prepare(model, opts)  # what the runner calls before building the optimizer
    proj = model.extras[PROJECTION]
    assert isinstance(proj, CoTProjection) and proj.linear.weight.shape == (64, 32) and float(proj.ready) == 0.0
    trained = {id(p) for g in model.param_groups(0.01) for p in g["params"]}
    assert {id(proj.linear.weight), id(proj.linear.bias)} <= trained  # the run's optimizer trains it
    assert model.count_parameters() == sum(p.numel() for p in model.interventions.parameters()) + 64 * 32 + 64
    proj.centre_(torch.randn(5, 32))
    with torch.no_grad():
        proj.linear.weight.add_(1.0)
    model.save_pretrained(tmp_path / "run")
    again = reftx.attach(tiny_model("llama", layers=4), [{"kind": "loreft", "rank": 2, "layers": [1], "positions": "all"}])
    OBJECTIVES.get("carft").prepare(again, opts)
    assert not torch.equal(again.extras[PROJECTION].linear.weight, proj.linear.weight)
    again.load_trained(tmp_path / "run")  # resume: the projection comes back, bias set once (ready)
    for k, v in proj.state_dict().items():
        assert torch.equal(again.extras[PROJECTION].state_dict()[k], v), k
    plain = reftx.ReftModel.from_pretrained(tiny_model("llama", layers=4), tmp_path / "run")
    assert PROJECTION not in plain.extras  # inference does not need it
    # pooled: no head is made
    pooled = reftx.attach(tiny_model("llama", layers=4), [{"kind": "loreft", "rank": 2, "layers": [1]}])
    assert prepare_projection(pooled, CARFTOptions(representation="pooled")) is None and PROJECTION not in pooled.extras


def test_cot_projection_init_centring_and_empty_rows():
    state = torch.get_rng_state()
    p = CoTProjection(32, 64, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # no draw from the global RNG
    again = CoTProjection(32, 64, seed=3)
    assert torch.equal(p.linear.weight, again.linear.weight) and torch.equal(p.linear.bias, again.linear.bias)
    bound = 1 / math.sqrt(32)  # nn.Linear's init: U(±1/√fan_in) for W and b
    assert p.linear.weight.abs().max() <= bound and p.linear.bias.abs().max() <= bound
    rows = torch.randn(6, 32) + 3.0
    torch.testing.assert_close(p(rows), rows @ p.linear.weight.T + p.linear.bias)  # μ = 0 before: W·h + b
    p.centre_(rows)
    assert float(p.ready) == 1.0
    torch.testing.assert_close(p.centre, rows.mean(0))
    torch.testing.assert_close(p(rows), (rows - rows.mean(0)) @ p.linear.weight.T + p.linear.bias)  # W·(h − μ) + b
    torch.testing.assert_close(p(rows).mean(0), p.linear.bias, atol=1e-5, rtol=0)
    z = p(torch.cat([rows[:1], torch.zeros(1, 32)]))
    assert (z[1] == 0).all() and z.dtype == torch.float32  # an empty CoT stays the zero vector
    assert float(CoTProjection(32, 64, centred=False).ready) == 1.0  # random: nothing to set


def test_value_head_hook_weights_tokens_by_softmax_of_the_values():
    """Under PPO the authors weight each CoT token by softmax of the value head's per-token values
    (my_cl_trainer_v4.py:762-764, 779-783). ``cot_pair(value_fn=...)``: the anchor's values from
    value_fn on its last-layer states; the samples' from ``sample_values`` when given. A value of 50
    on one token puts (nearly) all the weight there: the pooled vector is that token's state."""
    base = tiny_model("llama", layers=4)
    model = reftx.attach(base, [{"kind": "loreft", "rank": 2, "layers": [1], "positions": "all"}])
    c = CARFTOptions(representation="pooled")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [5, 6, 7, 12, 13, 14, 15]])
    batch = {"input_ids": ids[:1], "attention_mask": torch.ones(1, 7, dtype=torch.long),
             "labels": torch.tensor([[-100, -100, -100, 8, 9, 10, 11]])}
    out = model(input_ids=ids, output_hidden_states=True)
    last = out.hidden_states[-1]
    picks = lambda h: torch.where(torch.arange(h.shape[1]) == h.shape[1] - 2, 50.0, 0.0).expand(h.shape[:2])  # noqa: E731
    values = torch.zeros(2, 4)
    values[0, 1], values[1, 3] = 50.0, 50.0  # sample 0: its 2nd completion token; sample 1: its 4th
    a, s = cot_pair(model, batch, out.hidden_states, 3, torch.ones(2, 4, dtype=torch.long), c, 3, 2,
                    value_fn=picks, sample_values=values)
    with torch.no_grad():
        ann_last = model(**batch, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(a[0], ann_last[0, 5].float(), atol=1e-5, rtol=1e-5)  # value_fn's pick: position T − 2
    torch.testing.assert_close(s[0, 0], last[0, 4].float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s[0, 1], last[1, 6].float(), atol=1e-5, rtol=1e-5)
    # without the hook (GRPO): the masked mean
    a, s = cot_pair(model, batch, out.hidden_states, 3, torch.ones(2, 4, dtype=torch.long), c, 3, 2)
    torch.testing.assert_close(s[0, 0], last[0, 3:].float().mean(0), atol=1e-5, rtol=1e-5)


def test_representation_options():
    o = CARFTOptions()
    assert (o.representation, o.projection_dim, o.projection_init) == ("projection", 64, "centred")
    cases = [({"representation": "raw"}, r"^recipe\.carft\.representation"),
             ({"projection_dim": 0}, r"^recipe\.carft\.projection_dim: must be an integer >= 1"),
             ({"projection_init": "zeros"}, r"^recipe\.carft\.projection_init")]
    for raw, message in cases:
        with pytest.raises(reftx.ConfigError, match=message):
            from_dict(CARFTOptions, raw, "recipe.carft")
