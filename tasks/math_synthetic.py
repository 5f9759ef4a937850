"""Procedural GSM8K-format word problems: one or two arithmetic steps on small whole numbers.

Why: reinforced finetuning (METHODS.md §8) learns only from groups whose sampled answers differ in
reward. The CPU-sized default model (SmolLM2-135M-Instruct) solves about 2% of GSM8K and of
LLM-Adapters' AddSub/MultiArith, so nearly every group is all-wrong and GRPO's advantages are zero
(docs/results.md, "Reasoning objectives"). These problems are in GSM8K's format (a ``question``, and
an ``answer`` whose worked lines carry calculator annotations ``<<3+4=7>>`` and end with ``#### 7``,
Cobbe et al. 2021) but easy enough that a small model solves a fair share of them, so a study of the
objectives can run on a CPU. They are not GSM8K: results on them say nothing about GSM8K accuracy.

Every problem is a pure function of ``(seed, index)``: the same seed gives the same problems on
every machine, and the train and test splits draw from different seeds with any test question that
also occurs in the train split left out.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ("Ana", "Ben", "Carla", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kemal", "Lea",
         "Mina", "Noah", "Olga", "Pablo", "Rita", "Sam", "Tara", "Umar")
ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "stamps", "shells", "cards",
         "balloons")
OPS = ("add", "sub", "mul")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # GSM8K style: worked lines with <<a+b=c>> annotations, last line "#### c"
    gold: int


def _step(op: str, a: int, b: int) -> tuple[str, int]:
    sign = {"add": "+", "sub": "-", "mul": "*"}[op]
    c = {"add": a + b, "sub": a - b, "mul": a * b}[op]
    return f"{a} {sign} {b} = <<{a}{sign}{b}={c}>>{c}", c


def _first(rng: random.Random, op: str, name: str, item: str, top: int) -> tuple[str, str, int]:
    """(sentence, worked line, value) of the first step."""
    if op == "mul":
        boxes, each = rng.randint(2, 9), rng.randint(2, 9)
        line, c = _step("mul", boxes, each)
        return (f"{name} buys {boxes} boxes of {item}. Each box holds {each} {item}.",
                f"{name} buys {line} {item}.", c)
    a, b = rng.randint(2, top), rng.randint(1, top)
    if op == "sub":
        a, b = max(a, b) + 1, min(a, b)
        line, c = _step("sub", a, b)
        return (f"{name} has {a} {item}. {name} gives {b} {item} to a friend.",
                f"{name} has {line} {item} left.", c)
    line, c = _step("add", a, b)
    return f"{name} has {a} {item}. {name} finds {b} more {item}.", f"{name} has {line} {item}.", c


def _second(rng: random.Random, op: str, name: str, item: str, have: int, top: int) -> tuple[str, str, int]:
    if op == "sub":
        b = rng.randint(1, max(1, have - 1))
        line, c = _step("sub", have, b)
        return f"Then {name} loses {b} of them.", f"After that {name} has {line} {item}.", c
    if op == "mul":
        k = rng.randint(2, 4)
        line, c = _step("mul", have, k)
        return f"Then {name}'s collection grows to {k} times as many.", f"Then {name} has {line} {item}.", c
    b = rng.randint(1, top)
    line, c = _step("add", have, b)
    return f"Then {name} gets {b} more {item}.", f"Then {name} has {line} {item}.", c


def problem(seed: str, index: int, steps: int = 1, top: int = 20) -> Problem:
    """Problem ``index`` of the stream ``seed``: ``steps`` (1 or 2) operations among add, sub, mul,
    with added numbers up to ``top`` (a subtraction's first number up to ``top`` + 1; mul: 2-9 per
    factor, then x2-x4)."""
    rng = random.Random(f"{seed}:{index}")
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    text, line, value = _first(rng, rng.choice(OPS), name, item, top)
    lines = [line]
    for _ in range(steps - 1):
        more, line, value = _second(rng, rng.choice(OPS), name, item, value, top)
        text, lines = f"{text} {more}", lines + [line]
    question = f"{text} How many {item} does {name} have now?"
    return Problem(question, "\n".join(lines + [f"#### {value}"]), value)


def problems(seed: str, n: int, steps: int = 1, top: int = 20, exclude: frozenset[str] = frozenset()) -> list[Problem]:
    """``n`` distinct problems of the stream ``seed`` (in index order), none whose question is in ``exclude``."""
    out: list[Problem] = []
    seen = set(exclude)
    index = 0
    while len(out) < n:
        p = problem(seed, index, steps, top)
        index += 1
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
        if index > 50 * n + 1000:
            raise ValueError(f"only {len(out)} distinct problems with steps={steps}, top={top}; ask for fewer")
    return out


__all__ = ["Problem", "problem", "problems"]
