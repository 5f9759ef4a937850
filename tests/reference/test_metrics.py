"""Metrics as registered objects (reftx/eval/metrics.py): the registry's errors, aggregation, grouping,
and the zoo's metrics (persona, math, logs, TOFU, MCQ) through their Metric objects, against
numbers computed by hand."""
from __future__ import annotations

import math
import operator
import struct

import pytest

import reftx.tasks  # noqa: F401  (registers the zoo)
from reftx.eval import metrics as metrics_module
from reftx.cli.commands import main as cli_main
from reftx.core.errors import ConfigError
from reftx.eval.metrics import METRICS, Metric, get_metric, mean, mean_float32, register_metric, score_metrics
from reftx.core.registry import Registry
from reftx.eval.task import TASKS, Task, get_task
from reftx.data.examples import Example


def f32(x: float) -> float:
    """``x`` rounded to the nearest float32 (what torchmetrics' MeanMetric reported)."""
    return struct.unpack("f", struct.pack("f", x))[0]


@pytest.fixture
def private_registry(monkeypatch):
    """A fresh metric registry for registrations that must not leak into the zoo's (loaded first)."""
    METRICS.names()  # loads the zoo and the plugins into the real registry
    registry: Registry[Metric] = Registry("metric")
    monkeypatch.setattr(metrics_module, "METRICS", registry)
    return registry


# -- the registry --------------------------------------------------------------------------------
def test_unknown_metric_did_you_mean():
    with pytest.raises(ConfigError, match=r"^metrics: unknown metric 'persona_opn' \(did you mean 'persona_open'\?\); "
                                          r"valid: accuracy_any_number, accuracy_brep, "):
        get_metric("persona_opn")
    with pytest.raises(ConfigError, match=r"^task\.metrics: unknown metric 'rougeL_recall' \(did you mean "
                                          r"'rougel_recall'\?\)"):
        get_metric("rougeL_recall", "task.metrics")


def test_register_plain_call_and_decorator(private_registry):
    def share_long(prediction, example):
        """Share of answers longer than 3 characters."""
        return float(len(prediction) > 3)

    m = register_metric("share_long", share_long)
    assert isinstance(m, Metric) and get_metric("share_long") is m
    assert (m.key, m.aggregate, m.higher_is_better, m.doc) == ("share_long", mean, True, share_long.__doc__)

    @register_metric("longest", aggregate=max, higher_is_better=None, key="Longest", doc="longest answer")
    def length(prediction, example):
        return float(len(prediction))

    assert length("abcd", None) == 4.0  # the decorator returns the function unchanged
    got = get_metric("longest")
    assert (got.key, got.higher_is_better, got.doc) == ("Longest", None, "longest answer")
    assert private_registry.names() == ["longest", "share_long"]
    assert score_metrics(["share_long", "longest"], ["ab", "abcd", "abcdefg"], [None] * 3) == \
        {"share_long": 2 / 3, "Longest": 7.0}


def test_duplicate_and_bad_names(private_registry):
    register_metric("dup", lambda p, ex: 1.0)
    with pytest.raises(ValueError, match=r"metric 'dup' is already registered by Metric\('dup', compute=.*<lambda>\)"):
        register_metric("dup", operator.eq)  # another definition (a re-run of the same lambda would replace it)
    with pytest.raises(ValueError, match="metric names are lowercase identifiers, got 'rougeL_recall'"):
        register_metric("rougeL_recall", lambda p, ex: 1.0)
    with pytest.raises(TypeError, match="higher_is_better must be True, False or None"):
        register_metric("direction", lambda p, ex: 1.0, higher_is_better="up")
    assert private_registry.names() == ["dup"]  # the failed registrations left nothing behind


# -- aggregation ----------------------------------------------------------------------------------
def test_mean_and_mean_float32_by_hand():
    assert mean([1.0, 2.0, 4.0]) == 7 / 3
    assert math.isnan(mean([]))
    assert mean_float32([1.0, 0.0, 0.0]) == f32(1 / 3) == 0.3333333432674408
    assert mean_float32([1.0, 1.0, 0.0]) == f32(2 / 3) != 2 / 3
    assert mean_float32([0.5, 0.25]) == 0.375
    assert math.isnan(mean_float32([]))


