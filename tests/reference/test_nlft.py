"""NLFT (reftx/train/objectives/nlft.py, nlft_rules.py) against the released code, github.com/Julia-LiuJ/NLFT
commit ef88576, ``modeling_llama_unlikelihood_dynamic_correct.py`` ("released:NNN" = a line of it):
the neighbour clustering, the correct-response weights and the unlikelihood weights by hand; the
objective on a tiny llama against hand-assembled losses (reference responses and sampled ones, with
a task verdict); reftx's ``change`` rule; option errors; the guided and judged data path."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

import reftx
from reftx.core.errors import DataError
from reftx.data.encoding import JUDGMENT, Encoded, collate_train, encode, guided_prompt, judged_prompt
from reftx.data.examples import Example
from reftx.train.objectives.common import OBJECTIVES
from reftx.train.objectives.grpo import EXAMPLE_INDEX, Env
from reftx.train.objectives.nlft import NLFTOptions, guided_logprobs
from reftx.train.objectives.nlft_rules import (
    change_weights,
    correct_loss,
    correct_weights,
    token_cluster,
    unlikelihood_loss,
    unlikelihood_weights,
)
from tests.conftest import perturb, tiny_model

SIG = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731


# -- the released rules by hand ----------------------------------------------------------------------
def test_token_cluster_walks_left_then_right_with_the_centre_carried_over():
    """released:313-359. Seed 2 = (1, 0). Left: (0, 1) is at cosine distance 1 > 0.4 from the centre:
    it joins and the centre becomes (0.5, 0.5); (1, 0) is at 1 − 1/√2 = 0.29: the walk stops. Right,
    from the carried centre (0.5, 0.5): (1, −1) is at distance 1: it joins (from a centre reset to
    (1, 0) it would be at 0.29 and stay out), the centre becomes (0.75, −0.25); (1, 0) is at
    1 − 0.75/√0.625 = 0.051: stop. A *dissimilar* neighbour joins: the released code compares the
    cosine distance, which it calls similarity, with ``> 0.4``."""
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, -1.0], [1.0, 0.0]])
    seeds = torch.tensor([False, False, True, False, False])
    assert token_cluster(h, seeds).tolist() == [False, True, True, True, False]
    assert token_cluster(h, torch.zeros(5, dtype=torch.bool)).tolist() == [False] * 5
    # a larger distance keeps the seed alone (0.29 < 1 but the threshold 1.0 is not exceeded)
    assert token_cluster(h, seeds, distance=1.0).tolist() == [False, False, True, False, False]


def test_correct_weights_by_hand():
    """released:292-307, τ = 0.95: salient p_g > τ gets 1 + ((p_g − τ)/0.05)^5, its clustered
    neighbours (p_g/τ)^0.3, every other token (p_g/τ)^0.6.
    p_g = 0.99 (salient): 1 + 0.8^5 = 1.32768; its right neighbour (0, 1) joins the cluster:
    (0.5/0.95)^0.3 = 0.824848; (1, 1) is at distance 0 from the centre (0.5, 0.5): out, 0.5^0.6 =
    0.659754; p_g = 0.95 is not above τ: 1^0.6 = 1 (its neighbour (1, 0), salient, does not cluster it:
    distance 0); p_g = 1.0: 1 + 1 = 2."""
    p = torch.tensor([0.99, 0.5, 0.475, 0.95, 1.0])
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [1.0, 0.0]])
    s, salient, near = correct_weights(p, h)
    torch.testing.assert_close(s, torch.tensor([1.32768, 0.824848, 0.659754, 1.0, 2.0]), atol=1e-5, rtol=0)
    assert salient.tolist() == [True, False, False, False, True]
    assert near.tolist() == [True, True, False, False, True]
    # the effective weight of a token's NLL is 1 + s ∈ [1, 3] (released:184, 206: the plain NLL is added)
    logp = torch.tensor([-0.5, -1.0, -2.0, -0.1, -0.01], requires_grad=True)
    loss = correct_loss(logp, s)
    expected = sum((1 + w) * -lp for w, lp in zip([1.32768, 0.824848, 0.659754, 1.0, 2.0], logp.tolist())) / 5
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    torch.testing.assert_close(logp.grad, -(1 + s) / 5)  # the weights carry no gradient


def test_unlikelihood_weights_by_hand():
    """released:396-423. p (plain) / p_j (judged) / p_g (guided):
    token 0: 0.1 / 0.5 / 0.1  -> p_j/p = 5 > 1.5, p_j/p_g = 5 > 1.5, p_j > 0.01: unlike, 2σ(5 − 1.5)
    token 1: 0.5 / 0.6 / 0.25 -> p_j/p = 1.2: not unlike; at distance 1 from token 0: clustered, 0
    token 2: 0.2 / 0.2 / 0.64 -> √0.64 = 0.8
    token 3: 0.3 / 0.9 / 0.3  -> 3 and 3: unlike, 2σ(3 − 1.5); its neighbours (2, 0), (2, 0) are at distance 0
    token 4: 0.05 / 0.005 / 0.04 -> p_j ≤ 0.01: √0.04 = 0.2
    Two of five tokens are unlike (40% > 6%): by default every other token weighs 0."""
    p = torch.tensor([0.1, 0.5, 0.2, 0.3, 0.05])
    pj = torch.tensor([0.5, 0.6, 0.2, 0.9, 0.005])
    pg = torch.tensor([0.1, 0.25, 0.64, 0.3, 0.04])
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    u, unlike, near = unlikelihood_weights(p, pj, pg, h, max_share=0.5)
    torch.testing.assert_close(u, torch.tensor([2 * SIG(3.5), 0.0, 0.8, 2 * SIG(1.5), 0.2]), atol=1e-6, rtol=0)
    assert 2 * SIG(3.5) == pytest.approx(1.941376, abs=1e-6) and 2 * SIG(1.5) == pytest.approx(1.635149, abs=1e-6)
    assert unlike.tolist() == [True, False, False, True, False] and near.tolist() == [True, True, False, True, False]
    # q = 1 − p on the unlike tokens, p elsewhere: −(1.941376·ln 0.9 + 0.8·ln 0.2 + 1.635149·ln 0.7 + 0.2·ln 0.05)/5
    logp = p.log().requires_grad_(True)
    loss = unlikelihood_loss(logp, u, unlike)
    assert loss.item() == pytest.approx(0.534892, abs=1e-5)
    loss.backward()
    # d/dlogp of −u·log(1 − p) is u·p/(1 − p) / 5 (pushes p down); of −u·log p is −u/5
    torch.testing.assert_close(logp.grad, torch.tensor([2 * SIG(3.5) * 0.1 / 0.9, 0.0, -0.8, 2 * SIG(1.5) * 0.3 / 0.7,
                                                        -0.2]) / 5, atol=1e-6, rtol=0)
    # the released default share 0.06: the tokens that are not unlike all weigh 0 (released:411-413)
    u, _, _ = unlikelihood_weights(p, pj, pg, h)
    torch.testing.assert_close(u, torch.tensor([2 * SIG(3.5), 0.0, 0.0, 2 * SIG(1.5), 0.0]), atol=1e-6, rtol=0)
    assert unlikelihood_loss(logp.detach(), u, unlike).item() == pytest.approx(0.157552, abs=1e-5)


def test_change_rule_weights_by_hand():
    # probabilities without / with guidance; ratio p_g / p_plain against r = 1.5 (ln r = 0.405):
    # row 0: 0.32/0.2 = 1.6 >= 1.5 -> salient, 2 | 0.5/0.5 = 1 -> base, 1 | 0.2/0.4 = 0.5 <= 1/1.5 -> disfavoured, 0
    # row 1: 0.9/0.5 = 1.8 -> salient, 2 | 0.3/0.4 = 0.75 > 0.667 -> base, 1 | masked (padding) -> 0
    plain = torch.tensor([[0.2, 0.5, 0.4], [0.5, 0.4, 0.1]]).log()
    guided = torch.tensor([[0.32, 0.5, 0.2], [0.9, 0.3, 0.9]]).log()
    mask = torch.tensor([[True, True, True], [True, True, False]])
    torch.testing.assert_close(change_weights(guided, plain, mask, 1.5, 2.0, 0.0, 1.0),
                               torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]]))
    # 1.6 < 1.7 -> base 0.5; 1.8 >= 1.7 -> 3; 0.5 <= 1/1.7 = 0.588 -> -0.5; 0.75 -> base 0.5
    torch.testing.assert_close(change_weights(guided, plain, mask, 1.7, 3.0, -0.5, 0.5),
                               torch.tensor([[0.5, 0.5, -0.5], [3.0, 0.5, 0.0]]))
    assert not change_weights(guided.requires_grad_(), plain, mask, 1.5, 2.0, 0.0, 1.0).requires_grad


# -- a tiny llama with LoReFT, and a batch built through reftx.data -------------------------------
# Rows: (prompt ids, guidance ids, judgment ids, response ids); the guided copy is guidance + prompt +
# response, the judged copy judgment + prompt + response.
ROWS = [([5, 6, 7, 8, 9], [40, 41], [70, 71, 72], [11, 12, 13, 2]),
        ([20, 21, 22, 23, 24, 25, 26], [42, 43, 44, 45], [73], [30, 31, 2]),
        ([50, 51, 52, 53, 54], [46], [74, 75], [60, 61, 62, 63, 64, 2])]


def make_batch():
    encoded = [Encoded(p + r, [-100] * len(p) + r, len(p), info={EXAMPLE_INDEX: float(i)}, guided_ids=g + p + r,
                       guided_prompt_len=len(g) + len(p), judged_ids=j + p + r, judged_prompt_len=len(j) + len(p))
               for i, (p, g, j, r) in enumerate(ROWS)]
    return collate_train(encoded, pad_id=0)


def make_model():
    base = tiny_model("llama", layers=4)
    model = reftx.attach(base, [{"kind": "loreft", "rank": 2, "layers": [1, 2], "positions": {"first": 2, "last": 2}}])
    return base, perturb(model, scale=1.0)


def hand_logprobs(logits, ids, start, n):
    """log p of ids[start + j] from position start + j − 1, j = 0..n−1 (a plain loop)."""
    return [torch.log_softmax(logits[start + j - 1].float(), -1)[ids[start + j]] for j in range(n)]


def test_released_rule_on_reference_responses_equals_the_hand_assembled_loss():
    """responses: gold: every response is correct; the loss is 10 · mean over responses of
    mean_t (1 + s_t)·NLL_t (released:177-184, 206, 309), s from the guided scoring and the plain
    scoring's last-layer states at the positions that predict the response."""
    base, model = make_model()
    batch = make_batch()
    loss, logs, _ = OBJECTIVES.get("nlft")(model, batch, {"responses": "gold", "prob_threshold": 0.01})
    with torch.no_grad():
        plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                      output_hidden_states=True)
        guided = model(input_ids=batch["guided_input_ids"], attention_mask=batch["guided_attention_mask"],
                       labels=batch["guided_labels"]).logits
    rows, salient = [], 0
    for b, (p, g, _, r) in enumerate(ROWS):
        lp = torch.stack(hand_logprobs(plain.logits[b], batch["input_ids"][b], len(p), len(r)))
        pg = torch.stack(hand_logprobs(guided[b], batch["guided_input_ids"][b], len(g) + len(p), len(r))).exp()
        h = plain.hidden_states[-1][b, len(p) - 1:len(p) - 1 + len(r)]
        s, sal, _ = correct_weights(pg, h, prob_threshold=0.01)
        salient += int(sal.sum())
        rows.append(float(((1 + s) * -lp).mean()))
    assert 0 < salient < sum(len(r) for *_, r in ROWS)  # τ = 0.01: some tokens salient, some not
    assert loss.item() == pytest.approx(10 * sum(rows) / len(rows), rel=1e-5)
    assert logs["correct_share"] == 1.0 and logs["unlike_share"] == 0.0
    loss.backward()
    assert all(p.grad is None for p in base.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.interventions.parameters())


