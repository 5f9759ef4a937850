"""Classic log anomaly baselines (tasks/log_baselines.py) on tiny hand-made count matrices.

Reference: logpai/loglizer (ac67f97): ``loglizer/preprocessing.py`` (tf-idf, zero-mean),
``loglizer/models/LR.py`` (scikit-learn's L2 logistic regression), ``loglizer/models/PCA.py``
(SPE and the Q-statistic threshold), ``loglizer/models/InvariantsMiner.py``.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from reftx.tasks.log_baselines import (PCA, FeatureExtractor, InvariantsMiner, LogisticRegression, count_matrix,
                                       event_counts, prf, q_statistic_threshold, unseen_template)


def test_event_counts_and_matrix():
    c = event_counts("open (x3)\nread\nopen")
    assert c == Counter({"open": 4, "read": 1})
    assert count_matrix([c, Counter({"new": 2})], ["open", "read"]).tolist() == [[4, 1], [0, 0]]  # unseen dropped


def test_tf_idf_and_zero_mean():
    X = np.array([[1.0, 0.0], [2.0, 1.0], [0.0, 0.0]])
    fe = FeatureExtractor("tf-idf", "zero-mean")
    out = fe.fit_transform(X)
    idf = [math.log(3 / 2), math.log(3 / 1)]  # df = 2 and 1 of N = 3 rows (+1e-8)
    weighted = X * idf
    assert fe.idf == pytest.approx(idf)
    assert out.ravel() == pytest.approx((weighted - weighted.mean(axis=0)).ravel())
    assert fe.transform(np.array([[1.0, 1.0]]))[0] == pytest.approx([idf[0] - weighted[:, 0].mean(),
                                                                     idf[1] - weighted[:, 1].mean()])


def test_logistic_regression_stationary_point():
    """x = +1 (anomaly), x = -1 (normal): by symmetry b = 0, and the gradient of
    C·Σ log(1 + e^{-s w x}) + w²/2 vanishes where w = 2 C σ(-w); C = 1: w = 0.674832 (bisection)."""
    lo, hi = 0.0, 2.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid - 2 / (1 + math.exp(mid)) < 0 else (lo, mid)
    assert lo == pytest.approx(0.674832, abs=1e-6)
    lr = LogisticRegression(C=1.0, tol=1e-10, max_iter=200).fit(np.array([[1.0], [-1.0]]), np.array([1, 0]))
    assert lr.w[0] == pytest.approx(lo, abs=1e-6) and lr.b == pytest.approx(0.0, abs=1e-6)
    assert lr.predict(np.array([[0.5], [-0.5]])).tolist() == [1, 0]
    assert lr.predict_proba(np.array([[1.0]]))[0] == pytest.approx(1 / (1 + math.exp(-lo)))


def test_q_statistic_threshold_by_hand():
    """Residual eigenvalue 0.5: φ = 0.5, 0.25, 0.125; h0 = 1 - 2·0.5·0.125 / (3·0.0625) = 1/3;
    threshold = 0.5·(c·sqrt(2·0.25/9)/0.5 + 1 + 0.25·(1/3)(-2/3)/0.25)^3 = 0.5·(2c·0.2357023 + 7/9)^3."""
    c = 3.2905
    assert q_statistic_threshold(np.array([0.5]), c) == pytest.approx(0.5 * (2 * c * 0.2357022604 + 7 / 9) ** 3)
    assert q_statistic_threshold(np.array([0.5]), c) == pytest.approx(6.31595, abs=1e-4)


def test_pca_spe_by_hand():
    """X'X/4 = diag(2, 0.5): one component covers 2/2.5 = 0.8 of the variance, the residual space
    is the second axis: SPE([3, 2]) = 4 > 6.316? no; SPE([0, 3]) = 9 > 6.316: anomalous."""
    X = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    pca = PCA(n_components=0.8).fit(X)
    assert pca.k == 1 and pca.threshold == pytest.approx(0.5 * (2 * 3.2905 * 0.2357022604 + 7 / 9) ** 3)
    assert pca.spe(np.array([[3.0, 2.0], [0.0, 3.0]])) == pytest.approx([4.0, 9.0])
    assert pca.predict(np.array([[3.0, 2.0], [0.0, 3.0]])).tolist() == [0, 1]
    assert PCA(n_components=0.95).fit(X).k == 2  # 0.8 < 0.95: both components


def test_invariants_miner_finds_equal_counts_and_a_zero_column():
    """Events 0 and 1 always co-occur equally often, event 2 never occurs: r = 2 invariants,
    the zero column (2,) and 1·x0 - 1·x1 = 0."""
    X = np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0], [3.0, 3.0, 0.0], [1.0, 1.0, 0.0]])
    im = InvariantsMiner().fit(X)
    assert im.invariant_dim(X) == 2
    assert im.invariants == {(2,): [1], (0, 1): [1.0, -1.0]}
    assert im.predict(np.array([[2.0, 2.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])).tolist() == [0, 1, 1]


def test_unseen_template_rule_and_prf():
    train = [Counter({"a": 2, "b": 1}), Counter({"c": 1})]
    assert unseen_template(train, [Counter({"a": 1}), Counter({"a": 1, "d": 1})]).tolist() == [0, 1]
    # 4 anomalies, 3 flagged (recall 0.75); 4 normals, 1 flagged (FPR 0.25, precision 3/4)
    pred, gold = [1, 1, 1, 0, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]
    assert prf(pred, gold) == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75})
    # at prevalence 0.1: 0.1·0.75 / (0.1·0.75 + 0.9·0.25) = 0.25; F1 = 2·0.25·0.75 / 1.0 = 0.375
    assert prf(pred, gold, 0.1) == pytest.approx({"precision": 0.25, "recall": 0.75, "f1": 0.375})
