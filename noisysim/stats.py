"""Statistics over per-run numbers: intervals, tests between groups, efficiency of a curve.

Pure functions over plain numbers (one number per run, usually one run per seed); reading
trajectories and grouping runs is noisysim.compare's job. scipy.stats does the tests and the
intervals; this module chooses among them and names what it chose.

Group of n runs with values v_i (``describe``):
    mean m, sample std s (ddof 1), median, and a confidence interval for the mean:
    t interval  m +- t_{(1+level)/2, n-1} s / sqrt(n)  (exact for normal v_i), or
    bootstrap   scipy.stats.bootstrap, BCa, 9,999 resamples (seeded: reruns give the same
                interval). With the few seeds usual here a bootstrap interval is too
                narrow (it cannot reach beyond the resampled values; with 3 values the t
                quantile is 4.30, not 1.96); prefer the t interval.
    n = 1 has no interval: NoisysimError.

Difference of group a against group b (``paired_difference``, ``welch_difference``):
    paired (the runs of a and b share seeds, matched seed by seed; d_i = a_i - b_i):
        paired t test (scipy.stats.ttest_rel), CI of mean(d), Wilcoxon signed-rank p
        (scipy.stats.wilcoxon, exact for small n; it ignores zero differences) as a check
        that does not assume normal d_i; effect size d_z = mean(d) / std(d, ddof 1).
    unpaired (Welch): t test with unequal variances (scipy.stats.ttest_ind, equal_var
        False), Welch-Satterthwaite df, CI of mean(a) - mean(b); effect size Cohen's d =
        (mean(a) - mean(b)) / s_p with the pooled std
        s_p = sqrt(((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2)).
    Several pairs: ``holm`` adjusts the p-values (Holm 1979, controls the family-wise error).

Efficiency of one learning curve y(x), x = updates (``updates_to_reach``, ``area_under_curve``):
    updates to reach a threshold: the first logged x whose y has reached it (y >= threshold
        when higher is better, <= otherwise). The resolution is the logging interval: the
        run reached it after the previous logged x and at or before this one. A run that
        never reaches it gives inf ("not reached"); NaN rows never count as reaching.
    area under the curve, normalised by its span:
        AUC = (1 / (x1 - x0)) * integral_{x0}^{x1} y dx   (trapezoid rule on the logged
        points, y interpolated linearly at x0 and x1), i.e. the mean level of the metric over
        the updates [x0, x1], in the metric's units. Curves are only comparable over the same
        span; noisysim.compare uses the span every compared run covers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _st

from noisysim.errors import NoisysimError

LEVEL = 0.95
N_RESAMPLES = 9999  # bootstrap resamples (scipy's default)


@dataclass(frozen=True)
class Interval:
    """A confidence interval [low, high] at ``level`` made by ``method``."""

    low: float
    high: float
    level: float
    method: str  # "t" or "bootstrap BCa"


@dataclass(frozen=True)
class GroupStats:
    """n, mean, sample std (ddof 1), median and the confidence interval of the mean."""

    n: int
    mean: float
    std: float
    median: float
    ci: Interval


@dataclass(frozen=True)
class Difference:
    """Group a minus group b: the estimate, its interval and the test of "no difference".

    ``test`` is "paired t" or "Welch t"; ``wilcoxon_p`` is the Wilcoxon signed-rank p-value
    of a paired comparison (None for Welch); ``effect`` is d_z (paired) or Cohen's d (Welch),
    named by ``effect_name``.
    """

    estimate: float
    ci: Interval
    test: str
    statistic: float
    df: float
    p: float
    wilcoxon_p: float | None
    effect: float
    effect_name: str
    n_a: int
    n_b: int


@dataclass(frozen=True)
class Reach:
    """When the runs of a group first reached a threshold (inf: never).

    ``per_run`` keeps every run (inf for those that never reached it); ``stats`` describes
    the runs that reached it (None when fewer than 2 did); ``median`` is over all runs with
    inf for the others, so it is finite only when more than half of them reached it.
    """

    threshold: float
    per_run: tuple[float, ...]
    n_reached: int
    n_not_reached: int
    stats: GroupStats | None
    median: float


# --------------------------------------------------------------------------------------
# one group


def _as_values(values: Sequence[float], what: str, minimum: int = 2) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise NoisysimError(f"{what}: expected one number per run, got an array of shape {v.shape}")
    if v.shape[0] < minimum:
        raise NoisysimError(
            f"{what}: a confidence interval needs at least {minimum} runs, got {v.shape[0]}; "
            "run more seeds (e.g. noisysim sweep ... --grid seed=0,1,2)"
        )
    return v


def t_halfwidth(std, n, level: float = LEVEL):
    """Half-width t_{(1+level)/2, n-1} * std / sqrt(n) of the t interval (NaN where n < 2).

    Works elementwise on arrays (a band around a mean curve).
    """
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = _st.t.ppf(0.5 + level / 2, np.where(n >= 2, n - 1, np.nan))
        return q * np.asarray(std, dtype=np.float64) / np.sqrt(n)


def _bootstrap(data: tuple[np.ndarray, ...], statistic, level: float, seed: int) -> Interval:
    if all(np.ptp(d) == 0 for d in data):  # every resample gives the same number
        value = float(statistic(*data, axis=-1))
        return Interval(value, value, level, "bootstrap BCa")
    res = _st.bootstrap(data, statistic, confidence_level=level, n_resamples=N_RESAMPLES,
                        method="BCa", random_state=np.random.default_rng(seed))
    ci = res.confidence_interval
    return Interval(float(ci.low), float(ci.high), level, "bootstrap BCa")


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _mean_difference(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def describe(values: Sequence[float], level: float = LEVEL, *, bootstrap: bool = False,
             seed: int = 0, what: str = "values") -> GroupStats:
    """n, mean, std (ddof 1), median and the ``level`` interval of the mean of ``values``.

    t interval by default, BCa bootstrap with ``bootstrap`` (seeded by ``seed``). NaN
    values make every number NaN. Fewer than 2 values: NoisysimError naming ``what``.
    """
    v = _as_values(values, what)
    n, mean, std = v.shape[0], float(np.mean(v)), float(np.std(v, ddof=1))
    if not np.all(np.isfinite(v)):
        ci = Interval(math.nan, math.nan, level, "bootstrap BCa" if bootstrap else "t")
    elif bootstrap:
        ci = _bootstrap((v,), _mean, level, seed)
    else:
        half = float(t_halfwidth(std, n, level))
        ci = Interval(mean - half, mean + half, level, "t")
    return GroupStats(n, mean, std, float(np.median(v)), ci)


# --------------------------------------------------------------------------------------
# two groups


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL, *,
                      bootstrap: bool = False, seed: int = 0) -> Difference:
    """a - b for runs matched one to one (a[i] and b[i] ran the same seed).

    Paired t test (scipy.stats.ttest_rel, computed as ttest_1samp of d = a - b) with its t
    interval of mean(d) (or a BCa bootstrap interval), the Wilcoxon signed-rank p-value and
    d_z = mean(d) / std(d). Differences that are all equal give t = +-inf and p = 0 (or NaN
    when all are 0) and a zero-width interval.
    """
    a, b = _as_values(a, "paired group a"), _as_values(b, "paired group b")
    if a.shape != b.shape:
        raise NoisysimError(f"a paired comparison needs one b per a, got {a.size} and {b.size}")
    d = a - b
    if np.ptp(d) <= 8 * np.finfo(np.float64).eps * np.max(np.abs(d)):
        # Differences equal up to rounding (accuracies k/n on a small test set): a spread of
        # a few ulp would give a huge, meaningless t. It is the zero spread it stands for.
        d = np.full_like(d, np.mean(d))
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        # constant differences: scipy warns and answers inf (p 0) or NaN, which we report
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _st.ttest_1samp(d, 0.0)  # = ttest_rel(a, b), on the d above
        ci = res.confidence_interval(level)
        wil = _st.wilcoxon(d).pvalue if np.any(d != 0) else math.nan
        effect = float(np.mean(d) / np.std(d, ddof=1))
    interval = (_bootstrap((d,), _mean, level, seed) if bootstrap
                else Interval(float(ci.low), float(ci.high), level, "t"))
    return Difference(float(np.mean(d)), interval, "paired t", float(res.statistic),
                      float(res.df), float(res.pvalue), float(wil), effect, "d_z",
                      a.size, b.size)


def welch_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL, *,
                     bootstrap: bool = False, seed: int = 0) -> Difference:
    """mean(a) - mean(b) for independent runs: Welch's t test and interval, Cohen's d."""
    a, b = _as_values(a, "group a"), _as_values(b, "group b")
    na, nb = a.size, b.size
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _st.ttest_ind(a, b, equal_var=False)
        ci = res.confidence_interval(level)
        pooled = math.sqrt(((na - 1) * np.var(a, ddof=1) + (nb - 1) * np.var(b, ddof=1))
                           / (na + nb - 2))
        effect = float(np.float64(np.mean(a) - np.mean(b)) / pooled)
    interval = (_bootstrap((a, b), _mean_difference, level, seed) if bootstrap
                else Interval(float(ci.low), float(ci.high), level, "t"))
    return Difference(float(np.mean(a) - np.mean(b)), interval, "Welch t", float(res.statistic),
                      float(res.df), float(res.pvalue), None, effect, "Cohen's d", na, nb)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment: with p sorted ascending, p_adj(i) = max_{j<=i} min(1,
    (m - j + 1) p(j)) (1-based j), returned in the input order. NaN p-values stay NaN and
    do not count in m."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


# --------------------------------------------------------------------------------------
# one curve


def _curve(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise NoisysimError(f"a curve needs x and y of one equal length, got {x.shape} and {y.shape}")
    if np.any(np.diff(x) <= 0):
        raise NoisysimError("a curve's x values (updates) must increase strictly")
    return x, y


def updates_to_reach(x: Sequence[float], y: Sequence[float], threshold: float,
                     higher: bool = True) -> float:
    """First x at which y has reached ``threshold`` (>= when ``higher``, else <=); inf if never."""
    x, y = _curve(x, y)
    with np.errstate(invalid="ignore"):
        hit = y >= threshold if higher else y <= threshold  # NaN compares False
    idx = np.flatnonzero(hit)
    return float(x[idx[0]]) if idx.size else math.inf


def area_under_curve(x: Sequence[float], y: Sequence[float], start: float | None = None,
                     stop: float | None = None) -> float:
    """(1 / (stop - start)) * integral of y over [start, stop] (trapezoid, linear y between
    logged points): the mean level of y over that span. Default span: the curve's own."""
    x, y = _curve(x, y)
    start = float(x[0]) if start is None else float(start)
    stop = float(x[-1]) if stop is None else float(stop)
    if not x[0] <= start < stop <= x[-1]:
        raise NoisysimError(
            f"area under the curve over [{start:g}, {stop:g}] needs a span inside the logged "
            f"updates [{x[0]:g}, {x[-1]:g}] with start < stop"
        )
    inside = (x > start) & (x < stop)
    xs = np.concatenate([[start], x[inside], [stop]])
    ys = np.concatenate([[np.interp(start, x, y)], y[inside], [np.interp(stop, x, y)]])
    return float(np.trapezoid(ys, xs) / (stop - start))


def reach(per_run: Sequence[float], threshold: float, level: float = LEVEL, *,
          bootstrap: bool = False, seed: int = 0) -> Reach:
    """Summarise updates-to-threshold values of a group's runs (inf: never reached)."""
    v = np.asarray(per_run, dtype=np.float64)
    done = v[np.isfinite(v)]
    summary = (describe(done, level, bootstrap=bootstrap, seed=seed) if done.size >= 2
               else None)
    return Reach(float(threshold), tuple(float(t) for t in v), int(done.size),
                 int(v.size - done.size), summary, float(np.median(v)) if v.size else math.nan)
