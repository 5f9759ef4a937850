"""ROME/MEMIT's CounterFact protocol (tasks/knowledge_edit.py) against numbers computed by hand.

Reference: kmeng01/rome, ``experiments/py/eval_utils_counterfact.py`` (``test_batch_prediction``:
a target's mean token NLL; ``n_gram_entropy`` / ``compute_n_gram_entropy``: weights 2/3 and 4/3
on the 2- and 3-gram entropies in bits) and ``experiments/summarize.py`` (scores: strict
comparisons of those NLLs; magnitudes: exp(-nll_wanted) - exp(-nll_other)).
"""
from __future__ import annotations

import math

import pytest

import reftx.tasks  # noqa: F401  (registers the zoo)
from reftx.eval.metrics import get_metric
from reftx.eval.scoring import ContinuationScore
from reftx.data.examples import Example
from reftx.tasks.knowledge_edit import (_rows, compute_n_gram_entropy, counterfact_scores, edit_pairs,
                                        n_gram_entropy, rome_prob, summarize)


def test_counterfact_scores_by_hand():
    got = counterfact_scores(edit=(0.5, 1.0), rephrase=(2.0, 1.0), neighborhood=(0.3, 0.3))
    assert got == pytest.approx({
        "efficacy_score": 1.0, "efficacy_magnitude": 0.6065306597 - 0.3678794412,   # e^-0.5 - e^-1
        "paraphrase_score": 0.0, "paraphrase_magnitude": 0.1353352832 - 0.3678794412,  # e^-2 - e^-1
        "neighborhood_score": 0.0, "neighborhood_magnitude": 0.0})  # a tie is no success (strict, as ROME)
    # neighborhood: the TRUE target should stay the more likely one: (new 1.5, true 0.5) is a success
    got = counterfact_scores((0.0, 0.0), (0.0, 0.0), neighborhood=(1.5, 0.5))
    assert got["neighborhood_score"] == 1.0
    assert got["neighborhood_magnitude"] == pytest.approx(0.6065306597 - 0.2231301601)  # e^-0.5 - e^-1.5


def test_rome_probability_is_exp_of_the_mean_nll_not_the_product():
    """Token log-probs -0.2 and -0.8: ROME's P = exp(-(0.2 + 0.8) / 2) = e^-0.5, not e^-1."""
    s = ContinuationScore((-0.2, -0.8), (1, 2), (1, 2))
    assert rome_prob(-s.mean_logprob) == pytest.approx(0.6065306597)


def _ex(gt: str, loc_answer: str) -> Example:
    return Example("p", " new", meta={"rephrase": "r", "locality_prompt": "l", "locality_answer": loc_answer,
                                     "ground_truth": gt})


def test_pairs_and_rows_wire_the_right_scores():
    """Pairs: p/new, r/new, l/loc_answer (EasyEdit), then p/old, r/old, l/new (ROME); the locality
    answer is the old target here, so it is not scored twice. A zsRE-like edit (no ground truth)
    gets no ROME pairs and no ROME keys."""
    exs = [_ex("old", " old"), _ex("", " x")]
    prompts, conts, infos, extra = edit_pairs(exs)
    assert list(zip(prompts, conts))[6:] == [("p", " old"), ("r", " old"), ("l", " new")]
    assert extra == {0: (6, 7, 8, 4)} and len(infos) == 9
    nll = [0.5, 9, 2.0, 9, 0.3, 9, 1.0, 1.0, 1.5]  # mean NLL of each pair (9: unused)
    scores = [ContinuationScore((-v,), (0,), (1,)) for v in nll]
    rows = _rows(scores, exs, extra)
    assert rows[0] == pytest.approx({"reliability": 0.0, "generality": 0.0,
                                     **counterfact_scores((0.5, 1.0), (2.0, 1.0), (1.5, 0.3))})
    assert set(rows[1]) == {"reliability", "generality"}
    # a locality answer that is not the old target: the old target is scored after the locality prompt
    _, conts, _, extra = edit_pairs([_ex("old", " other")])
    assert conts[3:] == [" old", " old", " new", " old"] and extra == {0: (3, 4, 5, 6)}


def test_summarize_means_over_the_counterfact_edits_only():
    rows = [{"reliability": 1.0, "generality": 0.0, "locality": 1.0, "efficacy_score": 1.0},
            {"reliability": 0.0, "generality": 0.0, "locality": 0.5}]
    out = summarize(rows)
    assert out["efficacy_score"] == 1.0 and out["reliability"] == 0.5 and "paraphrase_score" not in out


def test_n_gram_entropy_by_hand():
    # "a b a b": bigrams ab x2, ba x1 -> H2 = -(2/3 log2 2/3 + 1/3 log2 1/3) = 0.9182958341;
    # trigrams aba, bab -> H3 = 1; weighted 2/3 * H2 = 0.6121972227, 4/3 * H3 = 1.3333333333
    assert compute_n_gram_entropy("a b a b") == pytest.approx((0.6121972227 + 1.3333333333) / 2)
    assert compute_n_gram_entropy("a b a b", agg="geom") == pytest.approx(math.sqrt(0.6121972227 * 1.3333333333))
    assert compute_n_gram_entropy("a a a") == 0.0  # one bigram type, one trigram
    assert compute_n_gram_entropy("a") == 0.0  # too short for any n-gram: no mass, entropy 0 (as numpy's empty sum)
    assert n_gram_entropy(["a b a b", "a a a"]) == pytest.approx(0.9727652780 / 2)
    # words: the Treebank tokenizer splits punctuation off ("x , y" has the same n-grams as "x, y")
    assert compute_n_gram_entropy("x, y x, y") == compute_n_gram_entropy("x , y x , y")
    assert get_metric("ngram_entropy").compute("a b a b", None) == compute_n_gram_entropy("a b a b")
