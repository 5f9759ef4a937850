"""NLFT (reftx/train/objectives/nlft.py): token weights on hand-made log-probabilities, the objective's loss on a
tiny llama against a hand-assembled weighted NLL, gradients, option errors and the guided data path."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

import reftx
from reftx.data.encoding import Encoded, collate_train, encode, guided_prompt
from reftx.core.errors import DataError
from reftx.train.objectives.nlft import NLFTOptions, guided_logprobs, token_weights
from reftx.train.objectives.common import OBJECTIVES
from reftx.data.examples import Example
from tests.conftest import perturb, tiny_model

LOG = math.log


def test_change_rule_weights_by_hand():
    # probabilities without / with guidance; ratio p_g / p_plain against r = 1.5 (ln r = 0.405):
    # row 0: 0.32/0.2 = 1.6 >= 1.5 -> salient, 2 | 0.5/0.5 = 1 -> base, 1 | 0.2/0.4 = 0.5 <= 1/1.5 -> disfavoured, 0
    # row 1: 0.9/0.5 = 1.8 -> salient, 2 | 0.3/0.4 = 0.75 > 0.667 -> base, 1 | masked (padding) -> 0
    plain = torch.tensor([[0.2, 0.5, 0.4], [0.5, 0.4, 0.1]]).log()
    guided = torch.tensor([[0.32, 0.5, 0.2], [0.9, 0.3, 0.9]]).log()
    mask = torch.tensor([[True, True, True], [True, True, False]])
    w = token_weights(guided, plain, mask, NLFTOptions())
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]]))
    # METHODS.md's negative weight for disfavoured tokens, other weights and a stricter ratio r = 1.7:
    # 1.6 < 1.7 -> base 0.5; 1.8 >= 1.7 -> 3; 0.5 <= 1/1.7 = 0.588 -> -0.5; 0.75 -> base 0.5
    o = NLFTOptions(threshold=1.7, positive_weight=3.0, negative_weight=-0.5, base_weight=0.5)
    torch.testing.assert_close(token_weights(guided, plain, mask, o),
                               torch.tensor([[0.5, 0.5, -0.5], [3.0, 0.5, 0.0]]))


def test_guided_prob_rule_weights_by_hand():
    # the released code's weights for a correct response, τ_p = 0.95 (p_plain is not used):
    # p = 0.99 > 0.95: 1 + (0.04/0.05)^5 = 1 + 0.8^5 = 1.32768;  p = 1: 1 + 1^5 = 2
    # p = 0.95 (not above): (0.95/0.95)^0.6 = 1;  p = 0.475: 0.5^0.6 = 0.659754
    guided = torch.tensor([[0.99, 1.0, 0.95, 0.475]]).log()
    w = token_weights(guided, torch.zeros(1, 4), torch.ones(1, 4, dtype=torch.bool), NLFTOptions(rule="guided_prob"))
    torch.testing.assert_close(w, torch.tensor([[1.32768, 2.0, 1.0, 0.5 ** 0.6]]), atol=1e-5, rtol=1e-5)
    assert 0.5 ** 0.6 == pytest.approx(0.659754, abs=1e-6)


def test_weights_carry_no_gradient():
    guided = torch.tensor([[0.9, 0.1]]).log().requires_grad_(True)
    plain = torch.tensor([[0.5, 0.5]]).log().requires_grad_(True)
    assert not token_weights(guided, plain, torch.ones(1, 2, dtype=torch.bool), NLFTOptions()).requires_grad


# -- a tiny llama with LoReFT, and a batch built through reftx.data -------------------------------
# Rows: (prompt ids, guidance ids, response ids); the guided copy is guidance + prompt + response.
ROWS = [([5, 6, 7, 8, 9], [40, 41], [11, 12, 13, 2]),
        ([20, 21, 22, 23, 24, 25, 26], [42, 43, 44, 45], [30, 31, 2]),
        ([50, 51, 52, 53, 54], [46], [60, 61, 62, 63, 64, 2])]


def make_batch():
    encoded = [Encoded(p + r, [-100] * len(p) + r, len(p), guided_ids=g + p + r, guided_prompt_len=len(g) + len(p))
               for p, g, r in ROWS]
    return collate_train(encoded, pad_id=0)


def make_model():
    base = tiny_model("llama", layers=4)
    model = reftx.attach(base, [{"kind": "loreft", "rank": 2, "layers": [1, 2], "positions": {"first": 2, "last": 2}}])
    return base, perturb(model, scale=1.0)


def hand_logprobs(logits, ids, start, n):
    """log p of ids[start + j] from position start + j − 1, j = 0..n−1 (a plain loop)."""
    return [torch.log_softmax(logits[start + j - 1].float(), -1)[ids[start + j]] for j in range(n)]


def test_objective_equals_hand_weighted_nll():
    base, model = make_model()
    batch = make_batch()
    opts = {"threshold": 1.02, "negative_weight": -0.5}
    model.train()
    loss, logs, out = OBJECTIVES.get("nlft")(model, batch, opts)
    with torch.no_grad():  # the model's own logits, plain and guided (interventions on)
        plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).logits
        guided = model(input_ids=batch["guided_input_ids"], attention_mask=batch["guided_attention_mask"],
                       labels=batch["guided_labels"]).logits
    total, count, kinds = 0.0, 0, set()
    for b, (p, g, r) in enumerate(ROWS):
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
    # gradients reach the interventions only
    loss.backward()
    assert all(p.grad is None for p in base.parameters())
    grads = [p.grad for p in model.interventions.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_unit_weights_give_the_nll_objective():
    """A threshold no token reaches: every weight is 1 and the loss is the nll objective's."""
    _, model = make_model()
    batch = make_batch()
    loss, logs, _ = OBJECTIVES.get("nlft")(model, batch, {"threshold": 1e9})
    plain = {k: v for k, v in batch.items() if not k.startswith("guided_")}
    ref, _, _ = OBJECTIVES.get("nll")(model, plain, {})
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert logs["mean_weight"] == pytest.approx(1.0) and logs["salient_share"] == 0.0


