"""Final-answer rules of the math task, each named after (and written from) its reference.

``RULES[name](output, gold) -> bool | None``; None where the rule does not apply (the lm-eval and
math-verify rules are defined for numeric answers only, so A-E golds are not counted for them).

* ``llm_adapters``: LLM-Adapters ``evaluate.py`` (``extract_answer_number`` /
  ``extract_answer_letter``). Numbers: commas removed, the last match of ``-?\\d+\\.?\\d*`` as a
  float (none: wrong), correct within 0.001 of the gold. Letters: the *first* A-E anywhere in the
  stripped output (a capital "A" in "A farmer ..." counts, as there), equal to the gold.
* ``lm_eval_strict`` / ``lm_eval_flexible``: lm-evaluation-harness ``lm_eval/tasks/gsm8k/gsm8k.yaml``
  (EleutherAI/lm-evaluation-harness 4e7e0d4). strict-match (lines 33-37): the first
  ``#### (\\-?[0-9\\.\\,]+)``; flexible-extract (lines 38-43): the last match of
  ``(-?[$0-9.,]{2,})|(-?[0-9]+)`` (``lm_eval/filters/extraction.py`` ``RegexFilter``, lines 47-58: the
  first non-empty group, stripped; no match gives "[invalid]"); then ``exact_match`` (yaml lines 13-22,
  ``lm_eval/api/metrics.py`` ``exact_match_hf_evaluate``, lines 210-240): the regexes ``,``, ``\\$``,
  ``(?s).*#### `` and ``\\.$`` removed in turn from both prediction and gold, both lowercased, string
  equality ("72.0" is not "72"). The gold: lm-eval's GSM8K target is the whole answer, which those
  regexes reduce to the integer after "#### " ("...#### 1,072" -> "1072"). LLM-Adapters wrote its golds
  through a float ("8.0"); :func:`lm_eval_gold` writes them as GSM8K does (a whole number without
  ".0") before the same normalisation, the one step lm-eval never needs (without it a perfect
  "#### 8" scored 0 against "8.0").
* ``brep``: BREP's rule exactly (Liang et al. 2025; LiangThree/BREP ``Prefix/make_train.py``
  ``eval_one_data``, lines 71-90, the same test as ``Prefix/eval.py`` lines 177-197 at commit b6521ac,
  deleted in d16e01e): a *substring* test. Correct when the gold string is in the output, or, for a
  gold whose float is whole, ``str(int)`` or (|n| >= 1000) its comma-grouped form ``f"{n:,}"`` is;
  for a fractional gold ``str(float(gold))`` ("0.50" -> "0.5"). So gold 5 is correct in "She has 15
  apples.". A gold that is not a float (a letter A-E) is correct when it is a substring (BREP applies
  this rule to MathQA too): any capital "A" counts for gold A. Only the response is searched: BREP
  decodes prompt + response and keeps what follows the first "assistant" (eval.py lines 73-87), which
  is the response.
* ``any_number``: reftx's own lenient rule (reported as ``brep_lenient`` before BREP's code was read):
  any *number* in the output, a fraction's parts included, equals the gold within 1e-3 (values, not
  substrings: 5 is not in "15"); for letters, any letter marked as an answer ("answer is C", "(C)").
* ``math_verify``: Hugging Face's ``math-verify`` (``parse`` both, ``verify(gold, prediction)``):
  equivalence of the final answer (fractions, percentages, LaTeX).
"""
from __future__ import annotations

import re
from collections.abc import Callable

LLM_ADAPTERS_NUMBER = re.compile(r"-?\d+\.?\d*")
LLM_ADAPTERS_LETTER = re.compile(r"A|B|C|D|E")
LM_EVAL_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
LM_EVAL_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
LM_EVAL_IGNORE = [re.compile(p) for p in (r",", r"\$", r"(?s).*#### ", r"\.$")]
LETTER_GOLD = re.compile(r"[A-E]")
TOLERANCE = 1e-3


def llm_adapters(output: str, gold: str) -> bool:
    if LETTER_GOLD.fullmatch(gold):
        found = LLM_ADAPTERS_LETTER.findall(output.strip())
        return bool(found) and found[0] == gold
    found = LLM_ADAPTERS_NUMBER.findall(output.replace(",", ""))
    pred = float(found[-1]) if found else float("inf")
    return abs(float(gold) - pred) <= TOLERANCE


def _lm_eval_normalise(text: str) -> str:
    for pattern in LM_EVAL_IGNORE:
        text = pattern.sub("", text)
    return text.lower()


_WHOLE = re.compile(r"(-?\d+)\.0+")


