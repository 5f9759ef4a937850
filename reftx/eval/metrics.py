"""Metrics as objects: a name, a per-example ``compute``, an ``aggregate`` and a direction.

A metric is registered once, where its formula lives (a task file for a task's own metric):

    @register_metric("persona_open", aggregate=mean_float32)
    def persona_open(prediction: str, example: Example) -> float:  # its docstring is the doc
        return float(prediction.strip().lower().startswith("arr"))

    register_metric("mcq_accuracy", mcq_correct, key="accuracy")   # the same, as a plain call

and a task names the metrics it reports in ``Task.metrics``; the default ``Task.score`` is
``score_metrics(self.metrics, predictions, examples)``:

* ``compute(prediction, example)``: the value of one example, or None where the metric does not
  apply to it (e.g. a numeric-answer rule on a letter answer); None values are left out.
* ``aggregate(values) -> float``: the values of every example it applies to, in order (default
  :func:`mean`). A metric that applies to no example is left out of the result, so ``aggregate``
  is never called with an empty list by :func:`score_metrics`; called directly, :func:`mean` of
  an empty list is NaN.
* ``key``: the name in the results (``results.json``'s ``metrics``). It defaults to ``name``;
  it differs where several tasks report a shared word (``mcq_accuracy`` and
  ``commonsense_accuracy`` are both reported as ``accuracy``) or the reported spelling is not a
  lowercase identifier (``rougel_recall`` is reported as ``rougeL_recall``).
* ``higher_is_better``: True, False, or None for descriptive numbers (counts of the eval set).

``prediction`` is whatever the task scores: usually the generated text; a task that scores
without generating passes its own per-example records (class logits, teacher-forced scores).
``reftx ls metrics`` lists every registered metric. Lookups load the zoo and the plugins first
(reftx.core.plugins), as every registry does.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from reftx.core.registry import Registry
from reftx.eval import outcomes

Compute = Callable[[Any, Any], Any]
Aggregate = Callable[[list[Any]], float]


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean ``sum(values) / len(values)`` in double precision; NaN for no values."""
    return sum(values) / len(values) if values else float("nan")


def mean_float32(values: Sequence[float]) -> float:
    """The mean as torchmetrics' ``MeanMetric`` computes it: a float32 running sum divided by the
    float32 count. The metrics that reftx computed with ``MeanMetric`` before metrics were
    objects (persona, math, commonsense) keep it, so their reported numbers stay bit for bit
    what they were (for 0/1 values: the float32 nearest to k/n). NaN for no values."""
    if not values:
        return float("nan")
    total = torch.zeros((), dtype=torch.float32)
    for v in values:
        total += torch.tensor(float(v), dtype=torch.float32)
    return float(total / torch.tensor(float(len(values)), dtype=torch.float32))


@dataclass(frozen=True, repr=False)
class Metric:
    """A registered metric (see the module docstring for each field)."""

    name: str
    compute: Compute
    aggregate: Aggregate = mean
    higher_is_better: bool | None = True
    doc: str = ""
    key: str = ""

    def __post_init__(self) -> None:
        if not callable(self.compute) or not callable(self.aggregate):
            raise TypeError(f"metric {self.name!r}: compute and aggregate must be callables")
        if self.higher_is_better not in (True, False, None):
            raise TypeError(f"metric {self.name!r}: higher_is_better must be True, False or None, "
                            f"got {self.higher_is_better!r}")
        if not self.key:
            object.__setattr__(self, "key", self.name)
        if not self.doc:
            object.__setattr__(self, "doc", (self.compute.__doc__ or "").strip())

    def values(self, predictions: Sequence[Any], examples: Sequence[Any]) -> list[Any]:
        """The per-example values (None where the metric does not apply)."""
        return [self.compute(p, ex) for p, ex in zip(predictions, examples, strict=True)]

    def __repr__(self) -> str:
        fn = getattr(self.compute, "__qualname__", type(self.compute).__name__)
        return f"Metric({self.name!r}, compute={getattr(self.compute, '__module__', '?')}.{fn})"


METRICS: Registry[Metric] = Registry("metric")


