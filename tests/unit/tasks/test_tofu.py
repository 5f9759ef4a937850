"""tofu_unlearn: the real TOFU files (counts from shared/data/SOURCES.md), splits, bad rows, ROUGE-L recall."""
from __future__ import annotations

import json

import pytest

import reftx
import reftx.tasks  # noqa: F401  (registers the zoo)
from reftx.core.errors import DataError
from reftx.eval.task import default_data_dir, get_task
from reftx.tasks.tofu import author_of, forget_authors, read_lines, read_perturbed, read_qa
from reftx.tasks.tofu_metrics import rouge_l_recall

DATA = default_data_dir()
TOFU = DATA / "tofu" if DATA is not None else None
needs_data = pytest.mark.skipif(TOFU is None or not TOFU.is_dir(), reason="shared TOFU data not available")


def test_rouge_l_recall_reference():
    # gold: the cat is on the mat (6 tokens); LCS with "the cat sat on the mat" = the cat on the mat (5)
    assert rouge_l_recall("The cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l_recall("A B C", "a c") == 1.0  # lowercased; recall ignores extra predicted tokens
    assert rouge_l_recall("c a", "a c") == 0.5  # order matters
    assert rouge_l_recall("a b c b d a b", "b d c a b a") == pytest.approx(4 / 6)  # CLRS's LCS: b c b a
    assert rouge_l_recall("Kuwait.", "kuwait") == 1.0  # punctuation separates tokens, as in TOFU's scorer
    assert rouge_l_recall("born in Kuwait-City", "Kuwait City") == 1.0
    # Porter stems of tokens longer than 3 characters: writes/writing -> write, novels -> novel;
    # "wrote" stays "wrote", so LCS(he write novel, he wrote novel write) = 2 of 4
    assert rouge_l_recall("He writes novels", "He wrote novel writing") == 0.5
    assert rouge_l_recall("anything", "") == 0.0
    assert rouge_l_recall("", "gold answer") == 0.0


@needs_data
@pytest.mark.parametrize("name, keys, n", [
    ("full", ("question", "answer"), 4000),
    ("forget01", ("prompt", "response"), 40), ("forget05", ("prompt", "response"), 200),
    ("forget10", ("prompt", "response"), 400), ("retain99", ("question", "answer"), 3960),
    ("retain95", ("question", "answer"), 3800), ("retain90", ("question", "answer"), 3600),
])
def test_real_file_counts(name, keys, n):
    assert len(read_qa(TOFU / f"{name}.json", keys)) == n


@needs_data
def test_real_files_partition_full():
    full = [(q.question, q.answer) for q in read_qa(TOFU / "full.json", ("question", "answer"))]
    forget = [(q.question, q.answer) for q in read_qa(TOFU / "forget01.json", ("prompt", "response"))]
    retain = [(q.question, q.answer) for q in read_qa(TOFU / "retain99.json", ("question", "answer"))]
    assert forget == full[3960:] and retain == full[:3960]
    assert len(read_lines(TOFU / "idontknow.jsonl")) == 100


@needs_data
def test_splits():
    task = get_task("tofu_unlearn", {"n_retain": 30})
    train, ev = task.load("train"), task.load("eval")
    assert len(train) == 70 and sum(e.info["gate_label"] for e in train) == 40
    assert len(ev) == 80 and sum(e.info["gate_label"] for e in ev) == 40
    assert len(task.load("forget")) == 40 and len(task.load("retain")) == 3960
    key = lambda e: (e.meta["file"], e.meta["index"])  # noqa: E731
    train_retain = {key(e) for e in train if e.info["gate_label"] == 0}
    eval_retain = {key(e) for e in ev if e.info["gate_label"] == 0}
    assert len(train_retain) == 30 and not train_retain & eval_retain  # eval retain is held out
    assert train_retain == {key(e) for e in get_task("tofu_unlearn", {"n_retain": 30}).load("train")
                            if e.info["gate_label"] == 0}  # fixed by the seed
    other = get_task("tofu_unlearn", {"n_retain": 30, "seed": 1}).load("train")
    assert train_retain != {key(e) for e in other if e.info["gate_label"] == 0}
    assert train[0].meta == {"file": "forget01.json", "line": 2, "index": 0, "set": "forget"}
    assert train[0].target == train[0].answer  # no IDK: the real answer


@needs_data
@pytest.mark.parametrize("opts", [
    {"forget": "forget05", "retain_authors": 4, "n_retain": 60, "n_utility": 20},  # every question not evaluated
    {"forget": "forget01", "retain_authors": 4, "n_retain": 40, "n_utility": 20},  # the shipped CPU configs
    {"forget": "forget10", "n_utility": None},  # the paper config: all 400 retain_perturbed rows evaluated
    {"forget": "forget01", "retain_authors": 2, "n_retain": 15, "n_utility": 25, "seed": 7},
])
def test_evaluated_retain_questions_are_never_trained_on(opts):
    """Split tofu's retain questions are held out of the unlearning training set by construction
    (before, n_retain=80 of the 80 reduced-TOFU retain questions trained on all 20 evaluated ones,
    and the forget10 paper config trained on 55 of its 400)."""
    task = get_task("tofu_unlearn", opts)
    trained = {e.prompt for e in task.load("train") if e.info["gate_label"] == 0.0}
    evaluated = {e.prompt for e in task.load("tofu") if e.meta["set"] == "retain"}
    assert len(trained) == opts.get("n_retain", {"forget10": 400}.get(opts["forget"]))
    assert len(evaluated) == (opts["n_utility"] or 400)
    assert not trained & evaluated
    assert evaluated == {r.question for r in task.eval_retain()}


@needs_data
def test_n_retain_beyond_the_held_out_retain_set_is_refused():
    task = get_task("tofu_unlearn", {"forget": "forget05", "retain_authors": 4, "n_retain": 80, "n_utility": 20})
    with pytest.raises(reftx.ConfigError, match=r"^task\.options\.n_retain: 80 retain examples asked, but the retain "
                                                r"set has 80 and 20 of them are split tofu's retain questions \(held "
                                                r"out of training\): at most 60; lower n_retain, n_utility or raise "
                                                r"retain_authors$"):
        task.load("train")


@needs_data
def test_idk_replaces_forget_targets_only():
    idk = set(read_lines(TOFU / "idontknow.jsonl"))
    plain, task = get_task("tofu_unlearn").load("train"), get_task("tofu_unlearn", {"idk": True}).load("train")
    for a, b in zip(plain, task):
        if b.info["gate_label"] == 1:
            assert b.target in idk and b.answer == a.target  # scored against the real answer
        else:
            assert b.target == a.target
    assert len({e.target for e in task if e.info["gate_label"] == 1}) > 1  # random lines, not one


@needs_data
def test_option_errors():
    with pytest.raises(reftx.ConfigError, match="task.options.forget"):
        get_task("tofu_unlearn", {"forget": "forget02"})
    with pytest.raises(reftx.ConfigError, match="n_retain"):
        get_task("tofu_unlearn", {"n_retain": 5000}).load("train")


def test_bad_rows_name_file_and_line(tmp_path):
    (tmp_path / "tofu").mkdir()
    forget = tmp_path / "tofu" / "forget01.json"
    recs = [{"prompt": "q1", "response": "a1"}, {"prompt": "q2"}]
    forget.write_text(json.dumps(recs, indent=2))  # record 1 opens on line 6
    task = get_task("tofu_unlearn", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"forget01\.json:6 \(record 1\): missing or non-string field\(s\) response"):
        task.load("forget")
    forget.write_text('[{"prompt": "q1", "response": "a1"},\n {"prompt": "q2" "response": "a2"}]')
    with pytest.raises(DataError, match=r"forget01\.json:2: invalid JSON"):
        get_task("tofu_unlearn", data_dir=tmp_path).load("forget")
    retain = tmp_path / "tofu" / "retain.json"
    retain.write_text('[{"question": "q", "answer": "a"}]\n["not an object"]\n')
    with pytest.raises(DataError, match=r"retain\.json:2 \(record 1\): expected a JSON object"):
        read_qa(retain, ("question", "answer"))
    retain.write_text('[{"question": "q", "answer": "a"}\n')
    with pytest.raises(DataError, match=r"retain\.json:2: expected ',' or '\]', got end of file"):
        read_qa(retain, ("question", "answer"))


def test_multi_array_file_lines(tmp_path):
    path = tmp_path / "full.json"
    path.write_text('[{"question": "q0", "answer": "a0"}, {"question": "q1", "answer": "a1"}]\n'
                    '[]\n[{"question": "q2", "answer": "a2"}]\n')
    assert [(q.question, q.line, q.index) for q in read_qa(path, ("question", "answer"))] == \
        [("q0", 1, 0), ("q1", 1, 1), ("q2", 3, 2)]


def test_score_per_set():
    from reftx.data.examples import Example

    exs = [Example("q", "the cat is on the mat", info={"gate_label": 1.0}),
           Example("q", "a c", info={"gate_label": 0.0}), Example("q", "a b", info={"gate_label": 0.0})]
    scores = get_task("tofu_unlearn").score(["the cat sat on the mat", "a c", "b"], exs)
    assert scores == pytest.approx({"rougeL_recall": (5 / 6 + 1 + 0.5) / 3, "rougeL_recall_forget": 5 / 6,
                                    "rougeL_recall_retain": 0.75})


@needs_data
@pytest.mark.parametrize("name, paraphrased, n, n_perturbed", [
    ("forget01_perturbed", True, 40, 5), ("forget05_perturbed", True, 200, 5), ("forget10_perturbed", True, 400, 5),
    ("retain_perturbed", True, 400, 5), ("real_authors_perturbed", False, 100, 3),
    ("world_facts_perturbed", False, 117, 3),
])
def test_real_perturbed_files(name, paraphrased, n, n_perturbed):
    rows = read_perturbed(TOFU / f"{name}.json", paraphrased)
    assert len(rows) == n and {len(r.perturbed) for r in rows} == {n_perturbed}
    assert all(r.paraphrased != r.answer for r in rows) if paraphrased else all(r.paraphrased == r.answer for r in rows)


@needs_data
def test_authors_and_reduced_retain_set():
    full = read_qa(TOFU / "full.json", ("question", "answer"))
    forget05 = read_qa(TOFU / "forget05.json", ("prompt", "response"))
    assert [author_of(full[i]) for i in (0, 19, 20, 3959, 3960, 3999)] == [0, 0, 1, 197, 198, 199]
    assert author_of(forget05[0]) == 190 and author_of(forget05[-1]) == 199  # the last 10 authors
    assert list(forget_authors("forget01")) == [198, 199]
    task = get_task("tofu_unlearn", {"retain_authors": 3})
    retain = task.load("retain")
    assert len(retain) == 60 and len(get_task("tofu_unlearn").load("retain")) == 3960
    assert [e.meta["index"] for e in retain] == list(range(60))  # authors 0-2 of retain99


def test_perturbed_bad_rows(tmp_path):
    path = tmp_path / "x_perturbed.json"
    path.write_text('[{"question": "q", "answer": "a", "perturbed_answer": ["b"]},\n'
                    ' {"question": "q", "answer": "a", "perturbed_answer": []}]')
    with pytest.raises(DataError, match=r"x_perturbed\.json:2 \(record 1\): missing or malformed field\(s\) "
                                        r"perturbed_answer \(a non-empty list of strings\)"):
        read_perturbed(path)
    with pytest.raises(DataError, match=r":1 \(record 0\): missing or malformed field\(s\) paraphrased_answer"):
        read_perturbed(path, paraphrased=True)


@needs_data
def test_holdout_files_and_memorization_split():
    # holdout01/05/10 (40/200/400): open-unlearning's MIA non-members, questions on authors outside full.json
    full = {q.question for q in read_qa(TOFU / "full.json", ("question", "answer"))}
    holdout10 = read_qa(TOFU / "holdout10.json", ("question", "answer"))
    for name, n in (("holdout01", 40), ("holdout05", 200)):
        rows = read_qa(TOFU / f"{name}.json", ("question", "answer"))
        assert [q.question for q in rows] == [q.question for q in holdout10[:n]]  # nested: prefixes of holdout10
    assert len(holdout10) == 400 and not full & {q.question for q in holdout10}
    plain = get_task("tofu_unlearn", {"forget": "forget05", "retain_authors": 2, "n_forget_eval": 30}).load("tofu")
    task = get_task("tofu_unlearn", {"forget": "forget05", "retain_authors": 2, "n_forget_eval": 30,
                                     "memorization": True})
    exs = task.load("tofu")
    assert exs[:len(plain)] == plain and all(e.meta["set"] != "holdout" for e in plain)  # off: unchanged
    holdout = exs[len(plain):]
    assert len(holdout) == 30 and {e.meta["set"] for e in holdout} == {"holdout"}
    assert holdout[0].meta["file"] == "holdout05.json" and holdout[0].prompt == holdout10[0].question
    assert all(e.info["gate_label"] == 0.0 for e in holdout)
