"""math: arithmetic word problems, scored on the final answer (METHODS.md §3 and §7).

Data (``{data_dir}``, see shared/data/SOURCES.md):
* ``math_llm_adapters/<Name>/test.json``: the LLM-Adapters test sets (Hu et al. 2023), JSON arrays of
  instruction/input/output/answer; the gold is ``answer`` (a number such as "4.0", or a letter A-E
  for AQuA and MathQA). Their ``output`` is a model's answer, never trained on.
* ``math_llm_adapters/math_data.json``: 3,260 worked solutions (instruction -> output) to train on;
  the 3 records with an empty ``output`` are left out of the train split (3,257 examples), and the
  leading "A: " of the solutions is dropped from the targets.
* ``gsm8k/{train,test}.jsonl``: the original GSM8K (Cobbe et al. 2021), ``question`` and an
  ``answer`` whose last line is ``#### 72``; as a target the calculator annotations ``<<48/2=24>>``
  are removed and the last line becomes "The answer is 72." (math_data.json's style).
* ``synthetic`` (no file): procedural GSM8K-format problems of ``synthetic_steps`` small arithmetic
  steps (tasks/math_synthetic.py), read like GSM8K's answers; ``synthetic_size`` problems per split,
  the test split's drawn from another seed with every question of the train split left out. Easy
  enough for a small model to solve a fair share (for CPU-sized studies of reinforced finetuning);
  they are not GSM8K.

Guidance (for objectives that compare the response with and without it, reftx.train.objectives.nlft),
``options.guidance``: ``solution`` (default) gives the whole reference solution, as NLFT's released
code guides with the standard answer (Julia-LiuJ/NLFT finetune_unlikelihood_dynamic_correct.py:470-474,
worded for a guidance in front of the question); ``final_answer`` gives "Hint: the correct final
answer is <gold>." (reftx before issue 26: meant for responses that are the reference solution
itself, which the whole solution would make salient by copying). An example without a solution
(a test example of LLM-Adapters' sets) gets the final answer.

Splits: ``train`` (``train_set``) and ``test`` (every dataset in ``datasets``, each cut to
``n_per_dataset`` examples by a draw fixed by ``seed``). Evaluation generates greedily (batched,
left-padded, ``eval.max_new_tokens``); a BREP-style schedule (``positions: {generated: n,
prompt: true}``) is applied by the engine during that generation.

Answer rules: every rule of ``tasks/math_rules.py``, each named after its reference, reported as
``accuracy_<rule>`` (and per dataset as ``<dataset>/accuracy_<rule>`` when there are several):
``llm_adapters`` (LLM-Adapters' evaluate.py), ``lm_eval_strict`` and ``lm_eval_flexible``
(lm-evaluation-harness gsm8k's two filters, the gold written as GSM8K writes it: "8.0" is "8"),
``brep`` (BREP's substring test: gold 5 counts in "15"), ``any_number`` (reftx's lenient rule: the
gold equals any number in the output) and ``math_verify`` (the math-verify package). The lm-eval
and math-verify rules count numeric answers only. Before these rules reftx reported
``accuracy_strict`` (its own last-number rule, which read "a/b" as its value and took AQuA's letter
after "answer is") and ``accuracy_lenient`` (= ``any_number``, later reported as ``brep_lenient``).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from reftx.core.errors import ConfigError, DataError
from reftx.eval.metrics import Metric, mean_float32, register_metric, score_metrics
from reftx.data.examples import Example
from reftx.eval.task import Task, read_jsonl, register_task, require_keys

from ._llm_adapters import Record, Template, read_file, read_hub
from .math_rules import LETTER_GOLD, RULES, extract_letter, extract_number, is_correct, numbers  # noqa: F401  (is_correct, numbers: public here too)
from .math_rules import _value
from .math_synthetic import problems as synthetic_problems

# dataset name -> folder under math_llm_adapters/ (LLM-Adapters' spelling)
FOLDERS = {"gsm8k": "gsm8k", "svamp": "SVAMP", "mawps": "mawps", "aqua": "AQuA", "addsub": "AddSub",
           "multiarith": "MultiArith", "singleeq": "SingleEq", "mathqa": "mathqa"}
Dataset = Literal["gsm8k", "svamp", "mawps", "aqua", "addsub", "multiarith", "singleeq", "mathqa", "gsm8k_original",
                  "synthetic"]

_GSM_CALC = re.compile(r"<<[^>]*>>")
RULE_DOCS = {  # the first line of each accuracy_<rule> metric's doc (details: tasks/math_rules.py)
    "llm_adapters": "Math accuracy by LLM-Adapters' evaluate.py: the last number within 0.001, or the first A-E.",
    "lm_eval_strict": "Math accuracy by lm-eval gsm8k's strict-match: the first '#### <number>' equals the gold as GSM8K writes it (8.0 is 8; numeric golds only).",
    "lm_eval_flexible": "Math accuracy by lm-eval gsm8k's flexible-extract: the last number equals the gold as GSM8K writes it (8.0 is 8; numeric golds only).",
    "brep": "Math accuracy by BREP's rule: the gold (or its integer, or 1,000-grouped form) as a substring of the output.",
    "any_number": "Math accuracy by reftx's lenient rule: any number in the output equals the gold (within 0.001).",
    "math_verify": "Math accuracy by math-verify: the final answer's equivalence (numeric golds only).",
}


def rule_metric(rule: str) -> Metric:
    """Register ``accuracy_<rule>``: the share of outputs that ``math_rules.RULES[rule]`` marks correct,
    over the examples the rule applies to (float32 mean, as reported before metrics were objects)."""
    judge = RULES[rule]

    def compute(prediction: str, example: Example) -> float | None:
        ok = judge(prediction, str(example.gold))
        return None if ok is None else float(ok)

    compute.__qualname__ = f"accuracy_{rule}"
    return register_metric(f"accuracy_{rule}", compute, aggregate=mean_float32, doc=RULE_DOCS[rule])


ACCURACY = tuple(rule_metric(rule).name for rule in RULES)  # accuracy_llm_adapters, ...


def gsm8k_solution(answer: str, where: str) -> tuple[str, str]:
    """(target text, gold number) of an original GSM8K answer ("...\\n#### 72")."""
    body, sep, final = answer.rpartition("####")
    gold = final.strip().replace(",", "")
    if not sep or not re.fullmatch(r"-?\d+(?:\.\d+)?", gold):
        raise DataError(f"{where}: the answer does not end with '#### <number>'")
    return f"{_GSM_CALC.sub('', body).strip()}\nThe answer is {gold}.", gold


def guidance(gold: str, solution: str = "", kind: str = "final_answer") -> str:
    """The natural-language guidance of an example (see the module docstring): the reference
    ``solution`` (kind solution, when there is one) or the final answer ``gold``."""
    if kind == "solution" and solution.strip():
        return (f"Assuming you are a math expert, the standard answer to the question below is:\n{solution.strip()}\n"
                "Please refer to the standard answer and give your answer.")
    return f"Hint: the correct final answer is {gold}."


@register_task("math")
class MathReasoning(Task):
    """Math word problems. Metrics: accuracy_<rule> for each answer rule (see the module docstring)."""

    @dataclass(frozen=True)
    class Options:
        datasets: list[Dataset] = field(default_factory=lambda: ["svamp"])  # test split: these sets (gsm8k_original: gsm8k/test.jsonl; synthetic: procedural GSM8K-format problems)
        train_set: Literal["math_data", "gsm8k_original", "synthetic"] = "math_data"  # train split: math_data.json, gsm8k/train.jsonl or procedural GSM8K-format problems
        synthetic_steps: int = 2  # synthetic problems: arithmetic steps per problem (1 or 2)
        synthetic_max: int = 20  # synthetic problems: largest added number (a subtraction's first number is at most one more; products: 2-9 times 2-9, then x2-x4)
        synthetic_size: int = 1000  # synthetic problems generated per split (before n_train / n_per_dataset cut them)
        n_per_dataset: int | None = None  # test examples drawn from each dataset (fixed by seed); null: all
        seed: int = 0  # seed of the per-dataset test subsets
        template: Template = "plain"  # prompt: plain (the question) or alpaca (the LLM-Adapters/ReFT prompt)
        hub_id: str = ""  # a Hub dataset with LLM-Adapters columns: its train/test splits replace the local files (online only)
        guidance: Literal["solution", "final_answer"] = "solution"  # Example.guidance (train.objective: nlft): the whole reference solution (NLFT's released code) or "Hint: the correct final answer is N."
        reward_rule: Literal["llm_adapters", "lm_eval_strict", "lm_eval_flexible", "brep", "any_number", "math_verify"] = "llm_adapters"  # the answer rule of the reward of sampling objectives (train.objective: grpo), one of the accuracy rules

        def __post_init__(self) -> None:
            if not self.datasets or len(set(self.datasets)) != len(self.datasets):
                raise ConfigError("datasets", f"must be a non-empty list without repeats, got {self.datasets}")
            if self.n_per_dataset is not None and self.n_per_dataset < 1:
                raise ConfigError("n_per_dataset", f"must be >= 1 (or null), got {self.n_per_dataset}")
            if self.synthetic_steps not in (1, 2):
                raise ConfigError("synthetic_steps", f"must be 1 or 2, got {self.synthetic_steps}")
            if self.synthetic_max < 2:
                raise ConfigError("synthetic_max", f"must be >= 2, got {self.synthetic_max}")
            if self.synthetic_size < 1:
                raise ConfigError("synthetic_size", f"must be >= 1, got {self.synthetic_size}")

    splits = ("train", "test")
    metrics = ACCURACY

    def load(self, split: str) -> list[Example]:
        if split == "train":
            if self.options.hub_id:
                records = [r for r in read_hub(self.options.hub_id, "train") if r.output.strip()]
                return [self._example(r, "hub", train=True) for r in records]
            if self.options.train_set == "gsm8k_original":
                return self._gsm8k(self.data_dir / "gsm8k" / "train.jsonl")
            if self.options.train_set == "synthetic":
                return self._synthetic("train")
            path = self.data_dir / "math_llm_adapters" / "math_data.json"
            return [self._example(r, "math_data", train=True) for r in read_file(path) if r.output.strip()]
        names = ["hub"] if self.options.hub_id else self.options.datasets
        out: list[Example] = []
        for name in names:
            data = self._test_set(name)
            if not data:
                raise DataError(f"math: dataset {name!r} is empty")
            n = self.options.n_per_dataset
            if n is not None and n < len(data):
                idx = sorted(random.Random(f"{self.options.seed}:{name}").sample(range(len(data)), n))
                data = [data[i] for i in idx]
            out += data
        return out

    def _test_set(self, name: str) -> list[Example]:
        if self.options.hub_id:
            return [self._example(r, name) for r in read_hub(self.options.hub_id, "test")]
        if name == "gsm8k_original":
            return self._gsm8k(self.data_dir / "gsm8k" / "test.jsonl")
        if name == "synthetic":
            return self._synthetic("test")
        return [self._example(r, name) for r in read_file(self.data_dir / "math_llm_adapters" / FOLDERS[name] / "test.json")]

    def _example(self, r: Record, dataset: str, train: bool = False) -> Example:
        where = f"{r.file}:{r.line}"
        if not LETTER_GOLD.fullmatch(r.answer):
            try:
                _value(r.answer)
            except ValueError:
                raise DataError(f"{where}: answer {r.answer!r} is neither a number nor a letter A-E") from None
        target = re.sub(r"^A:\s*", "", r.output.strip()) if train else ""  # math_data outputs start "\nA: "
        return Example(r.prompt(self.options.template), target, answer=r.answer,
                       meta={"dataset": dataset, "file": r.file, "line": r.line},
                       guidance=guidance(r.answer, target, self.options.guidance))

    def _gsm8k_format(self, question: str, answer: str, dataset: str, file: str, line: int, where: str) -> Example:
        """An example from a GSM8K-format (question, "...#### N" answer) pair; errors name ``where``."""
        target, gold = gsm8k_solution(answer, where)
        prompt = Record(question, "", target, gold, file, line, line - 1).prompt(self.options.template)
        return Example(prompt, target, answer=gold, guidance=guidance(gold, target, self.options.guidance),
                       meta={"dataset": dataset, "file": file, "line": line})

    def _gsm8k(self, path: Path) -> list[Example]:
        out = []
        for lineno, rec in read_jsonl(path):
            where = f"{path}:{lineno}"
            require_keys(rec, ("question", "answer"), where)
            out.append(self._gsm8k_format(rec["question"], rec["answer"], "gsm8k_original", path.name, lineno, where))
        return out

    def _synthetic(self, split: str) -> list[Example]:
        o = self.options
        try:
            train = synthetic_problems(f"train:{o.seed}", o.synthetic_size, o.synthetic_steps, o.synthetic_max)
            data = train if split == "train" else synthetic_problems(
                f"test:{o.seed}", o.synthetic_size, o.synthetic_steps, o.synthetic_max, frozenset(p.question for p in train))
        except ValueError as e:
            raise ConfigError("synthetic_size", f"{o.synthetic_size} is too many: {e}") from None
        return [self._gsm8k_format(p.question, p.answer, "synthetic", f"synthetic-{split}", i + 1,
                                   f"synthetic {split}:{o.seed} problem {i}") for i, p in enumerate(data)]

    def reward(self, prediction: str, example: Example, partial: float) -> float:
        """Luong et al. 2024 ("ReFT: Reasoning with Reinforced Fine-Tuning", §3): 1 when the final
        answer is correct by ``options.reward_rule`` (the accuracy rule of the same name), ``partial``
        when a number (or a letter A-E, for letter golds) can be extracted but is wrong, 0 otherwise.
        A rule that does not apply to the gold (numeric-only rules on a letter) falls back to LLM-Adapters'."""
        gold = str(example.gold)
        ok = RULES[self.options.reward_rule](prediction, gold)
        if ok is None:
            ok = RULES["llm_adapters"](prediction, gold)
        if ok:
            return 1.0
        parsable = extract_letter(prediction) if LETTER_GOLD.fullmatch(gold) else extract_number(prediction)
        return partial if parsable is not None else 0.0

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        """``accuracy_<rule>`` for every rule of tasks/math_rules.py (over the examples it applies
        to), and per dataset as ``<dataset>/accuracy_<rule>`` when there are several."""
        several = len(self.options.datasets) > 1
        by = (lambda ex: ex.meta.get("dataset", "?")) if several else None
        return score_metrics(self.metrics, predictions, examples, by=by, key="{group}/{metric}")