class Tok:
    pad_token_id, eos_token_id = 0, 2

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(str(int(t)) for t in row) for row in ids]


def verdict_env(correct_rows):
    """The task's verdict: rows in ``correct_rows`` are correct (reward 1), the others wrong (0)."""
    return Env(Tok(), lambda texts, index, partial: [1.0 if i in correct_rows else partial for i in index])


def test_sampled_responses_are_judged_by_the_task_and_get_their_branch():
    """responses: sampled (the default): one answer per question from the model with its interventions
    off (sample_from: base), judged by the task; row 0 correct: 10·mean (1 + s)·NLL; rows 1, 2 wrong:
    10·(−mean u·log q) with the judged scoring (released:186-206). Hand-assembled from teacher-forced
    forwards with each prompt left-padded before the same answer."""
    base, model = make_model()
    batch = make_batch()
    opts = {"max_new_tokens": 3, "unlike_ratio": 1.01, "unlike_min_prob": 0.0, "unlike_max_share": 1.0}
    torch.manual_seed(0)
    loss, logs, _ = OBJECTIVES.get("nlft")(model, batch, opts, env=verdict_env({0}))
    torch.manual_seed(0)
    with model.disabled():  # the same draw from the base model
        prompts = [torch.tensor(p) for p, *_ in ROWS]
        width = max(len(p) for p in prompts)
        ids = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts])
        att = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
        tokens = model.generate(input_ids=ids, attention_mask=att, do_sample=True, top_k=0, max_new_tokens=3,
                                pad_token_id=0, eos_token_id=2)[:, width:]
    rows, unlike_count = [], 0
    for b, (p, g, j, _) in enumerate(ROWS):
        t = tokens[b]
        n = int((t == 2).nonzero()[0]) + 1 if (t == 2).any() else len(t)
        t = t[:n]

        def score(prefix, grad=False):
            seq = torch.tensor(prefix + t.tolist())[None]
            with torch.enable_grad() if grad else torch.no_grad():
                out = model(input_ids=seq, prompt_lengths=torch.tensor([len(prefix)]), output_hidden_states=True)
            return torch.stack(hand_logprobs(out.logits[0], seq[0], len(prefix), n)), out.hidden_states[-1][0, len(prefix) - 1:-1]

        lp, h = score(p)
        pg = score(g + p)[0].exp()
        if b == 0:
            s, _, _ = correct_weights(pg, h)
            rows.append(float(((1 + s) * -lp).mean()))
        else:
            pj = score(j + p)[0].exp()
            u, unlike, _ = unlikelihood_weights(lp.exp(), pj, pg, h, ratio=1.01, min_prob=0.0, max_share=1.0)
            unlike_count += int(unlike.sum())
            rows.append(float(unlikelihood_loss(lp, u, unlike)))
    assert unlike_count > 0  # the wrong rows' unlikelihood branch is exercised
    assert loss.item() == pytest.approx(10 * sum(rows) / 3, rel=1e-4)
    assert logs["correct_share"] == pytest.approx(1 / 3) and logs["reward"] == pytest.approx(1 / 3)
    assert logs["unlike_share"] > 0
    loss.backward()
    assert all(p.grad is None for p in base.parameters())