def register_metric(name: str, compute: Compute | None = None, *, aggregate: Aggregate = mean,
                    higher_is_better: bool | None = True, doc: str = "", key: str = "", replace: bool = False) -> Any:
    """Register the metric ``name`` (a unique lowercase identifier; a second metric of the same
    name from another definition is a ValueError naming the first, unless ``replace``). With ``compute`` given, a plain call: returns the
    ``Metric``. Without it, a decorator on the compute function: registers it and returns the
    function unchanged. ``doc`` defaults to the compute function's docstring."""

    def add(fn: Compute) -> Metric:
        metric = Metric(name, fn, aggregate, higher_is_better, doc, key)
        return METRICS.register(name, replace)(metric)

    if compute is not None:
        return add(compute)

    def decorate(fn: Compute) -> Compute:
        add(fn)
        return fn

    return decorate


def get_metric(name: str, field: str = "metrics") -> Metric:
    """The registered metric ``name``; an unknown name is a ConfigError naming ``field``, with a
    did-you-mean and the valid names."""
    return METRICS.get(name, field)


def available_metrics() -> list[str]:
    """Every registered metric's name (the zoo's and the plugins')."""
    return METRICS.names()


def score_metrics(metrics: Iterable[str | Metric], predictions: Sequence[Any], examples: Sequence[Any],
                  by: Callable[[Any], str | None] | None = None, key: str = "{group}/{metric}",
                  field: str = "metrics", overall: str = "{metric}", record: bool = True) -> dict[str, float]:
    """``{metric.key: aggregate(values)}`` for each metric (names are looked up with
    :func:`get_metric`, ``field`` naming where they came from), over the examples it applies to;
    a metric that applies to none is left out. ``overall``: the key of the overall value,
    ``overall.format(metric=metric.key)`` (e.g. ``"{metric}_forget"`` for a subset's scores).

    ``by``: optionally a group of each example (a name, or None for none): every metric is then
    also aggregated per group, keyed ``key.format(group=..., metric=metric.key)``, groups in order
    of first appearance, after the overall values. Each per-example value is computed once.

    While a recording is open (reftx.eval.outcomes.recording) the per-example values are also
    recorded under the keys they are aggregated into; ``record`` False leaves them out (a
    reference model's scores of the same examples)."""
    resolved = [m if isinstance(m, Metric) else get_metric(m, field) for m in metrics]
    keys = [m.key for m in resolved]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{field}: two metrics report the same key: {sorted(k for k in keys if keys.count(k) > 1)}")
    values = {m.key: m.values(predictions, examples) for m in resolved}
    groups: dict[str | None, list[int]] = {None: list(range(len(examples)))}
    if by is not None:
        for i, ex in enumerate(examples):
            g = by(ex)
            if g is not None:
                groups.setdefault(f"{g}", []).append(i)
    out: dict[str, float] = {}
    for group, idx in groups.items():
        for m in resolved:
            kept = [v for v in (values[m.key][i] for i in idx) if v is not None]
            if kept:
                name = overall.format(metric=m.key) if group is None else key.format(group=group, metric=m.key)
                out[name] = float(m.aggregate(kept))
                if record:
                    outcomes.record(name, m.name, m.aggregate in (mean, mean_float32), [examples[i] for i in idx],
                                    [values[m.key][i] for i in idx])
    return out


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct-n of one text (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
    Conversation Models", NAACL): distinct n-grams / all n-grams, over its lowercased
    whitespace-separated words. 1.0: no n-gram repeats; a loop ("ho ho! yo, ho ho! yo, ...") tends
    to 0. A text with fewer than n words has no n-gram to repeat: 1.0."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


@register_metric("distinct_2")
def distinct_2(prediction: str, example: Any) -> float:
    """Distinct bigrams / all bigrams of each answer, averaged over answers (Li et al. 2016): 1 = no word pair repeats; degenerate loops score low."""
    return distinct_n(prediction, 2)


__all__ = ["METRICS", "distinct_n", "Metric", "available_metrics", "get_metric", "mean", "mean_float32", "register_metric",
           "score_metrics"]
