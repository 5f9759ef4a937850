"""reftx.eval.outcomes: stable example ids, and the per-example values score_metrics records while a
recording is open (by example identity, under the keys the values are aggregated into)."""
from __future__ import annotations

import hashlib

import pytest

import reftx.tasks  # noqa: F401  (registers the zoo's metrics)
from reftx.data.examples import Example
from reftx.eval.metrics import score_metrics
from reftx.eval.outcomes import Predictions, example_ids, plain, recording


def test_example_ids_depend_on_content_only():
    a, b = Example("Q1", "A1"), Example("Q2", "A2", answer="2")
    ids = example_ids([a, b])
    assert example_ids([b, a]) == ids[::-1]  # order does not matter
    assert example_ids([Example("Q1", "A1", meta={"file": "elsewhere"})]) == ids[:1]  # nor where it came from
    assert ids[0] == hashlib.sha256(b'["Q1", "A1", "A1"]').hexdigest()[:12] and ids[0] != ids[1]  # prompt, target, gold
    assert example_ids([a, Example("Q1", "A1"), a]) == [ids[0], f"{ids[0]}-2", f"{ids[0]}-3"]  # repeats numbered
    assert example_ids([Example("Q2", "A2", answer="3")]) != ids[1:]  # another gold: another example


def test_recording_keys_subsets_and_aggregates():
    exs = [Example("a", "x", info={"gate_label": 1.0}), Example("b", "y", info={"gate_label": 0.0}),
           Example("c", "z", info={"gate_label": 1.0})]
    preds = ["Arr yo ho ho", "no", "arr"]
    outside = score_metrics(["persona_open"], preds, exs)  # no recording open: nothing kept, same numbers
    with recording(exs) as rec:
        got = score_metrics(["persona_open", "persona_close"], preds, exs,
                            by=lambda ex: "forget" if ex.info["gate_label"] else None, key="{metric}_{group}")
        score_metrics(["persona_open"], preds[:1], exs[:1], overall="{metric}_first")  # a subset, renamed
        score_metrics(["persona_close"], ["x"] * 3, exs, overall="{metric}_ref", record=False)  # a reference model's
    assert got["persona_open"] == outside["persona_open"] == pytest.approx(2 / 3)
    assert rec.rows == [
        {"persona_open": 1.0, "persona_close": 1.0, "persona_open_forget": 1.0, "persona_close_forget": 1.0,
         "persona_open_first": 1.0},
        {"persona_open": 0.0, "persona_close": 0.0},
        {"persona_open": 1.0, "persona_close": 0.0, "persona_open_forget": 1.0, "persona_close_forget": 0.0}]
    assert rec.aggregates == {}  # means only
    labelled = [Example(e.prompt, info={"label": float(i % 2)}) for i, e in enumerate(exs)]
    with recording(labelled) as rec:  # F1 of the logs tasks: its ingredients, and the metric that aggregates them
        score_metrics(["binary_f1"], [(1, 0.9), (0, 0.2), (1, 0.7)], labelled)
        score_metrics(["persona_open"], ["arr"], exs[:1])  # other examples than those recorded: left out
    assert rec.rows == [{"f1": [1, 0, 0.9]}, {"f1": [0, 1, 0.2]}, {"f1": [1, 0, 0.7]}]
    assert rec.aggregates == {"f1": "binary_f1"}


def test_predictions_and_plain_values():
    p = Predictions(["a", "b"], [{"k": 1.0}, {}], {})
    assert p == ["a", "b"] and p.outcomes == [{"k": 1.0}, {}] and p[:1] == ["a"]
    with pytest.raises(ValueError, match="1 outcome rows for 2 predictions"):
        Predictions(["a", "b"], [{}], {})
    assert plain((1, True, 0.5, ("x", None), {"a": (2,)})) == [1, 1, 0.5, ["x", None], {"a": [2]}]