def test_sampling_from_the_policy_differs_from_the_base():
    _, model = make_model()
    batch = make_batch()
    got = {}
    for source in ("base", "policy"):
        torch.manual_seed(0)
        got[source] = OBJECTIVES.get("nlft")(model, batch, {"max_new_tokens": 6, "sample_from": source},
                                             env=verdict_env({0, 1, 2}))[1]
    assert got["base"]["nll"] != got["policy"]["nll"]
    with pytest.raises(DataError, match="runs inside `reftx run`"):
        OBJECTIVES.get("nlft")(model, batch, {})


def test_change_rule_equals_hand_weighted_nll():
    base, model = make_model()
    batch = make_batch()
    opts = {"rule": "change", "responses": "gold", "threshold": 1.02, "negative_weight": -0.5}
    model.train()
    loss, logs, out = OBJECTIVES.get("nlft")(model, batch, opts)
    with torch.no_grad():  # the model's own logits, plain and guided (interventions on)
        plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).logits
        guided = model(input_ids=batch["guided_input_ids"], attention_mask=batch["guided_attention_mask"],
                       labels=batch["guided_labels"]).logits
    total, count, kinds = 0.0, 0, set()
    for b, (p, g, _, r) in enumerate(ROWS):
        lp = hand_logprobs(plain[b], batch["input_ids"][b], len(p), len(r))
        lg = hand_logprobs(guided[b], batch["guided_input_ids"][b], len(g) + len(p), len(r))
        for a, c in zip(lp, lg):
            ratio = math.exp(float(c - a))
            w = 2.0 if ratio >= 1.02 else (-0.5 if ratio <= 1 / 1.02 else 1.0)
            kinds.add(w)
            total += -w * float(a)
            count += 1
    assert kinds == {2.0, 1.0, -0.5}  # every kind of token occurs, so the test sees each weight
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    assert logs["objective"] == pytest.approx(total / count, rel=1e-5)
    assert set(logs) >= {"mean_weight", "salient_share", "disfavoured_share", "negative_share", "delta_logp",
                         "nll", "nll_guided"}
    assert logs["negative_share"] == pytest.approx(logs["disfavoured_share"])
    loss.backward()
    assert all(p.grad is None for p in base.parameters())


