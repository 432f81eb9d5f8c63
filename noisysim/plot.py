"""Figures from trajectory files: mean curves with confidence bands, and forest plots.

    plot_curves(paths, out_png, ...)   mean curve per group of runs with its 95% t interval
                                       band (n > 1), or every run's curve (``seeds``); one
                                       panel per metric, optional log scale and smoothing
    plot_forest(comparison, out_png)   differences between groups with their intervals

Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it works
headless and inside other programs' matplotlib sessions.
"""

from __future__ import annotations

import csv
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from noisysim.analysis import (
    STAT_KEYS,
    _as_list,
    curves,
    flatten_config,
    group_label,
    select_runs,
)
from noisysim.errors import NoisysimError
from noisysim.record import INDEX_KEYS, Trajectory
from noisysim.stats import LEVEL, t_halfwidth

# config keys named in the title when all plotted runs share them (first match wins)
_DATASET_KEYS = ("data.name", "data.dataset", "dataset.name", "dataset", "data")
# leaf names of shared settings worth a mention under the title
_SETTING_LEAVES = (
    "widths", "activation", "optimizer", "lr", "batch_size", "epochs", "sigma", "noise",
)


@dataclass
class PlotResult:
    """What plot_curves drew: ``curves`` as returned by analysis.curves, one line each."""

    curves: list[dict[str, Any]]
    figure: Figure
    path: Path
    data_path: Path | None = None
    lines: list = field(default_factory=list)  # the Line2D of each curve, same order


def _title(configs: Sequence[dict], by: list[str], metric: str) -> str:
    flat = [flatten_config(c) for c in configs]
    common = {
        k: v
        for k, v in flat[0].items()
        if k not in by and all(k in f and f[k] == v for f in flat[1:])
    }
    dataset = next((common[k] for k in _DATASET_KEYS if isinstance(common.get(k), str)), None)
    head = f"{metric} on {dataset}" if dataset else metric
    if by:
        head += f" by {', '.join(by)}"
    settings = []
    for key, value in common.items():
        leaf = key.rsplit(".", 1)[-1]
        text = str(value)
        named = leaf == "name" and key.split(".")[0] in _SETTING_LEAVES  # e.g. optimizer.name
        if (leaf in _SETTING_LEAVES or named) and len(text) <= 30:
            settings.append(f"{key}={text}")
    # Wrapped so that long settings stay inside the figure.
    lines = textwrap.wrap(", ".join(settings[:6]), width=80) if settings else []
    return "\n".join([head] + lines)


def plot_curves(
    paths,
    out_png: str | os.PathLike,
    metric: str | Sequence[str] = "eval/test_accuracy",
    by: str | Sequence[str] | None = "rule.name",
    x: str = "epoch",
    *,
    where: Sequence[str] = (),
    log: bool = False,
    smooth: int = 1,
    title: str | None = None,
    save_data: bool = True,
    dpi: int = 120,
    seeds: bool = False,
    pool: bool = False,
) -> PlotResult:
    """Plot the mean of ``metric`` against ``x`` for each group of runs; save to ``out_png``.

    ``metric``: one name or several, each in its own panel (stacked, sharing x). Around each
    mean curve of n > 1 runs a band shows the 95% t confidence interval of the mean at each
    x (mean +- t_{0.975, n-1} std / sqrt(n)); with ``seeds`` every run's own curve is drawn
    thin instead. ``where``: ``KEY=VALUE`` filters of the runs (``analysis.select_runs``).
    ``log``: logarithmic y axis. ``smooth``: a trailing moving average over that many points
    of each plotted mean, std and run curve (1 = none), ``m_i = mean(y_{i-w+1..i})`` with
    fewer points at the start; the band is then computed from the smoothed std. ``pool``:
    see analysis.load_groups. The figure format follows the file suffix (.png, .pdf, .svg).
    With ``save_data`` the plotted (smoothed) numbers are also written as CSV beside it
    (same name, suffix .csv): the group columns, x, then per metric ``<metric> mean``,
    ``<metric> std``, ``<metric> 95% CI low`` and ``<metric> 95% CI high``, and n.
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if not metrics:
        raise NoisysimError("plot needs at least one --metric")
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1:
        raise NoisysimError(f"--smooth must be a whole number of points >= 1, got {smooth!r}")
    by_keys = _as_list(by)
    files = select_runs(paths, where)
    panels = [(m, [_smoothed(e, smooth) for e in curves(files, by_keys, m, x=x, pool=pool)])
              for m in metrics]
    out = _output(out_png)

    fig = Figure(figsize=(7, 1.5 + 3 * len(metrics)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    lines = []
    for ax, (m, entries) in zip(axes, panels):
        for entry in entries:
            lines.append(_draw_group(ax, entry, seeds))
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(m + (f" (mean of {smooth})" if smooth > 1 else ""))
        ax.grid(True, alpha=0.3)
        if entries:
            ax.legend(title=", ".join(by_keys) or None, fontsize="small")
            ax.text(0.01, 0.01, _shown(entries, seeds), transform=ax.transAxes,
                    fontsize="x-small", color="0.35", va="bottom")
    axes[-1].set_xlabel(x)
    if x in INDEX_KEYS:
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    entries = [e for _, es in panels for e in es]
    if title is None:
        used = sorted({f for e in entries for f in e["files"]})
        title = _title([Trajectory(f).config for f in used], by_keys, ", ".join(metrics))
    axes[0].set_title(title, fontsize="medium")
    fig.savefig(out, dpi=dpi)

    data_path = None
    if save_data:
        data_path = out.with_suffix(".csv")
        _write_data(data_path, panels, x)
    return PlotResult(curves=entries, figure=fig, path=out, data_path=data_path, lines=lines)


def _draw_group(ax, entry: dict, seeds: bool):
    """One group's mean curve, with its t interval band (n > 1) or, with ``seeds``, every
    run's curve thin in the same colour; returns the mean's Line2D."""
    (line,) = ax.plot(
        entry["x"], entry["mean"], label=f"{group_label(entry)} (n={entry['n']})",
        marker="o" if len(entry["x"]) <= 30 else None, markersize=3,
    )
    if seeds:
        for run in entry["values"]:
            ax.plot(entry["x"], run, color=line.get_color(), alpha=0.45, linewidth=0.8)
    elif entry["n"] > 1:
        half = t_halfwidth(entry["std"], entry["n"], LEVEL)
        ax.fill_between(
            entry["x"], entry["mean"] - half, entry["mean"] + half,
            color=line.get_color(), alpha=0.2, linewidth=0,
        )
    return line


def _shown(entries: Sequence[dict], seeds: bool) -> str:
    """The note in a panel's corner saying what the lines and bands are."""
    if seeds:
        return "mean over runs; thin lines: single runs"
    if any(e["n"] > 1 for e in entries):
        return f"mean over runs; band: {LEVEL:.0%} CI of the mean (t)"
    return "one run per group (no interval)"


