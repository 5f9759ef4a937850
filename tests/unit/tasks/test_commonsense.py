"""The commonsense task: label extraction, option parsing, loaders on the real files (counts from
shared/data/SOURCES.md), log-likelihood scoring, and a tiny end-to-end train + eval on real BoolQ."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import reftx.tasks  # noqa: F401
import reftx.cli.commands as cli
from reftx.core.errors import DataError
from reftx.config.schema import EvalConfig
from reftx.models.loading import load_model
from reftx.eval.scoring import score_continuations
from reftx.data.examples import Example
from reftx.eval.task import default_data_dir, get_task
from reftx.tasks.commonsense import answer_options, extract_label

REPO = Path(__file__).resolve().parents[3]
DATA = default_data_dir()
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "commonsense").is_dir(), reason="shared data not present")
ANSWERS = ["answer1", "answer2", "answer3", "answer4"]


@pytest.mark.parametrize("text, options, label", [
    # LLM-Adapters commonsense_evaluate.py extract_answer: re.findall(labels, output.strip())[0]
    ("the correct answer is answer3", ANSWERS, "answer3"),
    ("answer1 looks odd, so the correct answer is answer2.", ANSWERS, "answer1"),  # the first match
    ("The Correct Answer Is TRUE.", ["true", "false"], None),        # case-sensitive
    ("I would say false, not true", ["true", "false"], "false"),
    ("the correct answer is solution12", ["solution1", "solution2"], "solution1"),  # no word boundaries
    ("the correct answer is option2option1", ["option1", "option2"], "option2"),
    ("the correct answer is", ["true", "false"], None),
    ("untrue", ["true", "false"], "true"),
])
def test_extract_label(text, options, label):
    assert extract_label(text, options) == label


def test_answer_options():
    assert answer_options("Q?\n\nOption1: Sarah Option2: Maria Answer format: option1/option2", "f:1") == \
        ["option1", "option2"]
    assert answer_options("Q\n\nAnswer format: answer1/answer2/answer3/answer4/answer5", "f:1") == \
        [f"answer{i}" for i in range(1, 6)]
    with pytest.raises(DataError, match="f:9: no 'Answer format: a/b/...' line"):
        answer_options("What?", "f:9")


def test_score_generate_and_loglik():
    ex = [Example("q", answer="true", meta={"options": ["true", "false"]}),
          Example("q", answer="false", meta={"options": ["true", "false"]}),
          Example("q", answer="true", meta={"options": ["true", "false"]})]
    preds = ["the correct answer is true", "the correct answer is true", "maybe"]
    assert get_task("commonsense").score(preds, ex) == pytest.approx(
        {"accuracy": 1 / 3, "accuracy_pyreft": 1 / 3, "answered": 2 / 3})
    assert get_task("commonsense", {"scoring": "loglik"}).score(preds, ex) == pytest.approx(
        {"accuracy": 1 / 3, "accuracy_pyreft": 1 / 3})
    assert get_task("commonsense").generate and not get_task("commonsense", {"scoring": "loglik"}).generate


@needs_data
def test_loaders_match_sources_counts():
    counts = {"boolq": (9427, 3270), "arc_easy": (2251, 2376), "arc_challenge": (1119, 1172),
              "openbookqa": (4957, 500), "piqa": (None, 1838), "social_i_qa": (None, 1954),
              "winogrande": (None, 1267)}
    for name, (n_train, n_test) in counts.items():
        task = get_task("commonsense", {"dataset": name})
        assert len(task.load("test")) == n_test, name
        if n_train is None:
            with pytest.raises(DataError, match=f"data file not found: .*{name}/train.json"):
                task.load("train")
        else:
            assert len(task.load("train")) == n_train, name
    first = get_task("commonsense", {"dataset": "boolq"}).load("test")[0]
    assert first.prompt.startswith("Please answer the following question with true or false, question: does ethanol")
    assert (first.target, first.gold, first.meta["options"]) == ("the correct answer is false", "false",
                                                                   ["true", "false"])
    wino = get_task("commonsense", {"dataset": "winogrande", "template": "alpaca"}).load("test")[0]
    assert wino.meta["options"] == ["option1", "option2"] and wino.gold == "option2"
    assert wino.prompt.startswith("Below is an instruction") and wino.prompt.endswith("### Response:\n")
    arc = get_task("commonsense", {"dataset": "arc_easy"}).load("train")
    assert sum(len(e.meta["options"]) == 5 for e in arc) == 4  # a few ARC questions have 3 or 5 options


def test_malformed_rows_name_file_and_line(tmp_path):
    root = tmp_path / "commonsense" / "boolq"
    root.mkdir(parents=True)
    ok = {"instruction": "Q?\n\nAnswer format: true/false", "input": "", "output": "x", "answer": "true"}
    (root / "test.json").write_text(json.dumps([ok, dict(ok, answer="maybe")], indent=1))
    task = get_task("commonsense", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"test.json:8: answer 'maybe' is not one of the options \['true', 'false'\]"):
        task.load("test")
    (root / "test.json").write_text(json.dumps([ok, dict(ok, instruction="Q?")], indent=1))
    with pytest.raises(DataError, match="test.json:8: no 'Answer format"):
        task.load("test")
    (root / "test.json").write_text("[]")
    with pytest.raises(DataError, match="split 'test' is empty"):
        task.examples("test")


def test_loglik_picks_the_most_likely_option(tiny_dir):
    """evaluate(scoring=loglik) predicts the option whose continuation has the highest summed log-prob."""
    base, tok = load_model(str(tiny_dir))
    task = get_task("commonsense", {"scoring": "loglik"})
    opts = ["answer1", "answer2", "answer3"]
    ex = [Example(f"Question {i}?", answer=opts[i % 3], meta={"options": opts}) for i in range(4)]
    metrics, preds = task.evaluate(base, tok, ex, EvalConfig(batch_size=5), chat=True, show_progress=False)
    for e, pred in zip(ex, preds):
        scores = score_continuations(base, tok, [e.prompt] * 3, [f"the correct answer is {o}" for o in opts], True)
        best = max(range(3), key=lambda i: scores[i].logprob)
        assert pred == f"the correct answer is {opts[best]}"
    accuracy = sum(p.endswith(str(e.gold)) for p, e in zip(preds, ex)) / 4
    assert metrics == pytest.approx({"accuracy": accuracy, "accuracy_pyreft": accuracy})


@needs_data
def test_tiny_train_and_eval_on_real_boolq(tiny_dir, tmp_path):
    """LoReFT's BoolQ config end to end on 16 real questions, 8 test questions by log-likelihood."""
    args = ["run", str(REPO / "experiments" / "commonsense" / "boolq_loreft.yaml"), f"model.name={tiny_dir}",
            f"output_dir={tmp_path}", "task.n_train=16", "task.n_eval=8", "train.max_steps=2",
            "train.batch_size=8", "interventions.0.layers=[1, 2]", "--no-progress"]
    assert cli.main(args) == 0
    results = json.loads((tmp_path / "boolq_loreft" / "results.json").read_text())
    assert results["n_train"] == 16 and results["n_eval"] == 8 and results["train"]["steps"] == 2
    samples = [json.loads(x) for x in (tmp_path / "boolq_loreft" / "samples.jsonl").read_text().splitlines()]
    assert all(s["after"] in ("the correct answer is true", "the correct answer is false") for s in samples)
    assert not any("before" in s for s in samples)  # log-likelihood scoring generates nothing
    correct = sum(s["after"].endswith(s["gold"]) for s in samples)
    assert set(results["metrics"]) == {"accuracy", "accuracy_pyreft"}
    assert results["metrics"]["accuracy"] == results["metrics"]["accuracy_pyreft"] == pytest.approx(correct / 8)