def test_change_rule_with_unit_weights_gives_the_nll_objective():
    """A threshold no token reaches: every weight is 1 and the loss is the nll objective's."""
    _, model = make_model()
    batch = make_batch()
    loss, logs, _ = OBJECTIVES.get("nlft")(model, batch, {"rule": "change", "responses": "gold", "threshold": 1e9})
    plain = {k: v for k, v in batch.items() if not k.startswith(("guided_", "judged_"))}
    ref, _, _ = OBJECTIVES.get("nll")(model, plain, {})
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert logs["mean_weight"] == pytest.approx(1.0) and logs["salient_share"] == 0.0


def test_guided_and_judged_scoring_with_interventions_off():
    _, model = make_model()
    batch = make_batch()
    on = guided_logprobs(model, batch, NLFTOptions())
    off = guided_logprobs(model, batch, NLFTOptions(guided_interventions=False))
    with torch.no_grad(), model.disabled():
        ref = model(input_ids=batch["guided_input_ids"], attention_mask=batch["guided_attention_mask"]).logits
    p, g, _, r = ROWS[1]
    expected = hand_logprobs(ref[1], batch["guided_input_ids"][1], len(g) + len(p), len(r))
    # plain positions len(p) − 1 .. predict the response of row 1
    torch.testing.assert_close(off[1, len(p) - 1:len(p) - 1 + len(r)], torch.stack(expected))
    assert not torch.allclose(on, off)
    judged = guided_logprobs(model, batch, NLFTOptions(), copy="judged")
    with torch.no_grad():
        ref = model(input_ids=batch["judged_input_ids"], attention_mask=batch["judged_attention_mask"],
                    prompt_lengths=batch["judged_prompt_lengths"]).logits
    p, _, j, r = ROWS[2]
    torch.testing.assert_close(judged[2, len(p) - 1:len(p) - 1 + len(r)],
                               torch.stack(hand_logprobs(ref[2], batch["judged_input_ids"][2], len(j) + len(p), len(r))))


