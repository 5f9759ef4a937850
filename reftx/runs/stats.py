"""The statistics of ``reftx report`` (reftx.runs.report), as small pure functions over numbers.

* :func:`t_interval`: the mean of per-seed values and its Student-t interval,
  mean ± t(1 − α/2, n − 1) · s / √n, s the sample standard deviation (n − 1 in the denominator).
  One value has no spread to estimate: the interval is refused with the reason, never invented.
* :func:`binomial_two_sided`: the exact two-sided binomial test at p = 1/2, P = min(1, 2 · P(X ≤ min(k, n − k))),
  X ~ Bin(n, 1/2): what :func:`mcnemar_exact` (discordant pairs b and c: k = b, n = b + c) and
  :func:`sign_test` (positive and negative per-seed differences; ties dropped) both compute.
* :func:`holm`: Holm's step-down adjustment of m p-values, p_(i) ↦ max over j ≤ i of min(1, (m − j + 1) · p_(j)).
* :func:`mde`: the minimum detectable effect of a two-sided level-α test at the given power for a
  standard error se, (q(1 − α/2) + q(power)) · se, with q the normal quantile, or Student's t with
  ``df`` degrees of freedom for few units (seeds). "Not detectable" is then a number: an observed
  difference below it is one this many seeds and examples would often miss.
* :func:`bootstrap`: percentile intervals, standard errors and p-values from resampling seeds and
  examples together (two levels: seeds with replacement, then examples with replacement, the same
  examples for every seed, since every seed is scored on the same eval set). The p-value of a paired
  difference d̂ is the share of resampled differences at least as far from d̂ as d̂ is from 0,
  (1 + #{|d* − d̂| ≥ |d̂|}) / (B + 1) (the bootstrap distribution shifted to the null).
  Resampling uses a fixed generator seed, so a report is reproducible.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

LEVEL, POWER, B = 0.95, 0.80, 2000  # interval level, power of the detectable effect, bootstrap replicates


@dataclass(frozen=True)
class Estimate:
    """A mean over n units with its interval; ``low``/``high`` None and ``note`` saying why when refused."""

    mean: float
    low: float | None
    high: float | None
    n: int
    note: str = ""

    @property
    def half(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2


def t_interval(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """The mean of ``values`` and its Student-t interval (refused for fewer than 2 values)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("t_interval of no values")
    mean = float(x.mean())
    if x.size < 2:
        return Estimate(mean, None, None, 1, "1 seed: no interval (the spread over seeds needs 2 or more)")
    half = float(sps.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Estimate(mean, mean - half, mean + half, int(x.size))


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial test of k successes in n trials at p = 1/2 (1.0 when n is 0)."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact McNemar test: b pairs right only under A, c right only under B (concordant pairs carry
    no information)."""
    return binomial_two_sided(b, b + c)


@dataclass(frozen=True)
class SignTest:
    p: float
    positive: int
    negative: int
    ties: int


def sign_test(diffs: Sequence[float]) -> SignTest:
    """Sign test of per-seed differences: ties (0) are dropped, then the exact binomial test."""
    pos = sum(d > 0 for d in diffs)
    neg = sum(d < 0 for d in diffs)
    return SignTest(binomial_two_sided(pos, pos + neg), pos, neg, len(diffs) - pos - neg)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order (NaN entries stay NaN and do not count in m)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[i]))
        out[i] = running
    return out


def mde(se: float, df: int | None = None, alpha: float = 1 - LEVEL, power: float = POWER) -> float:
    """Minimum detectable effect: (q(1 − α/2) + q(power)) · se; Student's t quantiles with ``df``."""
    q = (lambda p: sps.t.ppf(p, df)) if df is not None else sps.norm.ppf
    return float((q(1 - alpha / 2) + q(power)) * se)


Aggregate = Callable[[list], float]


def _stat(values: np.ndarray | list[list], agg: Aggregate | None, seeds: np.ndarray, examples: np.ndarray) -> float:
    """The mean over ``seeds`` of each seed's aggregate over ``examples`` (``agg`` None: the mean,
    ``values`` an array)."""
    if agg is None:
        return float(values[np.ix_(seeds, examples)].mean())
    return float(np.mean([agg([values[s][e] for e in examples]) for s in seeds]))


@dataclass(frozen=True)
class Bootstrap:
    estimate: float
    low: float
    high: float
    se: float
    p: float  # of the estimate being 0 (meaningful for differences)


def bootstrap(a: list[list], b: list[list] | None = None, agg: Aggregate | None = None,
              replicates: int = B, level: float = LEVEL, seed: int = 0) -> Bootstrap:
    """Two-level bootstrap of the mean over seeds of an aggregate over examples: ``a[s][e]`` is seed
    s's value on example e. With ``b`` (the same shape, seeds paired row by row, examples column
    by column) the statistic is the paired difference A − B, resampling pairs. One seed: examples only."""
    rng = np.random.default_rng(seed)
    n_seeds, n_ex = len(a), len(a[0])
    if b is not None and (len(b) != n_seeds or len(b[0]) != n_ex):
        raise ValueError("paired bootstrap needs two equally shaped tables")
    all_s, all_e = np.arange(n_seeds), np.arange(n_ex)
    if agg is None:
        a, b = np.asarray(a, dtype=float), None if b is None else np.asarray(b, dtype=float)

    def stat(s: np.ndarray, e: np.ndarray) -> float:
        return _stat(a, agg, s, e) - (0.0 if b is None else _stat(b, agg, s, e))

    est = stat(all_s, all_e)
    draws = np.empty(replicates)
    for r in range(replicates):
        s = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else all_s
        draws[r] = stat(s, rng.integers(0, n_ex, n_ex))
    draws = draws[~np.isnan(draws)]
    if draws.size == 0:
        return Bootstrap(est, math.nan, math.nan, math.nan, math.nan)
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    p = (1 + np.sum(np.abs(draws - est) >= abs(est))) / (draws.size + 1)
    return Bootstrap(est, float(low), float(high), float(draws.std(ddof=1)), float(min(1.0, p)))


__all__ = ["B", "Bootstrap", "Estimate", "LEVEL", "POWER", "SignTest", "binomial_two_sided", "bootstrap", "holm",
           "mcnemar_exact", "mde", "sign_test", "t_interval"]
