"""hdfs, bgl: log anomaly detection as sequence classification (METHODS.md §6; Lim, Zhu & Pang 2025).

Each example is a sequence of log lines, one line of text each, joined by newlines; the label is
``info["label"]`` (1 anomaly, 0 normal) and the target is empty, so the whole text is the prompt.
Train with ``model.task: sequence-classification``, ``model.num_labels: 2``, ``train.objective:
classify`` and the head in ``model.train_modules`` (reftx.eval.classify). Splits: ``train`` and ``test``.

hdfs — DeepLog's HDFS block sessions (``loghub_deeplog_hdfs/``: ``hdfs_train`` 4,855 normal,
``hdfs_test_abnormal`` 16,838 anomalous; DeepLog's normal test file is absent, so both splits come
from these two files). A line is its loghub template (``HDFS_templates.csv``, E1..E30; id k = E<k>,
checked in tasks/log_parsing.py) or the bare event id. Many sessions are the same sequence (839
distinct normal, 4,123 distinct anomalous; no sequence is in both files): ``duplicates`` decides
whether copies are dropped (default), kept together on one side, or split freely (leaky).
``drop`` compares the sequences as the model sees them, so with ``repeats: count`` two sessions
that differ only in a "(xN)" count are both kept (123 of the 336 test sessions of
experiments/logs/hdfs_minilm_loreft.yaml match a same-label training session that way);
``drop_ignoring_counts`` keeps one session per sequence with the counts removed.

Prevalence: DeepLog's files are 26% normal sessions while HDFS_v1 is 2.9% anomalous, and the
shipped experiments balance the classes (``balance: true``). Precision depends on the class mix;
recall and the false positive rate do not. ``eval_prevalence: 0.0293`` adds
``precision_at_prevalence`` and ``f1_at_prevalence``: the same predictions' precision and F1 as if
that share of the eval sessions were anomalous, pi·TPR / (pi·TPR + (1 - pi)·FPR), beside the
metrics at the eval set's own mix. BGL's windows keep the log's own mix (no balancing).

bgl — loghub's BGL_2k (2,000 lines, 143 alerts). A line is its loghub template or its message with
numbers, ids, IPs and paths masked. Windows of ``window_size`` lines (fixed, or sliding by
``step``) are anomalous when any line is an alert. The log is cut in time: the first
``1 - test_fraction`` of the lines make train windows, the rest test windows, and windows across the
cut are dropped, so overlapping sliding windows never share a line across the splits.

Length: keep examples within ``train.max_length`` and ``eval.max_length`` (``max_lines``,
``window_size``, ``repeats: count``); a longer one loses its start, and on BERT its [CLS] token.

Metrics: precision, recall and F1 of the anomaly class, accuracy, AUROC, the eval set's anomaly
count and, for scale, the F1 of flagging everything (``f1_all_anomaly``); on HDFS with
``eval_prevalence`` also precision and F1 at that prevalence. Classic baselines on the same splits
(loglizer's logistic regression, PCA, invariant mining; BGL's unseen-template rule):
tasks/log_baselines.py, benchmarks/log_baselines.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from reftx.eval.classify import BINARY, LABEL, binary_metric, class_logits, class_predictions
from reftx.core.errors import ConfigError, DataError
from reftx.eval.metrics import register_metric, score_metrics
from reftx.data.examples import Example
from reftx.eval.task import Task, register_task

from .log_parsing import (
    balance,
    clean_message,
    collapse_repeats,
    cut,
    group_split,
    read_bgl,
    read_deeplog,
    read_templates,
    template_text,
    time_split,
    windows,
    without_counts,
)

ANOMALY, NORMAL = "anomaly", "normal"


def _label(example: Example) -> float:
    if LABEL not in example.info:
        raise DataError(f"example {example.prompt[:40]!r} carries no info[{LABEL!r}]: not a classification task")
    return example.info[LABEL]


def _verdict(prediction: Any, example: Example) -> tuple[int, int, float | None]:
    """(predicted class, gold class, p(anomaly) or None) of one example. ``prediction``: a word
    ("anomaly"; anything else counts as normal) or a (class, p(anomaly)) pair of the classifier."""
    if isinstance(prediction, str):
        return int(prediction.strip().lower() == ANOMALY), int(_label(example)), None
    k, p = prediction
    return int(k), int(_label(example)), float(p)


def _scored(prediction: Any, example: Example) -> tuple[int, int, float] | None:
    v = _verdict(prediction, example)
    return v if v[2] is not None else None  # AUROC applies to scored predictions only


def _binary(name: str):
    def aggregate(rows: list[tuple[int, int, float | None]]) -> float:
        preds, labels = (torch.tensor([r[i] for r in rows], dtype=torch.long) for i in (0, 1))
        prob = torch.tensor([r[2] for r in rows]) if name == "auroc" else None  # float32, as the logits' softmax
        return binary_metric(name, preds, labels, prob)

    aggregate.__qualname__ = f"binary_{name}"
    return aggregate


_BINARY_DOCS = {
    "precision": "Precision of the anomaly class (0 when nothing is flagged).",
    "recall": "Recall of the anomaly class.",
    "f1": "F1 of the anomaly class (0 when nothing right is flagged).",
    "accuracy": "Accuracy of anomaly/normal predictions.",
    "auroc": "AUROC of the classifier's p(anomaly) (NaN when the eval set has one class; not from words).",
}
for _name in BINARY:  # binary_precision, ... reported as precision, ... (reftx.eval.classify.binary_metric)
    register_metric(f"binary_{_name}", _scored if _name == "auroc" else _verdict, aggregate=_binary(_name),
                    doc=_BINARY_DOCS[_name], key=_name)


def _total(values: list[float]) -> float:
    return float(sum(values))


def _f1_all(values: list[float]) -> float:
    share = sum(values) / len(values)
    return 2 * share / (1 + share)


def _is_anomaly(prediction: Any, example: Example) -> float:
    return float(_label(example) > 0.5)


def _is_normal(prediction: Any, example: Example) -> float:
    return 1.0 - _is_anomaly(prediction, example)


def _at_prevalence(prediction: Any, example: Example) -> tuple[int, int, float] | None:
    pi = example.meta.get("prevalence")
    return None if pi is None else (*_verdict(prediction, example)[:2], float(pi))


def precision_at_prevalence(rows: list[tuple[int, int, float]]) -> float:
    """Precision if anomalies made up a share pi of the eval set, from its recall (TPR) and false
    positive rate, which do not depend on the class mix: pi·TPR / (pi·TPR + (1 - pi)·FPR); 0 when
    nothing would be flagged, NaN when the eval set lacks a class."""
    pi = rows[0][2]
    pos, neg = [p for p, y, _ in rows if y], [p for p, y, _ in rows if not y]
    if not pos or not neg:
        return float("nan")
    tpr, fpr = sum(pos) / len(pos), sum(neg) / len(neg)
    flagged = pi * tpr + (1 - pi) * fpr
    return pi * tpr / flagged if flagged else 0.0


def f1_at_prevalence(rows: list[tuple[int, int, float]]) -> float:
    """F1 of the anomaly class at prevalence pi: from ``precision_at_prevalence`` and the recall."""
    p = precision_at_prevalence(rows)
    pos = [k for k, y, _ in rows if y]
    r = sum(pos) / len(pos) if pos else float("nan")
    return 2 * p * r / (p + r) if p + r else 0.0


register_metric("precision_at_prevalence", _at_prevalence, aggregate=precision_at_prevalence,
                doc="Precision of the anomaly class reweighted to the task's eval_prevalence (from recall and FPR).")
register_metric("f1_at_prevalence", _at_prevalence, aggregate=f1_at_prevalence,
                doc="F1 of the anomaly class reweighted to the task's eval_prevalence (recall is unchanged).")
register_metric("n_anomaly", _is_anomaly, aggregate=_total, higher_is_better=None,
                doc="Anomalous examples in the eval set (a count: it describes the data, not the model).")
register_metric("n_normal", _is_normal, aggregate=_total, higher_is_better=None,
                doc="Normal examples in the eval set (a count).")
register_metric("f1_all_anomaly", _is_anomaly, aggregate=_f1_all, higher_is_better=None,
                doc="F1 of flagging every example as an anomaly: 2s / (1 + s), s the anomaly share (for scale).")


LOG_METRICS = ("binary_precision", "binary_recall", "binary_f1", "binary_accuracy", "binary_auroc", "n_anomaly",
               "n_normal", "f1_all_anomaly", "precision_at_prevalence", "f1_at_prevalence")


def log_lines(task: Task, lines: list[str]) -> list[str]:
    """A session's lines as the task's ``repeats`` option asks (runs collapsed to "(xN)" or kept)."""
    return collapse_repeats(lines) if task.options.repeats == "count" else lines


def log_example(lines: list[str], label: int, **meta: Any) -> Example:
    """One classification example: the lines joined, the label as the answer word and ``info["label"]``."""
    return Example("\n".join(lines), "", ANOMALY if label else NORMAL, info={"label": float(label)},
                   meta={**meta, "lines": len(lines)})


def log_evaluate(task: Task, model: Any, tokenizer: Any, examples: list[Example], cfg: Any, chat: bool,
                 show_progress: bool = True, references: Any = None) -> tuple[dict[str, float], list[str]]:
    """Argmax of the classifier's logits per example; metrics of the anomaly class and AUROC.
    (``score`` gives the same metrics, but AUROC, from predicted words.)"""
    logits = class_logits(model, tokenizer, examples, chat, cfg.batch_size, cfg.max_length)
    picks = class_predictions(logits)
    preds = [ANOMALY if k else NORMAL for k, _ in picks]
    return score_metrics(task.metrics, picks, examples), preds


@register_task("hdfs")
class Hdfs(Task):
    """HDFS block sessions (DeepLog's event-id files), normal vs anomalous."""

    splits, generate, metrics, evaluate = ("train", "test"), False, LOG_METRICS, log_evaluate

    @dataclass(frozen=True)
    class Options:
        line: Literal["template", "event_id"] = "template"  # a line as its loghub template text, or as "E<id>"
        repeats: Literal["keep", "count"] = "keep"  # count: a run of one event becomes one line "<text> (xN)"
        max_lines: int = 64  # lines per example (after repeats); longer sessions are cut as `long` says
        long: Literal["truncate", "chunk"] = "truncate"  # truncate: keep the first max_lines; chunk: consecutive pieces, each an example with the session's label (same split)
        duplicates: Literal["drop", "group", "keep", "drop_ignoring_counts"] = "drop"  # equal sequences: drop copies | group (one side) | keep (split freely: leaks) | drop_ignoring_counts (equal up to repeat counts: "(xN)" and run lengths)
        balance: bool = False  # cut the larger class to the smaller one's size in each split (seeded)
        eval_prevalence: float | None = None  # also report precision and F1 as if this share of sessions were anomalous (HDFS_v1: 16,838 / 575,061 = 0.0293)
        test_fraction: float = 0.2  # share of each class's (distinct) sessions in test
        split_seed: int = 0  # seed of the split and of balancing (the subset seed is the experiment's)

    def __init__(self, options: Any = None, data_dir: Any = None):
        super().__init__(options, data_dir)
        o = self.options
        if o.max_lines < 1:
            raise ConfigError("task.options.max_lines", f"must be >= 1, got {o.max_lines}")
        if not 0 < o.test_fraction < 1:
            raise ConfigError("task.options.test_fraction", f"must be in (0, 1), got {o.test_fraction}")
        if o.eval_prevalence is not None and not 0 < o.eval_prevalence < 1:
            raise ConfigError("task.options.eval_prevalence", f"must be in (0, 1) or null, got {o.eval_prevalence}")
        self._cache: dict[str, list[Example]] | None = None

    def _line(self, event: int, templates: dict[str, str]) -> str:
        eid = f"E{event}"
        return eid if self.options.line == "event_id" else template_text(templates[eid])

    def sessions(self) -> list[tuple[tuple[int, ...], int]]:
        """(event ids, label) of every session: hdfs_train (0) then hdfs_test_abnormal (1)."""
        d = self.data_dir / "loghub_deeplog_hdfs"
        return [(s, y) for y, name in ((0, "hdfs_train"), (1, "hdfs_test_abnormal")) for s in read_deeplog(d / name)]

    def load(self, split: str) -> list[Example]:
        if self._cache is None:
            self._cache = self._build()
        return self._cache[split]

    def _build(self) -> dict[str, list[Example]]:
        o = self.options
        path = self.data_dir / "loghub" / "HDFS" / "HDFS_templates.csv"
        templates = read_templates(path)
        sessions = self.sessions()
        unknown_ids = sorted({e for s, _ in sessions for e in s if f"E{e}" not in templates})
        if unknown_ids:
            raise ConfigError("task.options.line", f"event ids {unknown_ids} have no template in {path}")
        pieces = [tuple(tuple(c) for c in cut(log_lines(self, [self._line(e, templates) for e in events]),
                                              o.max_lines, o.long)) for events, _ in sessions]
        labels = [y for _, y in sessions]
        keys = [tuple(map(without_counts, p)) for p in pieces] if o.duplicates == "drop_ignoring_counts" else pieces
        train, test = group_split(keys, labels, o.test_fraction, o.split_seed, o.duplicates)
        extra = {} if o.eval_prevalence is None else {"prevalence": o.eval_prevalence}
        out = {}
        for name, idx in (("train", train), ("test", test)):
            if o.balance:
                idx = balance(idx, labels, o.split_seed)
            out[name] = [log_example(list(c), labels[i], session=i, chunk=j, **extra)
                         for i in idx for j, c in enumerate(pieces[i])]
        return out


@register_task("bgl")
class Bgl(Task):
    """BGL_2k windows of lines, normal vs containing an alert; split by time."""

    splits, generate, metrics, evaluate = ("train", "test"), False, LOG_METRICS, log_evaluate

    @dataclass(frozen=True)
    class Options:
        line: Literal["template", "message"] = "template"  # a line as its loghub template text, or its message with numbers/ids/IPs/paths masked
        window: Literal["fixed", "sliding"] = "sliding"  # fixed: consecutive windows (step = window_size); sliding: start every `step` lines
        window_size: int = 20  # lines per window
        step: int = 5  # sliding windows' start offset (ignored for fixed)
        repeats: Literal["keep", "count"] = "keep"  # count: a run of one line becomes one line "<text> (xN)"
        test_fraction: float = 0.3  # the last share of the log (in time) that test windows come from

    def __init__(self, options: Any = None, data_dir: Any = None):
        super().__init__(options, data_dir)
        o = self.options
        for name in ("window_size", "step"):
            if getattr(o, name) < 1:
                raise ConfigError(f"task.options.{name}", f"must be >= 1, got {getattr(o, name)}")
        if not 0 < o.test_fraction < 1:
            raise ConfigError("task.options.test_fraction", f"must be in (0, 1), got {o.test_fraction}")

    def lines(self) -> list:
        d = self.data_dir / "loghub" / "BGL"
        return read_bgl(d / "BGL_2k.log", d / "BGL_2k.log_structured.csv")

    def windows(self, split: str) -> list:
        """The split's windows (line ranges in file order) and their labels."""
        o = self.options
        lines = self.lines()
        ranges = dict(zip(self.splits, time_split(len(lines), o.test_fraction)))
        step = o.window_size if o.window == "fixed" else o.step
        return windows([ln.alert for ln in lines], o.window_size, step, *ranges[split])

    def load(self, split: str) -> list[Example]:
        lines = self.lines()
        text = [template_text(ln.template) if self.options.line == "template" else clean_message(ln.message)
                for ln in lines]
        return [log_example(log_lines(self, text[w.start:w.end]), int(w.anomalous), start=w.start, end=w.end)
                for w in self.windows(split)]
