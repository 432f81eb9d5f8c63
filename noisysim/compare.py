"""Compare groups of runs (usually learning rules over seeds) with statistics.

    compare(paths, by="rule.name", metric="eval/test_accuracy", baseline="danp")
        -> Comparison (dataclasses; .to_dict() is what ``noisysim compare --json`` prints)
    format_comparison(comparison) -> str (the tables ``noisysim compare`` prints)

Per run, from its whole ``metric`` curve against ``step`` (the updates done):
    final   the value at the last logged update
    best    the highest value logged (the lowest when lower is better)
    auc     area under the curve over the updates every compared run covers, divided by
            that span: the mean level of the metric there (noisysim.stats.area_under_curve)
    updates to reach a threshold (first logged update at which it was reached; inf: never)
    samples to reach it = updates x train.batch_size (the short last batch of an epoch
            counts as full: an overestimate by less than one batch per epoch)
Per group: n, mean, std, median and a confidence interval over its runs for each of these
(noisysim.stats.describe); runs that never reach the threshold are counted, not dropped.
Between groups, for one measure (final by default): the difference of means with its
interval and a test of "no difference": paired t (and Wilcoxon signed-rank) when the two
groups ran exactly the same seeds, Welch's t otherwise; an effect size; Holm's adjustment
over all the pairs shown (every group against ``baseline``, or every pair without one).

Whether higher is better follows the metric's name (lower for names containing "loss" or
"error") unless ``higher`` says otherwise. Runs that differ in config keys other than the
grouping keys and the replicate keys are refused unless ``pool`` (noisysim.analysis).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np

from noisysim import stats
from noisysim.analysis import (
    AnalysisWarning,
    _as_list,
    _cell,
    format_table,
    get_config_value,
    group_label,
    load_groups,
    run_curve,
)
from noisysim.errors import NoisysimError, check_choice, check_number
from noisysim.record import split_metric

MEASURES = ("final", "best", "auc")


@dataclass(frozen=True)
class GroupComparison:
    """One group: its runs and the statistics of each per-run measure.

    ``per_run`` maps "final", "best", "auc" and "updates" (inf: threshold never reached) to
    one number per run, in the order of ``files`` and ``seeds``. ``updates`` and ``samples``
    are None without a threshold (``samples`` also when a run's config has no batch size).
    """

    values: dict[str, Any]
    label: str
    files: tuple[str, ...]
    seeds: tuple[int, ...]
    final: stats.GroupStats
    best: stats.GroupStats
    auc: stats.GroupStats
    updates: stats.Reach | None
    samples: stats.Reach | None
    per_run: dict[str, tuple[float, ...]]


@dataclass(frozen=True)
class PairComparison:
    """Group ``a`` minus group ``b`` on ``measure``; ``reason`` says why this test."""

    a: str
    b: str
    measure: str
    difference: stats.Difference
    reason: str
    p_holm: float


@dataclass(frozen=True)
class Comparison:
    """Everything ``noisysim compare`` prints, as data."""

    metric: str
    by: tuple[str, ...]
    measure: str
    higher: bool
    level: float
    bootstrap: bool
    baseline: str | None
    threshold: float | None
    threshold_source: str
    span: tuple[float, float]
    groups: list[GroupComparison]
    pairs: list[PairComparison]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (inf and NaN become None)."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _higher_is_better(metric: str) -> bool:
    name = split_metric(metric)[1].lower()
    return not ("loss" in name or "error" in name)


def compare(
    paths,
    by: str | Sequence[str] | None = ("rule.name",),
    metric: str = "eval/test_accuracy",
    *,
    baseline: str | None = None,
    measure: str = "final",
    threshold: float | None = None,
    threshold_fraction: float | None = None,
    higher: bool | None = None,
    level: float = stats.LEVEL,
    bootstrap: bool = False,
    where: Sequence[str] = (),
    pool: bool = False,
    seed: int = 0,
) -> Comparison:
    """Statistics of ``metric`` per group of ``by`` values and differences between groups.

    ``threshold``: a value of the metric; ``threshold_fraction``: a fraction of the best
    group's mean final value (e.g. 0.9; for a lower-is-better metric give a factor > 1).
    ``bootstrap`` uses BCa bootstrap intervals (seeded by ``seed``) instead of t intervals.
    ``where``: ``KEY=VALUE`` filters of the runs (noisysim.analysis.select_runs). Every
    group needs at least 2 runs. See the module docstring for the definitions.
    """
    check_choice("measure", measure, MEASURES)
    level = check_number("level", level, 0, 1, lo_open=True, hi_open=True)
    if threshold is not None and threshold_fraction is not None:
        raise NoisysimError("give a threshold or a threshold fraction, not both")
    if threshold is not None:
        threshold = check_number("threshold", threshold)
    if threshold_fraction is not None:
        threshold_fraction = check_number("threshold fraction", threshold_fraction, 0,
                                          lo_open=True)
    by = _as_list(by)
    higher = _higher_is_better(metric) if higher is None else bool(higher)
    runs = _read_groups(paths, by, metric, where, pool)

    every = [run for _, _, members in runs for run in members]
    start, stop = max(r.x[0] for r in every), min(r.x[-1] for r in every)
    if not stop > start:
        raise NoisysimError(
            f"the runs share no span of updates to integrate {metric} over (they cover "
            f"[{start:g}, ...] and [..., {stop:g}]); compare runs of the same length"
        )
    if any(r.x[0] != start or r.x[-1] != stop for r in every):
        warnings.warn(f"runs cover different updates; the area under the curve uses "
                      f"[{start:g}, {stop:g}], which every run covers", AnalysisWarning,
                      stacklevel=2)
    for label, _, members in runs:
        bad = [r.path for r in members if not math.isfinite(r.y[-1])]
        if bad:
            warnings.warn(f"group {label}: final {metric} is not finite in {', '.join(bad)} "
                          "(diverged?); its statistics are NaN", AnalysisWarning, stacklevel=2)
    source = "none" if threshold is None else "given"
    if threshold_fraction is not None:
        threshold, source = _fraction_threshold(runs, threshold_fraction, higher, metric)

    out_groups = []
    for gi, (label, values, members) in enumerate(runs):
        def describe(v, what):
            return stats.describe(v, level, bootstrap=bootstrap, seed=seed + gi,
                                  what=f"group {label} ({what})")

        per_run = {
            "final": tuple(float(r.y[-1]) for r in members),
            "best": tuple(_best(r.y, higher) for r in members),
            "auc": tuple(stats.area_under_curve(r.x, r.y, start, stop) for r in members),
        }
        updates = samples = None
        if threshold is not None:
            per_run["updates"] = tuple(stats.updates_to_reach(r.x, r.y, threshold, higher)
                                       for r in members)
            updates = stats.reach(per_run["updates"], threshold, level, bootstrap=bootstrap,
                                  seed=seed + gi)
            if all(r.batch_size is not None for r in members):
                per_sample = [u * r.batch_size for u, r in zip(per_run["updates"], members)]
                samples = stats.reach(per_sample, threshold, level, bootstrap=bootstrap,
                                      seed=seed + gi)
        out_groups.append(GroupComparison(
            values=dict(values), label=label, files=tuple(r.path for r in members),
            seeds=tuple(r.seed for r in members),
            final=describe(per_run["final"], "final"), best=describe(per_run["best"], "best"),
            auc=describe(per_run["auc"], "auc"), updates=updates, samples=samples,
            per_run=per_run))

    labels = [g.label for g in out_groups]
    if baseline is not None:
        if baseline not in labels:
            raise NoisysimError(f"baseline {baseline!r} is not a group; the groups are "
                                f"{', '.join(map(repr, labels))}")
        base = out_groups[labels.index(baseline)]
        pairs_of = [(g, base) for g in out_groups if g is not base]
    else:
        pairs_of = [(a, b) for i, a in enumerate(out_groups) for b in out_groups[i + 1:]]
    pairs = []
    for k, (a, b) in enumerate(pairs_of):
        diff, reason = _difference(a, b, measure, level, bootstrap, seed + 1000 + k)
        pairs.append((a.label, b.label, diff, reason))
    adjusted = stats.holm([d.p for _, _, d, _ in pairs])
    return Comparison(
        metric=metric, by=tuple(by), measure=measure, higher=higher, level=level,
        bootstrap=bootstrap, baseline=baseline, threshold=threshold, threshold_source=source,
        span=(float(start), float(stop)), groups=out_groups,
        pairs=[PairComparison(a, b, measure, d, reason, float(p))
               for (a, b, d, reason), p in zip(pairs, adjusted)])


class _Run(NamedTuple):
    """One run's curve of the metric against the updates done, and what identifies it."""

    path: str
    seed: int
    batch_size: int | None
    x: np.ndarray  # updates (the "step" series), ascending
    y: np.ndarray  # the metric


def _read_groups(paths, by: list[str], metric: str, where: Sequence[str],
                 pool: bool) -> list[tuple[str, dict[str, Any], list[_Run]]]:
    """(label, by values, runs) per group; a group of one run has no interval: refused."""
    _, name = split_metric(metric)
    out = []
    for values, members in load_groups(paths, by, metric, need=("step",), where=where,
                                       pool=pool):
        label = group_label(values) if by else "all runs"
        if len(members) < 2:
            raise NoisysimError(
                f"group {label} has 1 run ({members[0][0].path}); confidence intervals need "
                "at least 2 runs per group: run more seeds or group by fewer keys"
            )
        runs = []
        for traj, table in members:
            x, y = run_curve(table, name, "step")
            runs.append(_Run(str(traj.path), traj.seed,
                             get_config_value(traj.config, "train.batch_size", None),
                             x.astype(np.float64), y.astype(np.float64)))
        out.append((label, values, runs))
    return out


def _fraction_threshold(runs, fraction: float, higher: bool, metric: str) -> tuple[float, str]:
    """fraction x the best group's mean final value, and a sentence saying so."""
    means = {label: float(np.mean([r.y[-1] for r in members])) for label, _, members in runs}
    means = {label: m for label, m in means.items() if math.isfinite(m)}
    if not means:
        raise NoisysimError(f"no group has a finite mean final {metric} to take a fraction "
                            "of; give --threshold instead")
    best = (max if higher else min)(means, key=means.__getitem__)
    return (fraction * means[best],
            f"{fraction:g} x the best group's mean final value ({best}: {means[best]:.4g})")


def _best(y: np.ndarray, higher: bool) -> float:
    if not np.any(np.isfinite(y)):
        return math.nan
    return float(np.nanmax(y) if higher else np.nanmin(y))


def _difference(a: GroupComparison, b: GroupComparison, measure: str, level: float,
                bootstrap: bool, seed: int) -> tuple[stats.Difference, str]:
    """Paired test when both groups ran exactly the same seeds (each once), Welch otherwise."""
    va, vb = a.per_run[measure], b.per_run[measure]
    same = sorted(a.seeds) == sorted(b.seeds) and len(set(a.seeds)) == len(a.seeds)
    if same:
        by_seed = dict(zip(b.seeds, vb))
        diff = stats.paired_difference(va, [by_seed[s] for s in a.seeds], level,
                                       bootstrap=bootstrap, seed=seed)
        return diff, f"same seeds ({_seeds(a.seeds)}): paired"
    if len(set(a.seeds)) != len(a.seeds) or len(set(b.seeds)) != len(b.seeds):
        why = "a seed repeats within a group"
    else:
        why = f"seeds differ ({a.label}: {_seeds(a.seeds)}; {b.label}: {_seeds(b.seeds)})"
    return stats.welch_difference(va, vb, level, bootstrap=bootstrap, seed=seed), \
        f"{why}: unpaired"


def _seeds(seeds: Sequence[int]) -> str:
    return ",".join(map(str, sorted(seeds)))


# --------------------------------------------------------------------------------------
# printing


def _num(value: float | None) -> str:
    return "-" if value is None else _cell(float(value), 4)


def _ci(interval: stats.Interval) -> str:
    return f"[{_num(interval.low)}, {_num(interval.high)}]"


def _reach_cell(r: stats.Reach | None) -> str:
    if r is None:
        return "-"
    n = len(r.per_run)
    if r.stats is not None:
        text = f"{_num(r.stats.mean)} {_ci(r.stats.ci)}"
    elif r.n_reached == 1:
        text = _num(next(v for v in r.per_run if math.isfinite(v)))
    else:
        text = "never"
    return f"{text} ({r.n_reached}/{n} reached)"


def format_comparison(c: Comparison) -> str:
    """The tables ``noisysim compare`` prints: groups, efficiency, differences."""
    pct = f"{c.level * 100:g}%"
    how = "BCa bootstrap" if c.bootstrap else "t"
    direction = "higher" if c.higher else "lower"
    n = sum(len(g.files) for g in c.groups)
    out = [f"{c.metric} by {', '.join(c.by) or '(no key)'}: {len(c.groups)} groups, {n} runs; "
           f"{pct} confidence intervals of the mean over runs ({how}); {direction} is better",
           ""]
    key = ", ".join(c.by) or "group"
    # column names avoid format_table's mean/std/n, which it moves to the end
    rows = [{key: g.label, "runs": g.final.n, "final mean": g.final.mean,
             "final std": g.final.std, f"{pct} CI": _ci(g.final.ci), "median": g.final.median}
            for g in c.groups]
    out += ["final value (last logged update)", format_table(rows), ""]

    rows = []
    for g in c.groups:
        row = {key: g.label, "best": g.best.mean, f"best {pct} CI": _ci(g.best.ci),
               "AUC": g.auc.mean, f"AUC {pct} CI": _ci(g.auc.ci)}
        if c.threshold is not None:
            row["updates to threshold"] = _reach_cell(g.updates)
            row["samples to threshold"] = _reach_cell(g.samples)
        rows.append(row)
    out += ["efficiency, mean and interval over runs:",
            f"  best: the best logged value; AUC: mean of the metric over updates "
            f"{c.span[0]:g}..{c.span[1]:g} (trapezoid, divided by the span)",
            (f"  to threshold {c.threshold:.4g} ({c.threshold_source}): first logged update "
             "at which a run reached it (samples = updates x batch size), over the runs that "
             "reached it" if c.threshold is not None else
             "  no threshold given (--threshold or --threshold-fraction)"),
            format_table(rows), ""]

    if not c.pairs:
        return "\n".join(out).rstrip()
    against = f"against {c.baseline}" if c.baseline else "between every pair"
    rows = []
    for p in c.pairs:
        d = p.difference
        rows.append({"difference": f"{p.a} - {p.b}", "estimate": d.estimate,
                     f"{pct} CI": _ci(d.ci), "test": d.test, "p": d.p, "p Holm": p.p_holm,
                     "Wilcoxon p": "-" if d.wilcoxon_p is None else _num(d.wilcoxon_p),
                     "effect": f"{d.effect_name} {_num(d.effect)}", "why": p.reason})
    out += [f"differences in {c.measure} value {against}: paired t test (and Wilcoxon "
            "signed-rank) when both groups ran the same seeds, Welch's t test otherwise; "
            f"p Holm: adjusted over the {len(c.pairs)} comparisons shown",
            format_table(rows)]
    few = min((p.difference.n_a for p in c.pairs if p.difference.wilcoxon_p is not None),
              default=None)
    if few is not None and few < 6:
        # exact two-sided signed-rank test: the most extreme of 2^n sign patterns has p = 2/2^n
        out.append(f"note: with {few} pairs the Wilcoxon signed-rank p-value cannot go below "
                   f"{2.0 ** (1 - few):.3g}; it needs at least 6 seeds to reach 0.05")
    return "\n".join(out)