def test_guided_prompt_positions_land_on_the_guided_prompt():
    """The guided pass edits the first 2 and last 2 tokens of the guided prompt (guidance + prompt),
    not those of the plain prompt's length: compare with explicit prompt_lengths."""
    _, model = make_model()
    batch = make_batch()
    got = guided_logprobs(model, batch, NLFTOptions())
    ids, mask = batch["guided_input_ids"], batch["guided_attention_mask"]
    with torch.no_grad():
        right = model(input_ids=ids, attention_mask=mask, prompt_lengths=torch.tensor([len(g) + len(p) for p, g, _, _ in ROWS])).logits
        wrong = model(input_ids=ids, attention_mask=mask, prompt_lengths=torch.tensor([len(p) for p, *_ in ROWS])).logits
    for b, (p, g, _, r) in enumerate(ROWS):
        row = got[b, len(p) - 1:len(p) - 1 + len(r)]
        torch.testing.assert_close(row, torch.stack(hand_logprobs(right[b], ids[b], len(g) + len(p), len(r))))
        assert not torch.allclose(row, torch.stack(hand_logprobs(wrong[b], ids[b], len(g) + len(p), len(r))))


def test_misaligned_guided_copy_is_refused():
    _, model = make_model()
    batch = make_batch()
    batch["guided_input_ids"][0, -1 - (batch["guided_attention_mask"][0] == 0).sum()] = 3  # row 0's last response token
    with pytest.raises(DataError, match="differ"):
        guided_logprobs(model, batch, NLFTOptions())


def test_missing_copies_are_clear_errors():
    _, model = make_model()
    plain = {k: v for k, v in make_batch().items() if not k.startswith(("guided_", "judged_"))}
    with pytest.raises(DataError, match="guided copy"):
        OBJECTIVES.get("nlft")(model, plain, {})
    no_judged = {k: v for k, v in make_batch().items() if not k.startswith("judged_")}
    torch.manual_seed(0)
    with pytest.raises(DataError, match="needs the judged copy"):
        OBJECTIVES.get("nlft")(model, no_judged, {"max_new_tokens": 2}, env=verdict_env(set()))


