"""Classic log anomaly detection baselines on bag-of-templates counts, as logpai/loglizer defines them.

Reference: logpai/loglizer at ac67f9727acb660687a77b9c8042553aaa185cd3 (read, not copied; numpy and
scipy here, no scikit-learn):

* ``loglizer/preprocessing.py`` ``FeatureExtractor``: a sequence becomes its event counts over the
  training events (events unseen in training are dropped); ``tf-idf`` multiplies column j by
  idf_j = log(N / (df_j + 1e-8)) (N training rows, df_j the rows holding event j); ``zero-mean``
  subtracts the training column means. Its demos: LR on tf-idf, PCA on tf-idf + zero-mean,
  invariant mining on raw counts.
* ``loglizer/models/LR.py`` (Bodík et al., EuroSys 2010): scikit-learn's ``LogisticRegression(
  penalty='l2', C=100, tol=0.01, max_iter=100)``, lbfgs: the minimiser of
  (1/n) Σ log(1 + exp(-s_i (w·x_i + b))) + ||w||² / (2 C n), s_i = ±1, intercept unpenalised.
  Here scipy's L-BFGS-B with scikit-learn's settings (gtol = tol, maxiter, maxls 50, ftol 64 eps):
  the same objective and optimiser; the stopping point may differ within ``tol``.
* ``loglizer/models/PCA.py`` (Xu et al., SOSP 2009): C = X'X / n, its SVD; the first k components
  covering ``n_components`` (0.95) of the variance span the normal space; a row's SPE = ||(I -
  PP')x||²; threshold from the Q-statistic of the residual eigenvalues (Jackson & Mudholkar, as
  Lakhina et al. 2004) with c_alpha 3.2905 (alpha = 0.001); anomalous when SPE > threshold.
* ``loglizer/models/InvariantsMiner.py`` (Lou et al., USENIX ATC 2010): the invariant space
  dimension r from the SVD of X'X (directions with |X v| < epsilon on >= ``percentage`` of rows),
  then a level-wise search for integer linear relations among event counts (all-zero columns
  first, then pairs, triples ...) until r are found; anomalous when any relation is violated.

``unseen_template``: BGL's rule (not in loglizer): a window is anomalous when it holds a template
that no normal training window holds.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from itertools import combinations

import numpy as np
from scipy.optimize import minimize

COUNT = re.compile(r"^(.*) \(x(\d+)\)$")


def event_counts(text: str) -> Counter:
    """A log example's lines (tasks/logs.py) as event counts; a line "t (xN)" is N times t."""
    out: Counter = Counter()
    for line in text.split("\n"):
        m = COUNT.match(line)
        out[m.group(1) if m else line] += int(m.group(2)) if m else 1
    return out


def count_matrix(seqs: Sequence[Counter], events: Sequence[str]) -> np.ndarray:
    """(n, len(events)) counts; events outside ``events`` are dropped (loglizer without oov)."""
    return np.array([[c.get(e, 0) for e in events] for c in seqs], dtype=np.float64).reshape(len(seqs), len(events))


class FeatureExtractor:
    """loglizer's term weighting and normalisation, fitted on the training matrix."""

    def __init__(self, term_weighting: str | None = None, normalization: str | None = None):
        self.term_weighting, self.normalization = term_weighting, normalization
        self.idf: np.ndarray | None = None
        self.mean: np.ndarray | None = None

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        if self.term_weighting == "tf-idf":
            self.idf = np.log(X.shape[0] / ((X > 0).sum(axis=0) + 1e-8))
        if self.normalization == "zero-mean":
            self.mean = (X * self.idf if self.idf is not None else X).mean(axis=0)
        return self.transform(X)

    def transform(self, X: np.ndarray) -> np.ndarray:
        if self.idf is not None:
            X = X * self.idf
        if self.mean is not None:
            X = X - self.mean
        return X


