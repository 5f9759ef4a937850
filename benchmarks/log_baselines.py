"""Classic log anomaly baselines (tasks/log_baselines.py, as logpai/loglizer defines them) on the
splits the shipped experiments train on: the task code and options of
experiments/logs/hdfs_minilm_loreft.yaml and bgl_minilm_loreft.yaml (same n_train / n_eval subsets
and seed), so the rows sit beside the ReFT/LoRA rows of docs/results.md. CPU, seconds.

    .venv/bin/python benchmarks/log_baselines.py

HDFS rows: ``duplicates: drop`` (the experiments') and ``drop_ignoring_counts`` (no test session
equal to a training one up to "(xN)" counts); precision and F1 at the balanced test mix and at
HDFS_v1's prevalence (2.93% anomalous: pi·TPR / (pi·TPR + (1 - pi)·FPR)). Unsupervised models
(PCA, invariant mining) are fitted as loglizer's demos do, on every training sequence ("all"),
and on the normal training sequences only ("normal").
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import reftx.tasks  # noqa: E402,F401  (registers the zoo)
from reftx.config.schema import load_experiment  # noqa: E402
from reftx.eval.task import get_task  # noqa: E402
from reftx.tasks.log_baselines import (PCA, FeatureExtractor, InvariantsMiner, LogisticRegression,  # noqa: E402
                                       count_matrix, event_counts, prf, unseen_template)

HDFS_PREVALENCE = 16838 / 575061  # HDFS_v1: anomalous blocks / all blocks


def split(path: Path, **options):
    """(train counts, train labels, test counts, test labels) as the experiment's task builds them."""
    exp = load_experiment(path)
    task = get_task(exp.task.name, {**exp.task.options, **options})
    out = []
    for name, n in (("train", exp.task.n_train), ("test", exp.task.n_eval)):
        exs = task.examples(name, n, exp.seed)
        out += [[event_counts(e.prompt) for e in exs], np.array([int(e.info["label"]) for e in exs])]
    return out


def predictions(tr, ytr, te, with_unseen: bool) -> dict[str, np.ndarray]:
    events = sorted({e for c in tr for e in c})
    Xtr, Xte = count_matrix(tr, events), count_matrix(te, events)
    normal = ytr == 0
    out = {}
    fe = FeatureExtractor("tf-idf")
    out["LR (tf-idf)"] = LogisticRegression().fit(fe.fit_transform(Xtr), ytr).predict(fe.transform(Xte))
    for fit_on, rows in (("all", slice(None)), ("normal", normal)):
        fe = FeatureExtractor("tf-idf", "zero-mean")
        x = fe.fit_transform(Xtr[rows])
        out[f"PCA (tf-idf, zero-mean; fit {fit_on})"] = PCA().fit(x).predict(fe.transform(Xte))
        out[f"Invariants (counts; fit {fit_on})"] = InvariantsMiner().fit(Xtr[rows]).predict(Xte)
    if with_unseen:
        out["unseen template"] = unseen_template([c for c, y in zip(tr, ytr) if y == 0], te)
    out["flag everything"] = np.ones(len(te), dtype=int)
    return out


def report(title: str, tr, ytr, te, yte, prevalence: float | None) -> None:
    print(f"\n{title}: train {len(ytr)} ({ytr.sum()} anomalous), test {len(yte)} ({yte.sum()} anomalous)")
    head = f"{'baseline':40s} {'P':>6s} {'R':>6s} {'F1':>6s}"
    print(head + (f" {'P@prev':>7s} {'F1@prev':>7s}" if prevalence else ""))
    for name, pred in predictions(tr, ytr, te, with_unseen=True).items():
        m = prf(pred, yte)
        line = f"{name:40s} {m['precision']:6.3f} {m['recall']:6.3f} {m['f1']:6.3f}"
        if prevalence:
            p = prf(pred, yte, prevalence)
            line += f" {p['precision']:7.3f} {p['f1']:7.3f}"
        print(line)


def main() -> None:
    t0 = time.perf_counter()
    hdfs = REPO / "experiments/logs/hdfs_minilm_loreft.yaml"
    for dup in ("drop", "drop_ignoring_counts"):
        report(f"HDFS ({hdfs.name}, duplicates: {dup}; @prev = {HDFS_PREVALENCE:.4f} anomalous)",
               *split(hdfs, duplicates=dup), HDFS_PREVALENCE)
    bgl = REPO / "experiments/logs/bgl_minilm_loreft.yaml"
    report(f"BGL ({bgl.name}, natural mix of the log's last 30%)", *split(bgl), None)
    print(f"\n{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
