"""noisysim.stats against plain formulas (numpy + the t distribution's quantiles) and hand-
computed values; the rejection rates of its tests against their exact or bracketed
probabilities (calibration, repeated on the functions directly for speed)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as st

from noisysim import stats
from noisysim.errors import NoisysimError

A = np.array([0.712, 0.745, 0.698, 0.803, 0.731])
B = np.array([0.690, 0.741, 0.671, 0.772, 0.735])
C = np.array([0.52, 0.61, 0.44, 0.70, 0.58, 0.49, 0.66])
REL = 1e-12  # the same formulas in another order: only rounding differs


def plain_t_interval(v, level=0.95):
    n = len(v)
    mean = sum(v) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    half = st.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def test_describe_equals_the_plain_t_interval():
    for values in (A, C, [2.0, 4.0]):
        g = stats.describe(values)
        mean, sd, lo, hi = plain_t_interval(list(values))
        assert (g.n, g.median) == (len(values), float(np.median(values)))
        assert g.mean == pytest.approx(mean, rel=REL) and g.std == pytest.approx(sd, rel=REL)
        assert (g.ci.low, g.ci.high) == (pytest.approx(lo, rel=REL), pytest.approx(hi, rel=REL))
        assert g.ci.method == "t" and g.ci.level == 0.95
    # 90%: a narrower interval from the 0.95 quantile
    g90 = stats.describe(A, 0.90)
    assert g90.ci.high == pytest.approx(plain_t_interval(list(A), 0.90)[3], rel=REL)
    assert g90.ci.high < stats.describe(A).ci.high
    same = stats.describe([0.5, 0.5, 0.5])  # no spread: the interval is the point
    assert (same.ci.low, same.ci.high) == (0.5, 0.5)


def test_describe_bootstrap_is_scipys_bca_and_seeded():
    g = stats.describe(C, bootstrap=True, seed=7)
    ref = st.bootstrap((C,), np.mean, method="BCa", n_resamples=stats.N_RESAMPLES,
                       random_state=np.random.default_rng(7)).confidence_interval
    assert (g.ci.low, g.ci.high, g.ci.method) == (ref.low, ref.high, "bootstrap BCa")
    assert stats.describe(C, bootstrap=True, seed=7) == g  # same seed, same interval
    assert g.ci.low < g.mean < g.ci.high


def test_one_value_has_no_interval():
    with pytest.raises(NoisysimError, match=r"group x: .*at least 2 runs, got 1.*seed"):
        stats.describe([0.7], what="group x")


def test_paired_difference_equals_the_plain_formulas():
    d = list(A - B)
    n = len(d)
    mean, sd, lo, hi = plain_t_interval(d)
    t = mean / (sd / math.sqrt(n))
    res = stats.paired_difference(A, B)
    assert res.test == "paired t" and res.effect_name == "d_z" and res.df == n - 1
    assert res.estimate == pytest.approx(mean, rel=REL)
    assert res.statistic == pytest.approx(t, rel=REL)
    assert res.p == pytest.approx(2 * st.t.sf(abs(t), n - 1), rel=1e-9)
    assert (res.ci.low, res.ci.high) == (pytest.approx(lo, rel=REL), pytest.approx(hi, rel=REL))
    assert res.effect == pytest.approx(mean / sd, rel=REL)
    # Wilcoxon signed-rank, exact: every one of the 2^n sign patterns is equally likely
    # under "no difference"; p = share of patterns at least as far from n(n+1)/4 as observed.
    ranks = st.rankdata(np.abs(d))
    observed = sum(r for r, x in zip(ranks, d) if x > 0)
    centre = n * (n + 1) / 4
    extreme = sum(abs(sum(r for r, s in zip(ranks, signs) if s) - centre)
                  >= abs(observed - centre) - 1e-12
                  for signs in itertools.product([0, 1], repeat=n))
    assert res.wilcoxon_p == pytest.approx(extreme / 2 ** n, rel=REL)


def test_paired_differences_equal_up_to_rounding_have_zero_spread():
    # 0.31 - 0.30 and 0.52 - 0.51 differ in the last bits; both are the difference 0.01
    res = stats.paired_difference([0.31, 0.52, 0.73], [0.30, 0.51, 0.72])
    assert (res.statistic, res.p, res.effect) == (math.inf, 0.0, math.inf)
    assert res.ci.low == res.ci.high == res.estimate == pytest.approx(0.01, rel=1e-12)
    same = stats.paired_difference([0.5, 0.6], [0.5, 0.6])
    assert math.isnan(same.p) and math.isnan(same.wilcoxon_p) and same.estimate == 0.0


def test_welch_difference_equals_the_plain_formulas():
    na, nb = len(A), len(C)
    va, vb = np.var(A, ddof=1), np.var(C, ddof=1)
    se = math.sqrt(va / na + vb / nb)
    df = se ** 4 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    diff = A.mean() - C.mean()
    half = st.t.ppf(0.975, df) * se
    pooled = math.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
    res = stats.welch_difference(A, C)
    assert res.test == "Welch t" and res.wilcoxon_p is None and res.effect_name == "Cohen's d"
    assert res.df == pytest.approx(df, rel=REL)
    assert res.statistic == pytest.approx(diff / se, rel=REL)
    assert res.p == pytest.approx(2 * st.t.sf(abs(diff / se), df), rel=1e-9)
    assert res.ci.low == pytest.approx(diff - half, rel=REL)
    assert res.ci.high == pytest.approx(diff + half, rel=REL)
    assert res.effect == pytest.approx(diff / pooled, rel=REL)
    boot = stats.welch_difference(A, C, bootstrap=True, seed=3)
    assert boot.ci.method == "bootstrap BCa" and boot.ci.low < diff < boot.ci.high
    assert boot.p == res.p  # the test is the same; only the interval changes


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max
    # 0.02, 0.03, 0.06, 0.06; back in input order:
    got = stats.holm([0.01, 0.04, 0.03, 0.005, math.nan])
    np.testing.assert_allclose(got[:4], [0.03, 0.06, 0.06, 0.02], rtol=REL)
    assert math.isnan(got[4])
    assert stats.holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1
    assert stats.holm([]).size == 0


def test_t_halfwidth_elementwise():
    got = stats.t_halfwidth(np.array([1.0, 2.0, 3.0]), np.array([2, 5, 1]))
    assert got[0] == pytest.approx(st.t.ppf(0.975, 1) / math.sqrt(2), rel=REL)
    assert got[1] == pytest.approx(st.t.ppf(0.975, 4) * 2 / math.sqrt(5), rel=REL)
    assert math.isnan(got[2])


# -- efficiency of one curve ----------------------------------------------------------


def test_updates_to_reach_first_logged_crossing():
    x, y = [0, 10, 20, 30], [0.1, 0.5, 0.8, 0.7]
    assert stats.updates_to_reach(x, y, 0.5) == 10  # reaching counts (>=)
    assert stats.updates_to_reach(x, y, 0.75) == 20
    assert stats.updates_to_reach(x, y, 0.9) == math.inf  # never crosses
    assert stats.updates_to_reach(x, [2.0, math.nan, 0.9, 1.1], 1.0, higher=False) == 20
    # logged every 5 instead of every 10: the crossing is resolved more finely
    assert stats.updates_to_reach([0, 5, 10, 15], [0.1, 0.3, 0.5, 0.6], 0.3) == 5


def test_area_under_curve_by_hand():
    # y = 0 -> 1 linearly over [0, 10], then 1 until 20: area 5 + 10 = 15 over a span of 20
    assert stats.area_under_curve([0, 10, 20], [0, 1, 1]) == pytest.approx(0.75, rel=REL)
    # the same curve logged at other updates gives the same area
    assert stats.area_under_curve([0, 4, 10, 12, 20], [0, 0.4, 1, 1, 1]) == pytest.approx(0.75)
    # over [5, 15]: y(5) = 0.5 interpolated; (0.5 + 1) / 2 * 5 + 1 * 5 = 8.75 over 10
    assert stats.area_under_curve([0, 10, 20], [0, 1, 1], 5, 15) == pytest.approx(0.875)
    with pytest.raises(NoisysimError, match="span inside the logged updates"):
        stats.area_under_curve([0, 10], [0, 1], 0, 30)
    with pytest.raises(NoisysimError, match="increase strictly"):
        stats.area_under_curve([0, 10, 10], [0, 1, 1])


def test_reach_counts_runs_that_never_reach():
    r = stats.reach([100.0, math.inf, 300.0], 0.8)
    assert (r.n_reached, r.n_not_reached, r.median) == (2, 1, 300.0)
    assert r.stats.mean == 200.0 and r.stats.n == 2
    r = stats.reach([100.0, math.inf, math.inf], 0.8)
    assert r.stats is None and r.median == math.inf and r.n_not_reached == 2


# -- calibration ----------------------------------------------------------------------
# Each test repeats a two-group experiment R times with fresh normal data and counts the
# rejections at alpha = 0.05. The count is Binomial(R, p) with p the test's exact rejection
# probability (or inside a bracket [p_lo, p_hi]); the test passes when the count lies in the
# central 1 - 1e-3 range of Binomial(R, p_lo) .. Binomial(R, p_hi), so a correct test
# fails it with probability below 1e-3 (and the seeds are fixed, so it never flakes).

R, ALPHA, MISS = 400, 0.05, 1e-3


def binomial_range(p_lo: float, p_hi: float) -> tuple[int, int]:
    return int(st.binom.ppf(MISS / 2, R, p_lo)), int(st.binom.isf(MISS / 2, R, p_hi))


def power_two_sided(df: float, nc: float, crit_df: float) -> float:
    """P(|T| > t_{1-alpha/2, crit_df}) for T ~ noncentral t(df, nc)."""
    c = st.t.ppf(1 - ALPHA / 2, crit_df)
    return float(st.nct.sf(c, df, nc) + st.nct.cdf(-c, df, nc))


def rejections(shift: float, n: int, paired: bool, seed: int) -> tuple[int, int]:
    """(t rejections, Wilcoxon rejections) over R experiments with true difference shift.

    Paired: a_i = s_i + e_i, b_i = s_i + e'_i with a seed effect s_i shared by both groups
    (it cancels in d_i = a_i - b_i ~ N(shift, 2)). Welch: independent N(shift, 1), N(0, 1).
    """
    rng = np.random.default_rng(seed)
    t_hits = w_hits = 0
    for _ in range(R):
        if paired:
            s = rng.normal(0.0, 3.0, n)
            a, b = s + shift + rng.normal(size=n), s + rng.normal(size=n)
            res = stats.paired_difference(a, b)
            w_hits += res.wilcoxon_p <= ALPHA
        else:
            res = stats.welch_difference(rng.normal(shift, 1.0, n), rng.normal(0.0, 1.0, n))
        t_hits += res.p <= ALPHA
    return t_hits, w_hits


@pytest.mark.parametrize("shift", [0.0, 1.5])
def test_paired_tests_reject_at_their_exact_rate(shift):
    n = 8
    # d_i ~ N(shift, 2): T = mean(d) / (sd(d) / sqrt(n)) ~ noncentral t(n - 1, shift sqrt(n/2))
    p = power_two_sided(n - 1, shift * math.sqrt(n / 2), n - 1)
    t_hits, w_hits = rejections(shift, n, paired=True, seed=11)
    lo, hi = binomial_range(p, p)
    assert lo <= t_hits <= hi, (t_hits, lo, hi, p)
    if shift == 0.0:
        # exact Wilcoxon size: share of the 2^n equally likely sign patterns of n distinct
        # ranks whose two-sided exact p-value is <= alpha (scipy's exact test, n <= 50)
        ranks = np.arange(1, n + 1)
        size = np.mean([st.wilcoxon(ranks * (2 * np.array(s) - 1)).pvalue <= ALPHA
                        for s in itertools.product([0, 1], repeat=n)])
        lo, hi = binomial_range(size, size)
        assert lo <= w_hits <= hi, (w_hits, lo, hi, size)


@pytest.mark.parametrize("shift", [0.0, 1.2])
def test_welch_rejects_within_its_bracket(shift):
    n = 10
    # Equal n and equal variances: Welch's statistic equals Student's pooled T exactly
    # (s_a^2/n + s_b^2/n = s_p^2 (2/n)), so T ~ noncentral t(2n - 2, shift / sqrt(2/n)).
    # Only the critical value differs: Welch's df lies in [n - 1, 2n - 2], so the rejection
    # probability lies between the two rates with those critical values.
    nc = shift / math.sqrt(2 / n)
    p_lo, p_hi = power_two_sided(2 * n - 2, nc, n - 1), power_two_sided(2 * n - 2, nc, 2 * n - 2)
    t_hits, _ = rejections(shift, n, paired=False, seed=12)
    lo, hi = binomial_range(p_lo, p_hi)
    assert lo <= t_hits <= hi, (t_hits, lo, hi, p_lo, p_hi)