class LogisticRegression:
    """L2 logistic regression, scikit-learn's objective (see the module docstring)."""

    def __init__(self, C: float = 100.0, tol: float = 0.01, max_iter: int = 100):
        self.C, self.tol, self.max_iter = C, tol, max_iter
        self.w: np.ndarray | None = None
        self.b = 0.0

    def fit(self, X: np.ndarray, y: np.ndarray) -> LogisticRegression:
        n, d = X.shape
        s = np.where(np.asarray(y) > 0, 1.0, -1.0)

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:d], theta[d]
            z = s * (X @ w + b)
            value = np.logaddexp(0.0, -z).sum() / n + w @ w / (2 * self.C * n)
            g = -s / (1 + np.exp(z)) / n  # d loss / d (w.x + b)
            return value, np.concatenate([X.T @ g + w / (self.C * n), [g.sum()]])

        res = minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B",
                       options={"maxiter": self.max_iter, "maxls": 50, "gtol": self.tol,
                                "ftol": 64 * np.finfo(float).eps})
        self.w, self.b = res.x[:d], float(res.x[d])
        return self

    def decision(self, X: np.ndarray) -> np.ndarray:
        return X @ self.w + self.b

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """p(anomaly) per row."""
        return 1 / (1 + np.exp(-self.decision(X)))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.decision(X) > 0).astype(int)


def q_statistic_threshold(residual: np.ndarray, c_alpha: float) -> float:
    """The SPE threshold from the residual eigenvalues λ_k+1..λ_m: φ_i = Σ λ^i,
    h0 = 1 - 2 φ1 φ3 / (3 φ2²), φ1 (c_alpha sqrt(2 φ2 h0²) / φ1 + 1 + φ2 h0 (h0 - 1) / φ1²)^(1/h0)."""
    p1, p2, p3 = (float(np.sum(residual ** i)) for i in (1, 2, 3))
    if p2 == 0:  # no residual variance: loglizer's numpy arithmetic gives NaN, so nothing is flagged
        return float("nan")
    h0 = 1.0 - 2 * p1 * p3 / (3.0 * p2 * p2)
    return p1 * (c_alpha * math.sqrt(2 * p2 * h0 * h0) / p1 + 1.0 + p2 * h0 * (h0 - 1) / (p1 * p1)) ** (1.0 / h0)


class PCA:
    """loglizer's PCA detector: SPE in the residual space against the Q-statistic threshold."""

    def __init__(self, n_components: float = 0.95, threshold: float | None = None, c_alpha: float = 3.2905):
        self.n_components, self.threshold, self.c_alpha = n_components, threshold, c_alpha
        self.proj: np.ndarray | None = None
        self.k = 0

    def fit(self, X: np.ndarray) -> PCA:
        n, m = X.shape
        U, sigma, _ = np.linalg.svd(X.T @ X / float(n))
        k = self.n_components
        if k < 1:  # the fewest leading components whose variance share reaches n_components
            share = np.cumsum(sigma) / np.sum(sigma)
            k = int(np.argmax(share >= k)) + 1 if np.any(share >= k) else m
        self.k = int(k)
        P = U[:, :self.k]
        self.proj = np.identity(m) - P @ P.T
        if not self.threshold:
            self.threshold = q_statistic_threshold(sigma[self.k:], self.c_alpha)
        return self

    def spe(self, X: np.ndarray) -> np.ndarray:
        """Squared prediction error of each row: ||(I - PP')x||²."""
        r = X @ self.proj.T
        return (r * r).sum(axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.spe(X) > self.threshold).astype(int)


