"""reftx.runs.stats against numbers computed by hand, cross-checked with scipy."""
from __future__ import annotations

import math
from dataclasses import astuple

import numpy as np
import pytest
from scipy import stats as sps

from reftx.runs import stats

# Student t quantiles with 2 degrees of freedom have a closed form: t = (2p - 1) / sqrt(2 p (1 - p))
T975_2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # 4.302652729911275
T80_2 = 0.6 / math.sqrt(2 * 0.8 * 0.2)  # 1.0606601717798212


def test_t_interval_by_hand_and_scipy():
    est = stats.t_interval([0.60, 0.64, 0.62])
    # mean 0.62, s = 0.02, half = t(0.975, 2) * 0.02 / sqrt(3)
    half = T975_2 * 0.02 / math.sqrt(3)
    assert (est.mean, est.n, est.note) == (pytest.approx(0.62), 3, "")
    assert (est.low, est.high, est.half) == pytest.approx((0.62 - half, 0.62 + half, half))
    lo, hi = sps.t.interval(0.95, 2, loc=0.62, scale=sps.sem([0.60, 0.64, 0.62]))
    assert (est.low, est.high) == (pytest.approx(lo), pytest.approx(hi))


def test_one_seed_refuses_the_interval_with_the_reason():
    est = stats.t_interval([0.7])
    assert (est.mean, est.low, est.high, est.half, est.n) == (0.7, None, None, None, 1)
    assert est.note == "1 seed: no interval (the spread over seeds needs 2 or more)"
    with pytest.raises(ValueError, match="t_interval of no values"):
        stats.t_interval([])


def test_mcnemar_exact_by_hand_and_scipy():
    # b = 8, c = 2: P(X <= 2), X ~ Bin(10, 1/2) = (1 + 10 + 45) / 1024; two-sided: twice that
    assert stats.mcnemar_exact(8, 2) == 112 / 1024 == sps.binomtest(8, 10).pvalue
    assert stats.mcnemar_exact(2, 8) == 112 / 1024
    assert stats.mcnemar_exact(5, 0) == 2 / 32 == sps.binomtest(5, 5).pvalue
    assert stats.mcnemar_exact(3, 3) == 1.0 == sps.binomtest(3, 6).pvalue  # a tie: 2 * 42/64 capped at 1
    assert stats.mcnemar_exact(0, 0) == 1.0  # no discordant pair: nothing to test


def test_sign_test_drops_ties():
    s = stats.sign_test([0.1, 0.2, 0.0, 0.3, -0.1])  # +3 -1 =1: Bin(4, 1/2), P(X <= 1) = 5/16, twice
    assert (s.positive, s.negative, s.ties, s.p) == (3, 1, 1, 10 / 16)
    assert s.p == sps.binomtest(3, 4).pvalue
    assert stats.sign_test([0.0, 0.0]) == stats.SignTest(1.0, 0, 0, 2)
    assert stats.sign_test([0.2, 0.3, 0.0]).p == 0.5  # three seeds can never reach p < 0.25


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    out = stats.holm([0.01, math.nan])  # a NaN does not count in m
    assert out[0] == 0.01 and math.isnan(out[1])


def test_minimum_detectable_effect_by_hand():
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)  # 1.959964 + 0.841621
    assert z == pytest.approx(2.8015852, abs=1e-7)
    assert stats.mde(0.01) == pytest.approx(z * 0.01)
    assert stats.mde(0.01, df=2) == pytest.approx((T975_2 + T80_2) * 0.01)
    assert stats.mde(0.01, df=2) == pytest.approx((sps.t.ppf(0.975, 2) + sps.t.ppf(0.8, 2)) * 0.01)


def test_bootstrap_constant_and_tied_differences():
    one = stats.bootstrap([[1.0, 1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0, 0.0]], replicates=200)
    assert (one.estimate, one.low, one.high, one.se) == (1.0, 1.0, 1.0, 0.0)
    assert one.p == 1 / 201  # no resample is as far from 1 as 1 is from 0
    tie = stats.bootstrap([[1.0, 0.0, 1.0]], [[1.0, 0.0, 1.0]], replicates=200)
    assert (tie.estimate, tie.p) == (0.0, 1.0)


def test_bootstrap_se_of_a_mean_matches_the_formula_and_is_reproducible():
    x = np.random.default_rng(3).normal(size=200)
    boot = stats.bootstrap([list(x)])
    # one seed: examples only; the bootstrap SE of a mean is about sd (ddof 0) / sqrt(n)
    assert boot.se == pytest.approx(x.std() / math.sqrt(200), rel=0.1)
    assert boot.low < x.mean() < boot.high and boot.estimate == pytest.approx(x.mean())
    assert stats.bootstrap([list(x)]) == boot  # a fixed generator seed
    # a custom aggregate gives the same numbers as the mean fast path
    slow = stats.bootstrap([list(x[:30])], agg=lambda v: sum(v) / len(v), replicates=300)
    assert astuple(slow) == pytest.approx(astuple(stats.bootstrap([list(x[:30])], replicates=300)))


def test_bootstrap_over_seeds_is_wider_than_over_examples():
    rows = [[0.2 + s * 0.3 + 0.01 * e for e in range(20)] for s in range(3)]  # seeds far apart
    both = stats.bootstrap(rows)
    first = stats.bootstrap(rows[:1])
    assert both.high - both.low > 5 * (first.high - first.low)
    with pytest.raises(ValueError, match="equally shaped"):
        stats.bootstrap(rows, rows[:2])