def test_guided_scoring_with_interventions_off():
    _, model = make_model()
    batch = make_batch()
    on = guided_logprobs(model, batch, NLFTOptions())
    off = guided_logprobs(model, batch, NLFTOptions(guided_interventions=False))
    with torch.no_grad(), model.disabled():
        ref = model(input_ids=batch["guided_input_ids"], attention_mask=batch["guided_attention_mask"]).logits
    p, g, r = ROWS[1]
    expected = hand_logprobs(ref[1], batch["guided_input_ids"][1], len(g) + len(p), len(r))
    # plain positions len(p) − 1 .. predict the response of row 1
    torch.testing.assert_close(off[1, len(p) - 1:len(p) - 1 + len(r)], torch.stack(expected))
    assert not torch.allclose(on, off)


def test_guided_prompt_positions_land_on_the_guided_prompt():
    """The guided pass edits the first 2 and last 2 tokens of the guided prompt (guidance + prompt),
    not those of the plain prompt's length: compare with explicit prompt_lengths."""
    _, model = make_model()
    batch = make_batch()
    got = guided_logprobs(model, batch, NLFTOptions())
    ids, mask = batch["guided_input_ids"], batch["guided_attention_mask"]
    with torch.no_grad():
        right = model(input_ids=ids, attention_mask=mask, prompt_lengths=torch.tensor([len(g) + len(p) for p, g, _ in ROWS])).logits
        wrong = model(input_ids=ids, attention_mask=mask, prompt_lengths=torch.tensor([len(p) for p, _, _ in ROWS])).logits
    for b, (p, g, r) in enumerate(ROWS):
        row = got[b, len(p) - 1:len(p) - 1 + len(r)]
        torch.testing.assert_close(row, torch.stack(hand_logprobs(right[b], ids[b], len(g) + len(p), len(r))))
        assert not torch.allclose(row, torch.stack(hand_logprobs(wrong[b], ids[b], len(g) + len(p), len(r))))