def test_option_errors_name_the_field():
    cases = [({"rule": "change"}, r"objective_options\.responses: rule change weights the reference responses"),
             ({"threshold": 1.0, "rule": "change", "responses": "gold"}, r"objective_options\.threshold: must be > 1"),
             ({"loss_scale": float("nan")}, r"objective_options\.loss_scale: must be a finite number"),
             ({"negative_weight": 2.0}, r"objective_options\.negative_weight: must be <= base_weight"),
             ({"positive_weight": 0.5}, r"objective_options\.positive_weight: must be >= base_weight"),
             ({"prob_threshold": 1.0}, r"objective_options\.prob_threshold: must be in \(0, 1\)"),
             ({"low_exponent": 0}, r"objective_options\.low_exponent: must be > 0"),
             ({"max_new_tokens": 0}, r"objective_options\.max_new_tokens: must be >= 1"),
             ({"rule": "guided_prob"}, r"objective_options\.rule"),
             ({"treshold": 2.0}, r"objective_options\.treshold: unknown key.*did you mean 'threshold'")]
    for opts, message in cases:
        with pytest.raises(reftx.ConfigError, match=message):
            OBJECTIVES.get("nlft")(None, {}, opts)
    o = NLFTOptions()
    assert (o.rule, o.responses, o.sample_from, o.loss_scale, o.prob_threshold, o.unlike_ratio, o.unlike_centre) == \
        ("released", "sampled", "base", 10.0, 0.95, 1.5, 1.5)


# -- the data path ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from reftx.models.loading import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path())


def test_guided_and_judged_keys_only_when_asked(tok):
    ex = Example("What is 2 + 3?", "2 + 3 = 5.\nThe answer is 5.", guidance="Hint: the correct final answer is 5.")
    plain = encode(tok, ex, 64, chat=False)
    assert plain.guided_ids is None and plain.judged_ids is None
    one = collate_train([plain], 0)
    assert set(one) == {"input_ids", "attention_mask", "labels", "prompt_lengths"}
    assert one["prompt_lengths"].tolist() == [plain.prompt_len]  # the boundary encoding found, carried
    guided = encode(tok, ex, 64, chat=False, guided=True)
    assert guided.input_ids == plain.input_ids and guided.labels == plain.labels
    response = plain.input_ids[plain.prompt_len:]
    assert guided.guided_ids[guided.guided_prompt_len:] == response == guided.judged_ids[guided.judged_prompt_len:]
    assert guided.guided_ids[:guided.guided_prompt_len] == tok(guided_prompt(ex))["input_ids"]
    assert guided.judged_ids[:guided.judged_prompt_len] == tok(judged_prompt(ex))["input_ids"]
    assert judged_prompt(ex) == f"{JUDGMENT}\n\n{ex.prompt}" and "Judgment: the response is wrong." in JUDGMENT
    short = encode(tok, Example("1 + 1?", "2.", guidance="Hint: 2."), 64, chat=False, guided=True)
    batch = collate_train([guided, short], 0)
    for copy in ("guided", "judged"):
        assert {f"{copy}_input_ids", f"{copy}_attention_mask", f"{copy}_labels"} <= set(batch)
        lengths = [getattr(guided, f"{copy}_prompt_len"), getattr(short, f"{copy}_prompt_len")]
        assert batch[f"{copy}_prompt_lengths"].tolist() == lengths
        row = batch[f"{copy}_labels"][0]
        assert (row[:lengths[0]] == -100).all() and row[lengths[0]:lengths[0] + len(response)].tolist() == response
    with pytest.raises(DataError, match="guidance"):
        encode(tok, Example("no guidance", "x"), 64, chat=False, guided=True)
    with pytest.raises(ValueError, match="guided copy"):
        collate_train([guided, plain], 0)


def test_math_task_guides_with_the_reference_solution_and_validate_checks_guidance(tmp_path):
    from reftx.config.schema import load_experiment
    from reftx.eval.task import get_task
    from reftx.recipes import registry as recipes

    ex = get_task("math", {"train_set": "gsm8k_original"}).examples("train", 3)
    for e in ex:  # the released code's guidance: the whole standard answer (finetune:470-474)
        assert e.guidance.startswith("Assuming you are a math expert, the standard answer to the question below is:\n")
        assert e.target.strip() in e.guidance and e.guidance.endswith("Please refer to the standard answer and give your answer.")
    ex = get_task("math", {"train_set": "gsm8k_original", "guidance": "final_answer"}).examples("train", 3)
    assert all(e.guidance == f"Hint: the correct final answer is {e.gold}." for e in ex)
    spec = {"schema": 1, "task": {"name": "persona"}, "model": {"name": "default"},
            "interventions": [{"kind": "loreft", "rank": 2, "layers": [1]}], "train": {"objective": "nlft"}}
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(reftx.ConfigError, match=r"train\.objective: objective 'nlft' needs natural-language guidance"):
        recipes.validate(load_experiment(path), model_config=object())
