"""Answer rules against their reference code, on hand-made outputs (issue 26, metric deviations 1-3):
lm-eval's GSM8K exact match with LLM-Adapters' float-written golds, BREP's substring rule, and
pyreft's commonsense rule beside LLM-Adapters'."""
from __future__ import annotations

import pytest

import reftx.tasks  # noqa: F401  (registers the zoo)
from reftx.core.errors import ConfigError
from reftx.data.examples import Example
from reftx.eval.metrics import get_metric, score_metrics
from reftx.eval.task import default_data_dir, get_task
from reftx.tasks.commonsense import extract_label, pyreft_answer
from reftx.tasks.math_reasoning import FOLDERS
from reftx.tasks.math_rules import RULES, lm_eval_gold

DATA = default_data_dir()
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "math_llm_adapters").is_dir(),
                                reason="shared data not present")


# -- 1. lm-eval gsm8k: the gold as GSM8K writes it ------------------------------------------------
@pytest.mark.parametrize("gold, normalised", [("8.0", "8"), ("1,000", "1000"), ("-3", "-3"), ("0.5", "0.5"),
                                              ("72", "72"), ("1,000.00", "1000"), ("$5.", "5")])
def test_lm_eval_gold(gold, normalised):
    assert lm_eval_gold(gold) == normalised


@pytest.mark.parametrize("gold, output, strict, flexible", [
    ("8.0", "4 + 4 = 8.\n#### 8", True, True),          # the perfect answer: 1 (it scored 0 before the fix)
    ("8.0", "4 + 5 = 9.\n#### 9", False, False),
    ("8.0", "The answer is 8.", False, True),            # no "#### ": strict-match finds nothing
    ("8.0", "#### 8.0", False, False),                   # lm-eval's string equality: "8.0" is not GSM8K's "8"
    ("1,000", "#### 1,000", True, True),                 # "," removed from both
    ("1,000", "It costs $1,000.\n#### 1000", True, True),
    ("1,000", "#### 100", False, False),
    ("-3", "It fell to -3.\n#### -3", True, True),
    ("-3", "It fell 3.\n#### 3", False, False),
    ("0.5", "Half, so 0.5.\n#### 0.5", True, True),
    ("0.5", "#### 0.50", False, False),                  # string equality: "0.50" is not "0.5"
    ("0.5", "#### .5", False, False),
])
def test_lm_eval_rules_on_llm_adapters_golds(gold, output, strict, flexible):
    assert (RULES["lm_eval_strict"](output, gold), RULES["lm_eval_flexible"](output, gold)) == (strict, flexible)


def natural(gold: str) -> str:
    """How a solver writes a gold number: a whole number without ".0", else Python's shortest repr."""
    value = float(gold)
    return str(int(value)) if value.is_integer() else repr(value)


@needs_data
@pytest.mark.parametrize("dataset", sorted(FOLDERS))
def test_a_perfect_solver_scores_one_on_every_llm_adapters_set(dataset):
    """A solver that writes each gold as a person would ("The answer is 8.\\n#### 8") scores 1.000 under
    every rule that applies; before the fix lm-eval's rules gave 0.000 on SVAMP, MultiArith and gsm8k."""
    examples = get_task("math", {"datasets": [dataset]}).load("test")
    letters = dataset in ("aqua", "mathqa")
    preds = [f"The answer is {e.gold}." if letters else f"The answer is {natural(e.gold)}.\n#### {natural(e.gold)}"
             for e in examples]
    names = [f"accuracy_{r}" for r in ("llm_adapters", "lm_eval_strict", "lm_eval_flexible", "brep", "any_number")]
    got = score_metrics(names, preds, examples)
    expected = {n: 1.0 for n in names if not (letters and "lm_eval" in n)}  # lm-eval's rules skip letters
    assert got == expected


# -- 2. BREP: Prefix/make_train.py eval_one_data (= Prefix/eval.py at b6521ac) ---------------------
@pytest.mark.parametrize("output, gold, brep, any_number", [
    ("She has 15 apples.", "5", True, False),            # a substring for BREP, not a number equal to 5
    ("The answer is 120.", "12", True, False),
    ("The answer is 8.", "8.0", True, True),             # "8.0" is not in it, but str(int(8.0)) = "8" is
    ("It costs 1,200 dollars", "1200.0", True, True),    # |n| >= 1000: f"{n:,}" = "1,200"
    ("It costs 1 200", "1200", False, False),
    ("Half: 0.5", "0.50", True, True),                   # a fractional gold: str(float("0.50")) = "0.5"
    ("the answer is 1/2", "0.5", False, True),           # BREP reads no fractions
    ("4 + 1 = 5. The answer is 5.", "4", True, True),
    ("it fell to 3", "-3", False, False),
    ("The answer is (C).", "C", True, True),
    ("The answer is (C). A farmer", "A", True, False),   # a letter gold: any capital A
    ("the answer is (c)", "C", False, True),             # case-sensitive substring
])
def test_brep_rule_and_the_renamed_lenient_rule(output, gold, brep, any_number):
    assert (RULES["brep"](output, gold), RULES["any_number"](output, gold)) == (brep, any_number)


def test_brep_lenient_is_renamed_not_kept():
    """No shipped experiment or result file named it: the old name is gone, with a pointer to the new."""
    assert "brep_lenient" not in RULES
    with pytest.raises(ConfigError, match=r"unknown metric 'accuracy_brep_lenient' \(did you mean 'accuracy_brep'\?\)"):
        get_metric("accuracy_brep_lenient")


# -- 3. commonsense: LLM-Adapters' first label and pyreft's exact match after the phrase -----------
TF = ["true", "false"]


@pytest.mark.parametrize("output, options, gold, llm_adapters, pyreft", [
    ("the correct answer is true", TF, "true", True, True),
    ("the correct answer is true.", TF, "true", True, False),    # pyreft: "true." != "true"
    ("true, the correct answer is false", TF, "false", False, True),  # first label vs the text after the phrase
    ("the correct answer is true\nthe correct answer is true", TF, "true", True, False),
    ("The correct answer is true", TF, "true", True, False),      # pyreft's trigger is case-sensitive
    ("answer: true", TF, "true", True, False),                    # no trigger: pyreft reads ""
    ("the correct answer is solution12", ["solution1", "solution2"], "solution1", True, False),
    ("the correct answer is  answer3 ", ["answer1", "answer2", "answer3"], "answer3", True, True),
    ("the correct answer is option1", ["option1", "option2"], "option2", False, False),
])
def test_commonsense_rules_where_they_disagree(output, options, gold, llm_adapters, pyreft):
    assert (extract_label(output, options) == gold, pyreft_answer(output) == gold) == (llm_adapters, pyreft)


def test_commonsense_reports_both_rules():
    ex = [Example("q", answer=g, meta={"options": TF}) for g in ("true", "false", "true", "true")]
    preds = ["the correct answer is true.", "true, the correct answer is false", "the correct answer is true",
             "answer: true"]
    assert get_task("commonsense").score(preds, ex) == pytest.approx(
        {"accuracy": 3 / 4, "accuracy_pyreft": 2 / 4, "answered": 4 / 4})
    assert [pyreft_answer(p) for p in preds] == ["true.", "false", "true", None]
    loglik = get_task("commonsense", {"scoring": "loglik"})  # its predictions are "the correct answer is <label>"
    assert loglik.score(["the correct answer is true", "the correct answer is true"], ex[:2]) == \
        pytest.approx({"accuracy": 0.5, "accuracy_pyreft": 0.5})