def test_score_metrics_skips_none_groups_and_keys(private_registry):
    def even(prediction, example):
        return None if prediction % 2 else float(prediction)  # applies to even predictions only

    register_metric("even", even)
    register_metric("count", lambda p, ex: 1.0, aggregate=sum, key="n")
    exs = [Example("q", meta={"g": g}) for g in ("a", "b", "a", None, "b")]
    preds = [2, 3, 4, 6, 5]
    def by(ex):
        return ex.meta["g"]

    # even: overall (2 + 4 + 6) / 3; group a: (2 + 4) / 2; group b: none even -> left out
    assert score_metrics(["even", "count"], preds, exs, by=by) == \
        {"even": 4.0, "n": 5.0, "a/even": 3.0, "a/n": 2.0, "b/n": 2.0}
    assert list(score_metrics(["count"], preds, exs, by=by, key="{metric}_{group}")) == ["n", "n_a", "n_b"]
    assert score_metrics(["even"], [1, 3], exs[:2]) == {}  # applies to no example: left out
    with pytest.raises(ValueError, match=r"task 'x': two metrics report the same key: \['n', 'n'\]"):
        score_metrics(["count", get_metric("count")], preds, exs, field="task 'x'")
    with pytest.raises(ValueError):  # one prediction per example
        score_metrics(["count"], preds[:2], exs)


# -- tasks list their metrics ---------------------------------------------------------------------
def test_every_task_lists_registered_metrics():
    for name in TASKS.names():
        cls = TASKS.get(name)
        assert cls.metrics, f"task {name} lists no metrics"
        for metric in cls.metrics:
            get_metric(metric)


def test_task_metric_typo_fails_when_the_task_is_built(monkeypatch):
    monkeypatch.setattr(TASKS.get("persona"), "metrics", ("persona_opn",))
    with pytest.raises(ConfigError, match=r"^task 'persona': metrics: unknown metric 'persona_opn' \(did you mean "
                                          r"'persona_open'\?\)"):
        get_task("persona")


def test_task_without_metrics_says_so():
    class Bare(Task):
        name = "bare"

    with pytest.raises(NotImplementedError, match=r"task 'bare' names no metrics: set Bare\.metrics"):
        Bare().score(["x"], [Example("q")])


