"""reftx.eval.scoring: teacher-forced continuation scores against a hand-rolled forward."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reftx import attach
from reftx.eval.scoring import ContinuationScore, choose, multiple_choice, score_continuations

PROMPTS = ["The capital of France is", "Two plus two equals", "Hi"]
CONTS = [" Paris", " four, of course", " there friend"]


@pytest.fixture(scope="module")
def lm(tiny_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval(), AutoTokenizer.from_pretrained(tiny_dir)


def manual(model, tok, prompt, cont):
    p = tok(prompt)["input_ids"]
    c = tok(cont, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    rows = range(len(p) - 1, len(p) + len(c) - 1)
    return [lp[r, c[i]].item() for i, r in enumerate(rows)], [logits[r].argmax().item() for r in rows], c


def test_matches_single_unpadded_forward(lm):
    model, tok = lm
    got = score_continuations(model, tok, PROMPTS, CONTS, batch_size=2)  # mixed lengths: right padding
    for g, p, c in zip(got, PROMPTS, CONTS):
        lps, argmax, targets = manual(model, tok, p, c)
        assert g.targets == tuple(targets)
        assert g.argmax == tuple(argmax)
        assert g.logprobs == pytest.approx(lps, abs=1e-5)


def test_intervened_prompt_span_matches_labels(lm):
    """With a `last_prompt` intervention, the score equals the labelled forward's, whose prompt
    span comes from the labels: scoring tells the model where each prompt ends."""
    model, tok = lm
    reft = attach(model, [{"kind": "loreft", "rank": 2, "layers": [1, 2], "positions": "last_prompt"}])
    try:
        torch.manual_seed(1)
        for p in reft.interventions.parameters():
            p.data.normal_(0, 0.5)
        got = score_continuations(reft, tok, PROMPTS, CONTS)
        plain = [manual(model, tok, p, c)[0] for p, c in zip(PROMPTS, CONTS)]
        assert any(abs(g.logprob - sum(m)) > 1e-3 for g, m in zip(got, plain))  # the edit changes scores
        for g, p, c in zip(got, PROMPTS, CONTS):
            pi = tok(p)["input_ids"]
            ci = tok(c, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([pi + ci])
            labels = torch.tensor([[-100] * len(pi) + ci])
            with torch.no_grad():
                out = reft(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
            assert -g.logprob / g.n_tokens == pytest.approx(out.loss.item(), abs=1e-5)
    finally:
        reft.detach()


def test_score_properties_by_hand():
    s = ContinuationScore((-1.0, -3.0), (5, 9), (5, 7))
    assert s.logprob == -4.0 and s.mean_logprob == -2.0 and s.token_accuracy == 0.5 and s.n_tokens == 2
    empty = ContinuationScore((), (), ())
    assert empty.token_accuracy == 0.0 and empty.mean_logprob == 0.0
    a = ContinuationScore((-1.0, -1.0, -1.0), (0, 0, 0), (0, 0, 0))  # sum -3, mean -1
    b = ContinuationScore((-2.5,), (0,), (1,))  # sum -2.5, mean -2.5
    assert choose([a, b]) == 1 and choose([a, b], normalize=True) == 0


def test_multiple_choice_picks_most_likely(lm):
    model, tok = lm
    options = [[" Paris", " London", " a"], [" four", " five"]]
    picks = multiple_choice(model, tok, PROMPTS[:2], options, batch_size=3)
    for pick, p, opts in zip(picks, PROMPTS[:2], options):
        sums = [sum(manual(model, tok, p, o)[0]) for o in opts]
        assert pick == max(range(len(opts)), key=sums.__getitem__)
        assert not math.isclose(sorted(sums)[-1], sorted(sums)[-2])


def test_length_mismatch_is_an_error(lm):
    model, tok = lm
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        score_continuations(model, tok, PROMPTS[:2], CONTS[:1])