def _write_data(path: Path, panels: Sequence[tuple[str, list[dict]]], x: str) -> None:
    """The plotted numbers as CSV: one row per group, panel and x value, with that panel's
    metric columns filled (mean, std and the t interval) and the others empty."""
    entries = [e for _, es in panels for e in es]
    keys = [k for k in (entries[0] if entries else {}) if k not in STAT_KEYS]
    ci = f"{LEVEL:.0%} CI"
    columns = [f"{m} {s}" for m, _ in panels for s in ("mean", "std", f"{ci} low", f"{ci} high")]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(keys + [x] + columns + ["n"])
        for i, (_, es) in enumerate(panels):
            for entry in es:
                half = t_halfwidth(entry["std"], entry["n"], LEVEL)
                for xv, mv, sv, hv in zip(entry["x"], entry["mean"], entry["std"], half):
                    cells = [""] * len(columns)
                    cells[4 * i:4 * i + 4] = [repr(float(v)) for v in (mv, sv, mv - hv, mv + hv)]
                    writer.writerow([entry[k] for k in keys] + [xv] + cells + [entry["n"]])


def _smoothed(entry: dict, window: int) -> dict:
    """``entry`` with its mean, std and per-run values replaced by their trailing moving
    averages over ``window`` points (fewer at the start)."""
    if window == 1:
        return entry
    out = dict(entry)
    for k in ("mean", "std", "values"):
        y = np.asarray(entry[k], dtype=np.float64)
        c = np.concatenate([np.zeros(y.shape[:-1] + (1,)), np.cumsum(y, axis=-1)], axis=-1)
        i = np.arange(1, y.shape[-1] + 1)
        lo = np.maximum(i - window, 0)
        out[k] = (c[..., i] - c[..., lo]) / (i - lo)
    return out


def _output(out_png: str | os.PathLike) -> Path:
    out = Path(out_png)
    if out.is_dir():
        raise NoisysimError(
            f"{out} is a directory; give a file name for the figure (e.g. curves.png)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def plot_forest(comparison, out_png: str | os.PathLike, *, dpi: int = 120) -> Figure:
    """Forest plot of a noisysim.compare.Comparison: one row per pair, the difference of
    means as a dot with its confidence interval as a bar, a line at zero, and the test with
    its Holm-adjusted p-value beside each row. Returns the figure (saved to ``out_png``)."""
    c = comparison
    if not c.pairs:
        raise NoisysimError("a forest plot needs at least two groups to compare")
    out = _output(out_png)
    fig = Figure(figsize=(7, 1.2 + 0.45 * len(c.pairs)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ys = list(range(len(c.pairs)))[::-1]  # first pair on top
    for y, p in zip(ys, c.pairs):
        d = p.difference
        ax.plot([d.ci.low, d.ci.high], [y, y], color="C0", linewidth=2)
        ax.plot([d.estimate], [y], "o", color="C0")
        ax.annotate(f"{d.test}, p Holm {p.p_holm:.2g}", (1.01, y),
                    xycoords=("axes fraction", "data"), va="center", fontsize="small")
    ax.axvline(0.0, color="0.3", linewidth=0.8, linestyle="--")
    ax.set_yticks(ys, [f"{p.a} - {p.b}" for p in c.pairs])
    ax.set_ylim(-0.6, len(c.pairs) - 0.4)
    method = "BCa bootstrap" if c.bootstrap else "t"
    ax.set_xlabel(f"difference in {c.measure} {c.metric} ({c.level:.0%} CI, {method})")
    against = f"against {c.baseline}" if c.baseline else "between groups"
    ax.set_title(f"{c.metric} by {', '.join(c.by) or 'group'}: differences {against}",
                 fontsize="medium")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.grid(True, axis="x", alpha=0.3)
    fig.savefig(out, dpi=dpi)
    return fig