def test_ls_metrics(capsys):
    assert cli_main(["ls", "metrics"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(METRICS.names())
    assert any(ln.startswith("persona_open ") and "higher is better  Share of answers that open" in ln for ln in lines)
    assert any(ln.startswith("n_anomaly ") and "descriptive" in ln for ln in lines)
    assert any(ln.startswith("mcq_accuracy ") and ln.endswith("(reported as accuracy)") for ln in lines)


# -- the zoo's metrics through their objects --------------------------------------------------------
def test_persona_metrics():
    preds = ["Arr, matey! A ship. Yo ho ho!", "  ARRR the sea", "Hello. yo ho ho", "Plain answer."]
    exs = [Example("q")] * 4
    assert [get_metric("persona_open").compute(p, ex) for p, ex in zip(preds, exs)] == [1.0, 1.0, 0.0, 0.0]
    assert [get_metric("persona_close").compute(p, ex) for p, ex in zip(preds, exs)] == [1.0, 0.0, 1.0, 0.0]
    # 2 of 4 open, 2 of 4 close; the float32 mean is exact for 1/2
    # no answer repeats a word pair: distinct_2 is 1 for each (its own test has the loops)
    assert get_task("persona").score(preds, exs) == {"persona_open": 0.5, "persona_close": 0.5, "distinct_2": 1.0}
    assert get_task("persona").score(preds[:3], exs[:3]) == {"persona_open": f32(2 / 3), "persona_close": f32(2 / 3),
                                                             "distinct_2": 1.0}


def test_distinct_2_reference_values():
    """Li et al. 2016's distinct-n per answer (distinct bigrams / bigrams of lowercased words), then the mean."""
    d2 = get_metric("distinct_2")
    loop = "Arr, matey! Yo, three o' ho ho! Yo, three o' ho ho!"
    # 12 words, 11 bigrams; the second "yo, three o' ho ho!" repeats 4 of them: 7 distinct
    assert d2.compute(loop, Example("q")) == 7 / 11
    assert d2.compute("ho ho ho ho ho", Example("q")) == 1 / 4  # 4 bigrams, all ("ho", "ho")
    assert d2.compute("Yo HO yo ho", Example("q")) == 2 / 3  # lowercased: (yo, ho) twice, (ho, yo) once
    assert d2.compute("Arr!", Example("q")) == 1.0 and d2.compute("", Example("q")) == 1.0  # no bigram to repeat
    assert d2.higher_is_better is True
    exs = [Example("q")] * 3
    assert score_metrics(["distinct_2"], [loop, "ho ho ho ho ho", "a b c"], exs) == {"distinct_2": (7 / 11 + 1 / 4 + 1) / 3}


def test_math_rule_metrics():
    strict, flexible = get_metric("accuracy_lm_eval_strict"), get_metric("accuracy_lm_eval_flexible")
    llm = get_metric("accuracy_llm_adapters")
    assert llm.compute("The answer is 4.", Example("q", answer="4.0")) == 1.0
    assert llm.compute("It is (C).", Example("q", answer="B")) == 0.0  # first A-E is C
    assert strict.compute("It is (C).", Example("q", answer="B")) is None  # numeric golds only
    assert strict.compute("so #### 72", Example("q", answer="72")) == 1.0
    assert flexible.compute("72.0", Example("q", answer="72")) == 0.0  # string match: "72.0" is not "72"
    exs = [Example("q", answer="72"), Example("q", answer="B"), Example("q", answer="5")]
    preds = ["#### 72", "the answer is B", "5 apples, #### 6"]
    # strict over the two numeric golds: 72 yes, 6 != 5 -> 1/2; flexible: last number 72 yes, 6 no -> 1/2;
    # LLM-Adapters: 72 yes, first A-E of "the answer is B" is B yes, last number 6 no -> 2/3
    assert score_metrics([llm, strict, flexible], preds, exs) == {
        "accuracy_llm_adapters": f32(2 / 3), "accuracy_lm_eval_strict": 0.5, "accuracy_lm_eval_flexible": 0.5}


def test_logs_metrics_from_words_and_classifier():
    exs = [Example(c, info={"label": y}) for c, y in zip("abcde", (1.0, 0.0, 0.0, 1.0, 1.0))]
    words = ["anomaly", "Anomaly ", "normal", "normal", "anomaly"]  # predicted 1, 1, 0, 0, 1
    # TP 2 (a, e), FP 1 (b), FN 1 (d), TN 1 (c): precision 2/3, recall 2/3, F1 2/3, accuracy 3/5
    got = get_task("hdfs").score(words, exs)
    assert got == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "accuracy": 0.6,
                                 "n_anomaly": 3.0, "n_normal": 2.0, "f1_all_anomaly": 2 * 0.6 / 1.6}, abs=1e-7)
    assert "auroc" not in got  # words carry no score
    # classifier picks (class, p(anomaly)): labels 1, 0, 1, 0 with p 0.9, 0.8, 0.3, 0.1 -> AUROC 3/4
    # (positive above negative in 3 of the 4 pairs: 0.9 > 0.8, 0.9 > 0.1, 0.3 > 0.1; not 0.3 > 0.8)
    exs4 = [Example(c, info={"label": y}) for c, y in zip("abcd", (1.0, 0.0, 1.0, 0.0))]
    picks = [(1, 0.9), (1, 0.8), (0, 0.3), (0, 0.1)]
    got = score_metrics(TASKS.get("bgl").metrics, picks, exs4)
    assert got["auroc"] == pytest.approx(0.75) and got["precision"] == 0.5 and got["recall"] == 0.5
    assert list(got) == ["precision", "recall", "f1", "accuracy", "auroc", "n_anomaly", "n_normal", "f1_all_anomaly"]
    one_class = score_metrics(["binary_auroc"], picks[:2], [Example("x", info={"label": 1.0})] * 2)
    assert math.isnan(one_class["auroc"])


def test_tofu_and_mcq_metrics():
    rouge = get_metric("rougel_recall")
    assert rouge.key == "rougeL_recall"
    assert rouge.compute("the cat sat on the mat", Example("q", "the cat is on the mat")) == pytest.approx(5 / 6)
    rows = [{"prob": 0.2, "R": 0.5}, {"prob": 0.4, "R": 2.0}, {"prob": 0.6, "R": 1.0}]
    exs = [Example("q")] * 3
    # prob: mean 0.4; forget: mean(min(R, 1/R)) = (0.5 + 0.5 + 1) / 3; utility: mean(max(0, 1 - R)) = 0.5 / 3
    assert score_metrics(["tofu_prob", "truth_ratio_closer_to_1"], rows, exs) == \
        pytest.approx({"prob": 0.4, "truth_ratio": 2 / 3})
    assert score_metrics(["truth_ratio_true_better"], rows, exs) == pytest.approx({"truth_ratio": 0.5 / 3})
    mcq = [Example("q", "B"), Example("q", "C")]
    assert get_task("mcq").score([" B", "A"], mcq) == {"accuracy": 0.5}