def test_misaligned_guided_copy_is_refused():
    _, model = make_model()
    batch = make_batch()
    batch["guided_input_ids"][0, -1 - (batch["guided_attention_mask"][0] == 0).sum()] = 3  # row 0's last response token
    with pytest.raises(DataError, match="differ"):
        guided_logprobs(model, batch, NLFTOptions())


def test_missing_guided_copy_is_a_clear_error():
    _, model = make_model()
    plain = {k: v for k, v in make_batch().items() if not k.startswith("guided_")}
    with pytest.raises(DataError, match="guided copy"):
        OBJECTIVES.get("nlft")(model, plain, {})


def test_option_errors_name_the_field():
    cases = [({"threshold": 1.0}, r"objective_options\.threshold: must be > 1"),
             ({"threshold": float("nan")}, r"objective_options\.threshold: must be a finite number"),
             ({"negative_weight": 2.0}, r"objective_options\.negative_weight: must be <= base_weight"),
             ({"positive_weight": 0.5}, r"objective_options\.positive_weight: must be >= base_weight"),
             ({"prob_threshold": 1.0}, r"objective_options\.prob_threshold: must be in \(0, 1\)"),
             ({"low_exponent": 0}, r"objective_options\.low_exponent: must be > 0"),
             ({"rule": "ratio"}, r"objective_options\.rule"),
             ({"treshold": 2.0}, r"objective_options\.treshold: unknown key.*did you mean 'threshold'")]
    for opts, message in cases:
        with pytest.raises(reftx.ConfigError, match=message):
            OBJECTIVES.get("nlft")(None, {}, opts)


# -- the data path ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from reftx.models.loading import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path())


def test_guided_keys_only_when_asked(tok):
    ex = Example("What is 2 + 3?", "2 + 3 = 5.\nThe answer is 5.", guidance="Hint: the correct final answer is 5.")
    plain = encode(tok, ex, 64, chat=False)
    assert plain.guided_ids is None
    one = collate_train([plain], 0)
    assert set(one) == {"input_ids", "attention_mask", "labels", "prompt_lengths"}
    assert one["prompt_lengths"].tolist() == [plain.prompt_len]  # the boundary encoding found, carried
    guided = encode(tok, ex, 64, chat=False, guided=True)
    assert guided.input_ids == plain.input_ids and guided.labels == plain.labels
    response = plain.input_ids[plain.prompt_len:]
    assert guided.guided_ids[guided.guided_prompt_len:] == response
    assert guided.guided_ids[:guided.guided_prompt_len] == tok(guided_prompt(ex))["input_ids"]
    short = encode(tok, Example("1 + 1?", "2.", guidance="Hint: 2."), 64, chat=False, guided=True)
    batch = collate_train([guided, short], 0)
    assert {"guided_input_ids", "guided_attention_mask", "guided_labels"} <= set(batch)
    assert batch["guided_prompt_lengths"].tolist() == [guided.guided_prompt_len, short.guided_prompt_len]
    g = batch["guided_labels"][0]
    assert (g[:guided.guided_prompt_len] == -100).all()
    assert g[guided.guided_prompt_len:len(guided.guided_ids)].tolist() == response
    assert batch["guided_attention_mask"][1].sum() == len(short.guided_ids)
    with pytest.raises(DataError, match="guidance"):
        encode(tok, Example("no guidance", "x"), 64, chat=False, guided=True)
    with pytest.raises(ValueError, match="guided copy"):
        collate_train([guided, plain], 0)


def test_math_task_gives_guidance_and_validate_checks_it(tmp_path):
    from reftx.recipes import registry as recipes
    from reftx.config.schema import load_experiment
    from reftx.eval.task import get_task

    ex = get_task("math", {"train_set": "gsm8k_original"}).examples("train", 3)
    assert all(e.guidance == f"Hint: the correct final answer is {e.gold}." for e in ex)
    spec = {"schema": 1, "task": {"name": "persona"}, "model": {"name": "default"},
            "interventions": [{"kind": "loreft", "rank": 2, "layers": [1]}], "train": {"objective": "nlft"}}
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(reftx.ConfigError, match=r"train\.objective: objective 'nlft' needs natural-language guidance"):
        recipes.validate(load_experiment(path), model_config=object())
