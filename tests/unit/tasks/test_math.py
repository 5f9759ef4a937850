"""The math task: answer extraction on tricky outputs, loaders on the real files (counts from
shared/data/SOURCES.md), malformed data, and a tiny end-to-end train + eval on a real subset."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import reftx.tasks  # noqa: F401
import reftx.cli.commands as cli
from reftx.core.errors import ConfigError, DataError
from reftx.data.examples import Example
from reftx.eval.task import default_data_dir, get_task
from reftx.tasks.math_reasoning import gsm8k_solution
from reftx.tasks.math_rules import extract_letter, extract_number, is_correct, numbers

REPO = Path(__file__).resolve().parents[3]
DATA = default_data_dir()
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "math_llm_adapters").is_dir(),
                                reason="shared data not present")


@pytest.mark.parametrize("text, value", [
    ("The answer is 1,234.", 1234.0),               # thousands comma, sentence period
    ("He owes -5 dollars, not 3", 3.0),              # the last number wins
    ("Temperature: -12.5 degrees", -12.5),           # negative decimal
    ("10-5 = 5", 5.0),                               # a minus between numbers is not a sign
    ("so 48/2 = 24 clips", 24.0),
    ("The answer is 3/4", 0.75),                     # a fraction counts as its value
    ("It costs $1,000.50 in all", 1000.5),
    ("about .5 of it", 0.5),
    ("3,4 and 1,2345", 2345.0),                      # commas not in groups of three separate numbers
    ("x2 and v3.0.1 only", None),                    # digits glued to words are not numbers
    ("I do not know.", None),                        # no number at all
])
def test_extract_number(text, value):
    assert extract_number(text) == value


def test_numbers_keep_fraction_parts_and_signs():
    assert numbers("10-5 = 5 and -2/4, 1/0") == [(10.0,), (5.0,), (5.0,), (-0.5, -2.0, 4.0), (1.0, 0.0)]


@pytest.mark.parametrize("text, gold, strict, lenient", [
    ("The answer is 4.", "4.0", True, True),
    ("4 + 1 = 5. The answer is 5.", "4.0", False, True),          # gold appears, but not last
    ("48/2 = 24 clips", "48", False, True),                       # gold is a fraction's numerator
    ("The answer is 1.8333", "1.8333333333333335", True, True),  # |diff| = 3.3e-5 <= 1e-3
    ("The answer is 1.83", "1.8333333333333335", False, False),  # |diff| = 3.3e-3 > 1e-3
    ("The answer is 1,200.", "1200.0", True, True),
    ("It fell to -3.", "-3", True, True),
    ("Nothing to see", "7", False, False),
    ("The answer is (D).", "D", True, True),
    ("A: the options (A) and (C) differ; the answer is C", "C", True, True),
    ("A: the options (A) and (C) differ; the answer is C", "A", False, True),  # (A) is marked
    ("Between (B) and (E) I pick (E)", "B", True, True),          # no "answer is": first marked letter
    ("A: I think so", "A", False, False),                         # a bare "A:" is not an answer
    ("The answer: e", "E", True, True),
])
def test_strict_and_lenient(text, gold, strict, lenient):
    assert is_correct(text, gold) == (strict, lenient)


def test_extract_letter():
    assert extract_letter("The answer is (B). Or the answer is D") == "D"
    assert extract_letter("no letter here") is None


def test_gsm8k_solution_target():
    target, gold = gsm8k_solution("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1,072", "f:1")
    assert (target, gold) == ("Natalia sold 48/2 = 24 clips in May.\nThe answer is 1072.", "1072")
    with pytest.raises(DataError, match="f:3: the answer does not end with '#### <number>'"):
        gsm8k_solution("no final line", "f:3")


def test_score_reports_every_rule_per_dataset():
    task = get_task("math", {"datasets": ["svamp", "aqua"]})
    exs = [Example("q", answer="4.0", meta={"dataset": "svamp"}), Example("q", answer="2", meta={"dataset": "svamp"}),
           Example("q", answer="B", meta={"dataset": "aqua"})]
    got = task.score(["The answer is 4.", "2 + 1 = 3", "The answer is (C)."], exs)
    # "The answer is 4." vs 4.0: LLM-Adapters 4.0 (yes), lm-eval strict no "####" (no), flexible "4" = GSM8K's
    # "4" (yes), BREP "4" in it (yes), any_number yes, math-verify yes; "2 + 1 = 3" vs 2: only BREP and any_number
    # (2 appears); "(C)" vs B: no (lm-eval and math-verify skip letters)
    assert got == pytest.approx({
        "accuracy_llm_adapters": 1 / 3, "accuracy_lm_eval_strict": 0.0, "accuracy_lm_eval_flexible": 0.5,
        "accuracy_brep": 2 / 3, "accuracy_any_number": 2 / 3, "accuracy_math_verify": 0.5,
        "svamp/accuracy_llm_adapters": 0.5, "svamp/accuracy_lm_eval_strict": 0.0,
        "svamp/accuracy_lm_eval_flexible": 0.5, "svamp/accuracy_brep": 1.0, "svamp/accuracy_any_number": 1.0,
        "svamp/accuracy_math_verify": 0.5,
        "aqua/accuracy_llm_adapters": 0.0, "aqua/accuracy_brep": 0.0, "aqua/accuracy_any_number": 0.0})
    single = get_task("math", {"datasets": ["svamp"]}).score(["7"], [Example("q", answer="7")])
    assert single == {"accuracy_llm_adapters": 1.0, "accuracy_lm_eval_strict": 0.0, "accuracy_lm_eval_flexible": 1.0,
                      "accuracy_brep": 1.0, "accuracy_any_number": 1.0, "accuracy_math_verify": 1.0}


@pytest.mark.parametrize("rule, output, gold, expected", [
    # LLM-Adapters evaluate.py: commas removed, the last -?\d+\.?\d*, within 0.001
    ("llm_adapters", "He pays $1,234.50 in total.", "1234.5", True),
    ("llm_adapters", "The answer is 3/4", "0.75", False),  # "a/b" is two numbers there: 4 is last
    ("llm_adapters", "no number", "1", False),
    # letters: the first A-E anywhere, so the capital A of "A farmer" decides
    ("llm_adapters", "A farmer has... the answer is C", "C", False),
    ("llm_adapters", "The answer is (C)", "C", True),
    # lm-eval gsm8k strict-match: the first "#### x", then ",", "$", ".$" removed, string equality
    ("lm_eval_strict", "so 3 boxes. #### 1,072.", "1072", True),
    ("lm_eval_strict", "The answer is 72", "72", False),
    # flexible-extract: the last match of (-?[$0-9.,]{2,})|(-?[0-9]+)
    ("lm_eval_flexible", "He paid $18.00 and then 20.", "20", True),
    ("lm_eval_flexible", "It is 72.0", "72", False),  # string equality: 72.0 is not 72
    ("lm_eval_flexible", "pick (B)", "B", None),
    # math-verify: equivalence of the final answer
    ("math_verify", "The answer is $\\frac{1}{2}$", "0.5", True),
    ("math_verify", "3", "4", False),
    # BREP: the gold as a substring; any_number: the gold equals a number, fraction parts included
    ("brep", "2 + 1 = 3", "2", True),
    ("any_number", "2 + 1 = 3", "2", True),
])
def test_each_rule_on_hand_cases(rule, output, gold, expected):
    from reftx.tasks.math_rules import RULES

    assert RULES[rule](output, gold) is expected


def test_options_are_checked():
    with pytest.raises(ConfigError, match="datasets: must be a non-empty list without repeats"):
        get_task("math", {"datasets": ["svamp", "svamp"]})
    with pytest.raises(ConfigError, match=r"datasets.0: invalid value 'svam' \(did you mean 'svamp'\?\)"):
        get_task("math", {"datasets": ["svam"]})


@needs_data
def test_loaders_match_sources_counts():
    counts = {"gsm8k": 1319, "svamp": 1000, "aqua": 254, "mawps": 238, "multiarith": 600, "addsub": 395,
              "singleeq": 508, "mathqa": 2985, "gsm8k_original": 1319}
    for name, n in counts.items():
        assert len(get_task("math", {"datasets": [name]}).load("test")) == n, name
    train = get_task("math").load("train")
    assert len(train) == 3260 - 3  # 3 records of math_data.json have an empty output
    assert train[0].prompt.startswith("Julia played tag with 16 kids on monday.")
    assert train[0].target.startswith("She played with 16 kids on Monday.") and train[0].gold == "4.0"
    gsm = get_task("math", {"train_set": "gsm8k_original"}).load("train")
    assert len(gsm) == 7473 and gsm[0].gold == "72" and gsm[0].target.endswith("The answer is 72.")
    assert "<<" not in gsm[0].target
    aqua = get_task("math", {"datasets": ["aqua"], "template": "alpaca"}).load("test")[0]
    assert aqua.gold == "A" and aqua.prompt.startswith("Below is an instruction") and aqua.target == ""


@needs_data
def test_subsets_are_fixed_by_seed():
    def pick(seed):
        t = get_task("math", {"datasets": ["mawps", "addsub"], "n_per_dataset": 5, "seed": seed})
        return [(e.meta["dataset"], e.meta["line"]) for e in t.load("test")]

    assert pick(0) == pick(0) and pick(0) != pick(1)
    assert [d for d, _ in pick(0)] == ["mawps"] * 5 + ["addsub"] * 5


def test_malformed_and_missing_files(tmp_path):
    root = tmp_path / "math_llm_adapters" / "SVAMP"
    root.mkdir(parents=True)
    task = get_task("math", {"datasets": ["svamp"]}, data_dir=tmp_path)
    with pytest.raises(DataError, match="data file not found: .*SVAMP/test.json"):
        task.load("test")
    good = {"instruction": "1+1?", "input": "", "output": "", "answer": "2"}
    (root / "test.json").write_text(json.dumps([good, {"instruction": "x", "input": ""}], indent=1))
    with pytest.raises(DataError, match=r"test.json:8 \(record 1\): missing, empty or non-string field\(s\) answer"):
        task.load("test")
    (root / "test.json").write_text(json.dumps([good, dict(good, answer="two")], indent=1))
    with pytest.raises(DataError, match="test.json:8: answer 'two' is neither a number nor a letter A-E"):
        task.load("test")
    (root / "test.json").write_text('[\n{"instruction": "1+1?", "answer": "2"},\n{"instruction": }\n]')
    with pytest.raises(DataError, match="test.json:3: invalid JSON"):
        task.load("test")
    (root / "test.json").write_text("[]")
    with pytest.raises(DataError, match="math: dataset 'svamp' is empty"):
        task.load("test")


def test_hub_source_offline_is_a_clear_error(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    task = get_task("math", {"hub_id": "reftx-test/absent-math"})
    with pytest.raises(DataError, match=r"cannot load 'reftx-test/absent-math' \(split 'train'\) from the "
                                        r"Hugging Face Hub: .*Offline, leave hub_id empty"):
        task.load("train")


@needs_data
def test_tiny_train_and_eval_on_real_math(tiny_dir, tmp_path):
    """BREP's config end to end: prefix-truncated training on 8 real problems, generated answers
    to 2 SVAMP + 2 MAWPS + 2 AddSub problems scored by both rules."""
    args = ["run", str(REPO / "experiments" / "math" / "math_brep.yaml"), f"model.name={tiny_dir}",
            f"output_dir={tmp_path}", "task.n_train=8", "task.options.n_per_dataset=2", "train.max_steps=2",
            "train.batch_size=4", "train.max_length=96", "task.overlong=truncate", "eval.max_new_tokens=6",
            "eval.show_examples=1", "--no-progress"]  # 96 tokens cut every example: truncation chosen
    assert cli.main(args) == 0
    results = json.loads((tmp_path / "math_brep" / "results.json").read_text())
    assert results["n_train"] == 8 and results["n_eval"] == 6 and results["train"]["steps"] == 2
    from reftx.tasks.math_rules import RULES

    names = {f"{p}accuracy_{r}" for p in ("", "svamp/", "mawps/", "addsub/") for r in RULES}
    assert set(results["metrics"]) == names
    samples = [json.loads(x) for x in (tmp_path / "math_brep" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and "before" in samples[0]
    for name, rule in RULES.items():  # the metrics are those of the samples
        assert results["metrics"][f"accuracy_{name}"] == pytest.approx(
            sum(bool(rule(s["after"], s["gold"])) for s in samples) / 6)


def test_synthetic_problems_are_gsm8k_format_and_checked_by_hand(monkeypatch):
    from reftx.tasks import math_synthetic
    from reftx.tasks.math_synthetic import problem, problems

    p = problem("train:0", 0, steps=2)  # fixed by (seed, index): the same on every machine
    assert p.question == ("Lea buys 3 boxes of apples. Each box holds 5 apples. Then Lea loses 3 of them. "
                          "How many apples does Lea have now?")
    assert p.answer == ("Lea buys 3 * 5 = <<3*5=15>>15 apples.\n"
                        "After that Lea has 15 - 3 = <<15-3=12>>12 apples.\n#### 12")
    assert p.gold == 12
    for q in problems("train:0", 300, steps=2, top=9):  # every annotation evaluates to its result
        for expr, result in re.findall(r"<<([^=]+)=(\d+)>>", q.answer):
            assert eval(expr) == int(result) >= 0, q.answer  # noqa: S307 (digits and + - * only)
        assert q.answer.endswith(f"#### {q.gold}") and result == str(q.gold)
    # distinct questions, and none of an excluded set
    some = problems("train:0", 50, steps=1)
    assert len({q.question for q in some}) == 50
    rest = problems("test:0", 50, steps=1, exclude=frozenset(q.question for q in some))
    assert not {q.question for q in rest} & {q.question for q in some}
    for name, value in [("NAMES", ("Ana",)), ("ITEMS", ("apples",)), ("OPS", ("add",))]:
        monkeypatch.setattr(math_synthetic, name, value)  # a space of 2 problems: 2 + 1, 2 + 2
    assert sorted(q.gold for q in problems("x", 2, steps=1, top=2)) == [3, 4]
    with pytest.raises(ValueError, match="only 2 distinct problems with steps=1, top=2; ask for fewer"):
        problems("x", 3, steps=1, top=2)
    task = get_task("math", {"train_set": "synthetic", "synthetic_steps": 1, "synthetic_max": 2, "synthetic_size": 3})
    with pytest.raises(ConfigError, match="synthetic_size: 3 is too many: only 2 distinct problems"):
        task.load("train")


def test_synthetic_splits_through_the_math_task():
    task = get_task("math", {"train_set": "synthetic", "datasets": ["synthetic"], "synthetic_steps": 1,
                             "synthetic_size": 300})
    train, test = task.load("train"), task.load("test")
    assert len(train) == len(test) == 300
    assert not {e.prompt for e in train} & {e.prompt for e in test}  # held-out questions
    ex = train[0]  # read like GSM8K's answers: no calculator annotations, "The answer is N."
    assert ex.target == f"{ex.target.splitlines()[0]}\nThe answer is {ex.gold}." and "<<" not in ex.target
    assert task.reward(f"so it is {ex.gold}", ex, 0.1) == 1.0 and task.reward("no idea", ex, 0.1) == 0.0
    assert test[0].meta == {"dataset": "synthetic", "file": "synthetic-test", "line": 1}
    for bad, msg in [({"synthetic_steps": 3}, "synthetic_steps: must be 1 or 2, got 3"),
                     ({"synthetic_max": 1}, "synthetic_max: must be >= 2, got 1"),
                     ({"synthetic_size": 0}, "synthetic_size: must be >= 1, got 0")]:
        with pytest.raises(ConfigError, match=msg):
            get_task("math", bad)