def lm_eval_gold(gold: str) -> str:
    """The gold as lm-eval's exact match compares a GSM8K gold: lm-eval's normalisation (the
    regexes removed, lowercased), then a whole number written without its zero fraction as GSM8K
    writes it ("8.0" -> "8", "1,000" -> "1000", "-3" and "0.5" unchanged)."""
    text = _lm_eval_normalise(gold.strip())
    whole = _WHOLE.fullmatch(text)
    return whole.group(1) if whole else text


def _lm_eval_match(pattern: re.Pattern, output: str, gold: str, select: int) -> bool | None:
    if LETTER_GOLD.fullmatch(gold):
        return None
    found = pattern.findall(output)
    if not found:
        return False  # lm-eval's fallback "[invalid]" never equals a number
    match = found[select]
    if isinstance(match, tuple):  # several groups: the first non-empty one
        match = next((m for m in match if m), "")
    return _lm_eval_normalise(match.strip()) == lm_eval_gold(gold)


def lm_eval_strict(output: str, gold: str) -> bool | None:
    return _lm_eval_match(LM_EVAL_STRICT, output, gold, 0)


def lm_eval_flexible(output: str, gold: str) -> bool | None:
    return _lm_eval_match(LM_EVAL_FLEXIBLE, output, gold, -1)


def math_verify(output: str, gold: str) -> bool | None:
    if LETTER_GOLD.fullmatch(gold):
        return None
    from math_verify import parse, verify

    return bool(verify(parse(gold), parse(output)))


_NUM = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
NUMBER = re.compile(rf"(?<![\w.])(-?)({_NUM})(?:/({_NUM}))?")
_ANSWER_LETTER = re.compile(r"answer(?: is|:)\s*:?\s*\(?([A-E])(?![A-Za-z])", re.IGNORECASE)
_MARKED_LETTER = re.compile(r"\(([A-E])\)")


def _value(text: str) -> float:
    return float(text.replace(",", ""))


def numbers(text: str) -> list[tuple[float, ...]]:
    """Each number in ``text`` as a tuple: (value,) or, for "a/b", (a/b, a, b) (b = 0: (a, b))."""
    out = []
    for sign, a, b in NUMBER.findall(text):
        x = _value(a) * (-1 if sign else 1)
        if b:
            y = _value(b)
            out.append((x / y, x, y) if y else (x, y))
        else:
            out.append((x,))
    return out


def extract_number(text: str) -> float | None:
    """The strict rule's prediction: the value of the last number in ``text`` (None if there is none)."""
    found = numbers(text)
    return found[-1][0] if found else None


def number_correct(text: str, gold: float) -> tuple[bool, bool]:
    """(strict, lenient) correctness of ``text`` against a numeric gold answer."""
    pred = extract_number(text)
    strict = pred is not None and abs(pred - gold) <= TOLERANCE
    lenient = any(abs(v - gold) <= TOLERANCE for n in numbers(text) for v in n)
    return strict, lenient


def extract_letter(text: str) -> str | None:
    """The strict rule's prediction for A-E answers (see the module docstring)."""
    after = _ANSWER_LETTER.findall(text)
    if after:
        return after[-1].upper()
    marked = _MARKED_LETTER.search(text)
    return marked.group(1) if marked else None


def letter_correct(text: str, gold: str) -> tuple[bool, bool]:
    """(strict, lenient) correctness of ``text`` against a letter gold answer."""
    marked = {x.upper() for x in _ANSWER_LETTER.findall(text)} | set(_MARKED_LETTER.findall(text))
    return extract_letter(text) == gold, gold in marked


def is_correct(text: str, gold: str) -> tuple[bool, bool]:
    """(strict, lenient) for any gold answer: a letter A-E, else a number."""
    if LETTER_GOLD.fullmatch(gold):
        return letter_correct(text, gold)
    return number_correct(text, _value(gold))


def any_number(output: str, gold: str) -> bool:
    return is_correct(output, gold)[1]


def brep(output: str, gold: str) -> bool:
    if gold in output:
        return True
    try:
        value = float(gold)
    except ValueError:  # BREP's bare except: a letter gold is only the substring test above
        return False
    if not value.is_integer():  # there `formatted_answer` is then unbound: only str(float) can match
        return str(value) in output
    n = int(value)
    return str(n) in output or (f"{n:,}" if abs(n) >= 1000 else str(n)) in output


RULES: dict[str, Callable[[str, str], bool | None]] = {
    "llm_adapters": llm_adapters, "lm_eval_strict": lm_eval_strict, "lm_eval_flexible": lm_eval_flexible,
    "brep": brep, "any_number": any_number, "math_verify": math_verify,
}

__all__ = ["RULES", "any_number", "brep", "llm_adapters", "lm_eval_flexible", "lm_eval_gold", "lm_eval_strict",
           "math_verify"]
