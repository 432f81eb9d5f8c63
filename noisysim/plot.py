"""Figures from trajectory files: mean curve with a +-std band per group of runs.

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
) -> PlotResult:
    """Plot mean +- std of ``metric`` against ``x`` for each group of runs; save to ``out_png``.

    ``metric``: one name or several, each in its own panel (stacked, sharing x). ``where``:
    ``KEY=VALUE`` filters of the runs (``analysis.select_runs``). ``log``: logarithmic y
    axis. ``smooth``: a trailing moving average over that many points of each plotted mean
    and std (1 = none), ``m_i = mean(y_{i-w+1..i})`` with fewer points at the start. The
    figure format follows the file suffix (.png, .pdf, .svg). With ``save_data`` the plotted
    (smoothed) numbers are also written as CSV beside it (same name, suffix .csv): the group
    columns, x, then ``<metric> mean`` and ``<metric> std`` per metric, and n.
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if not metrics:
        raise NoisysimError("plot needs at least one --metric")
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1:
        raise NoisysimError(f"--smooth must be a whole number of points >= 1, got {smooth!r}")
    by_keys = _as_list(by)
    files = select_runs(paths, where)
    panels = [(m, [_smoothed(e, smooth) for e in curves(files, by_keys, m, x=x)])
              for m in metrics]
    out = Path(out_png)
    if out.is_dir():
        raise NoisysimError(
            f"{out} is a directory; give a file name for the figure (e.g. curves.png)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(7, 1.5 + 3 * len(metrics)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    lines = []
    for ax, (m, entries) in zip(axes, panels):
        for entry in entries:
            (line,) = ax.plot(
                entry["x"], entry["mean"], label=f"{group_label(entry)} (n={entry['n']})",
                marker="o" if len(entry["x"]) <= 30 else None, markersize=3,
            )
            ax.fill_between(
                entry["x"], entry["mean"] - entry["std"], entry["mean"] + entry["std"],
                color=line.get_color(), alpha=0.2, linewidth=0,
            )
            lines.append(line)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(m + (f" (mean of {smooth})" if smooth > 1 else ""))
        ax.grid(True, alpha=0.3)
        if entries:
            ax.legend(title=", ".join(by_keys) or None, fontsize="small")
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
        with open(data_path, "w", newline="") as fh:
            writer = csv.writer(fh)
            keys = [k for k in (entries[0] if entries else {}) if k not in STAT_KEYS]
            stats = [f"{m} {s}" for m in metrics for s in ("mean", "std")]
            writer.writerow(keys + [x] + stats + ["n"])
            for i, (_, es) in enumerate(panels):
                for entry in es:
                    for xv, mv, sv in zip(entry["x"], entry["mean"], entry["std"]):
                        cells = [""] * len(stats)
                        cells[2 * i:2 * i + 2] = [repr(float(mv)), repr(float(sv))]
                        writer.writerow([entry[k] for k in keys] + [xv] + cells + [entry["n"]])
    return PlotResult(curves=entries, figure=fig, path=out, data_path=data_path, lines=lines)


def _smoothed(entry: dict, window: int) -> dict:
    """``entry`` with its mean and std replaced by their trailing moving averages."""
    if window == 1:
        return entry
    out = dict(entry)
    for k in ("mean", "std"):
        y = np.asarray(entry[k], dtype=np.float64)
        c = np.concatenate([[0.0], np.cumsum(y)])
        i = np.arange(1, y.shape[0] + 1)
        lo = np.maximum(i - window, 0)
        out[k] = (c[i] - c[lo]) / (i - lo)
    return out
