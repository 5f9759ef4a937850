"""Final-answer rules of the math task, each named after (and written from) its reference.

``RULES[name](output, gold) -> bool | None``; None where the rule does not apply (the lm-eval and
math-verify rules are defined for numeric answers only, so A-E golds are not counted for them).

* ``llm_adapters``: LLM-Adapters ``evaluate.py`` (``extract_answer_number`` /
  ``extract_answer_letter``). Numbers: commas removed, the last match of ``-?\\d+\\.?\\d*`` as a
  float (none: wrong), correct within 0.001 of the gold. Letters: the *first* A-E anywhere in the
  stripped output (a capital "A" in "A farmer ..." counts, as there), equal to the gold.
* ``lm_eval_strict`` / ``lm_eval_flexible``: lm-evaluation-harness ``lm_eval/tasks/gsm8k/gsm8k.yaml``.
  strict-match: the first ``#### (\\-?[0-9\\.\\,]+)``; flexible-extract: the last match of
  ``(-?[$0-9.,]{2,})|(-?[0-9]+)``; then ``exact_match`` with ignore_case and the regexes
  ``,``, ``\\$``, ``(?s).*#### `` and ``\\.$`` removed from both prediction and gold (string
  equality: "72.0" is not "72").
* ``brep_lenient``: BREP's rule (Liang et al. 2025): the gold appears anywhere in the output: any
  number, a fraction's parts included, equals it within 1e-3; for letters, any letter marked as an
  answer ("answer is C", "(C)").
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


def _lm_eval_match(pattern: re.Pattern, output: str, gold: str, select: int) -> bool | None:
    if LETTER_GOLD.fullmatch(gold):
        return None
    found = pattern.findall(output)
    if not found:
        return False  # lm-eval's fallback "[invalid]" never equals a number
    match = found[select]
    if isinstance(match, tuple):  # several groups: the first non-empty one
        match = next((m for m in match if m), "")
    return _lm_eval_normalise(match.strip()) == _lm_eval_normalise(gold.strip())


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


def brep_lenient(output: str, gold: str) -> bool:
    return is_correct(output, gold)[1]


RULES: dict[str, Callable[[str, str], bool | None]] = {
    "llm_adapters": llm_adapters, "lm_eval_strict": lm_eval_strict, "lm_eval_flexible": lm_eval_flexible,
    "brep_lenient": brep_lenient, "math_verify": math_verify,
}

__all__ = ["RULES", "brep_lenient", "llm_adapters", "lm_eval_flexible", "lm_eval_strict", "math_verify"]