class InvariantsMiner:
    """loglizer's invariant mining (Lou et al. 2010), its search step for step."""

    def __init__(self, percentage: float = 0.98, epsilon: float = 0.5, longest: int | None = None,
                 scales: Sequence[int] = (1, 2, 3)):
        self.percentage, self.epsilon, self.longest, self.scales = percentage, epsilon, longest, tuple(scales)
        self.invariants: dict[tuple[int, ...], list[float]] = {}

    def fit(self, X: np.ndarray) -> InvariantsMiner:
        self._search(X, self.invariant_dim(X))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        total = np.zeros(X.shape[0])
        for cols, theta in self.invariants.items():
            total += np.fabs(X[:, list(cols)] @ np.array(theta))
        return (total > 1e-6).astype(int)

    def invariant_dim(self, X: np.ndarray) -> int:
        """r: trailing singular directions of X'X along which |X v| < epsilon on >= percentage of rows."""
        U = np.linalg.svd(X.T @ X)[0]
        r = 0
        for i in range(X.shape[1] - 1, -1, -1):
            if np.sum(np.abs(X @ U[:, i]) < self.epsilon) / float(X.shape[0]) < self.percentage:
                break
            r += 1
        return r

    def _search(self, X: np.ndarray, r: int) -> None:
        # ``space`` (loglizer's search_space) is a set of sorted column tuples: membership and
        # removal only, so a set gives the same search as loglizer's list, faster.
        found: dict[tuple[int, ...], list[float]] = {}
        space = {(j,) for j in range(X.shape[1])}
        items = []
        for j in range(X.shape[1]):
            if np.count_nonzero(X[:, j]) == 0:  # an all-zero column is an invariant of its own
                found[(j,)] = [1]
                space.discard((j,))
            else:
                items.append((j,))
        length, done = 2, False
        while items and not done:  # as loglizer: r is checked only after a candidate is tried
            if self.longest and len(items[0]) >= self.longest:
                break
            joined = _join(items, length)
            space |= {c for c in joined if _subsets_in(c, length, space)}
            items = []
            for c in joined:
                if c in found or c not in space:
                    continue
                if length > 2 and not _subsets_in(c, length, space):
                    space.discard(c)
                    continue
                ok, theta = self._valid(X, list(c))
                if ok:
                    _prune(found, set(c), space)
                    found[c] = theta
                    space.discard(c)
                else:
                    items.append(c)
                if len(found) >= r:
                    done = True
                    break
            length += 1
        self.invariants = found

    def _valid(self, X: np.ndarray, cols: list[int]) -> tuple[bool, list[float]]:
        """Does the smallest eigenvector of the columns' X'X, scaled to integers, vanish on >= percentage of rows?"""
        sub = X[:, cols]
        v = np.linalg.svd(sub.T @ sub)[0][:, -1]
        if np.any(np.fabs(v) < 1e-6):
            return False, []
        i_min = int(np.argmin(np.fabs(v)))
        for scale in self.scales:
            theta = np.round(v * (scale / v[i_min]))
            theta[i_min] = scale
            if np.any(theta == 0):
                continue
            if np.sum(np.fabs(sub @ theta) < 1e-8) >= self.percentage * X.shape[0]:
                return True, theta.tolist()
        return False, []


def _join(items: list[tuple[int, ...]], length: int) -> list[tuple[int, ...]]:
    """Sorted unions of two items that have ``length`` columns (loglizer's _join_set)."""
    out: set[tuple[int, ...]] = set()
    for a, b in combinations(items, 2):
        u = tuple(sorted(set(a) | set(b)))
        if len(u) == length:
            out.add(u)
    return sorted(out)


def _subsets_in(item: tuple[int, ...], length: int, space: set[tuple[int, ...]]) -> bool:
    return all(s in space for s in combinations(item, length - 1))  # combinations of a sorted tuple are sorted


def _prune(found: dict[tuple[int, ...], list[float]], new: set[int], space: set[tuple[int, ...]]) -> None:
    for cols in found:
        for j in set(cols) & new:
            space.discard(tuple(sorted((set(cols) | new) - {j})))


def unseen_template(train_normal: Sequence[Counter], seqs: Sequence[Counter]) -> np.ndarray:
    """1 for each sequence holding an event that no normal training sequence holds."""
    known = {e for c in train_normal for e in c}
    return np.array([int(any(e not in known for e in c)) for c in seqs])


def prf(pred: Sequence[int], gold: Sequence[int], prevalence: float | None = None) -> dict[str, float]:
    """Precision, recall and F1 of the anomaly class (0 where undefined, as scikit-learn's
    zero_division warns and returns); with ``prevalence``, precision reweighted to that anomaly
    share: π·TPR / (π·TPR + (1 - π)·FPR) (tasks/logs.py, ``precision_at_prevalence``)."""
    pred, gold = np.asarray(pred).astype(bool), np.asarray(gold).astype(bool)
    tp, fp = float(np.sum(pred & gold)), float(np.sum(pred & ~gold))
    recall = tp / gold.sum() if gold.sum() else 0.0
    if prevalence is None:
        precision = tp / (tp + fp) if tp + fp else 0.0
    else:
        fpr = fp / (~gold).sum() if (~gold).sum() else 0.0
        flagged = prevalence * recall + (1 - prevalence) * fpr
        precision = prevalence * recall / flagged if flagged else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


__all__ = ["FeatureExtractor", "InvariantsMiner", "LogisticRegression", "PCA", "count_matrix", "event_counts",
           "prf", "q_statistic_threshold", "unseen_template"]
