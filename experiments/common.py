"""What the experiments share: plans (``Plan``, ``Variant``), the context a run of the driver
hands to an analysis (``Context``), the paper's settings, and the analysis helpers (tables,
figures, run status). Each experiment is one module beside its TOML spec
(``a_teacher.py`` + ``a_teacher.toml``) defining ``KEY``, ``TITLE``, ``plan(size)`` and
``analyse(ctx)``; ``reproduce.py`` is the one driver.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from noisysim.analysis import get_config_value, summarize  # noqa: E402
from noisysim.plot import plot_curves  # noqa: E402
from noisysim.record import Trajectory  # noqa: E402
from noisysim.stats import t_halfwidth  # noqa: E402

SIZES = ("tiny", "default", "full")
RULE_ORDER = ("bp", "dbp", "np", "dnp", "inp", "dinp", "anp", "danp", "wp", "fg")
PLAIN_NP = ("np", "inp", "anp")
MODELS = REPO / "models"


# ======================================================================================
# Plans: what to sweep at each size
# ======================================================================================


@dataclasses.dataclass
class Variant:
    """One ``noisysim sweep`` call: a grid (seeds are added) and its own overrides:
    ``pre`` goes before the size's overrides (model includes: an include sits just below
    the layer that names it, so later --set keys such as model.layers override it),
    ``sets`` after them (e.g. DBP's own learning rate)."""

    grid: dict[str, list]
    sets: list[str] = dataclasses.field(default_factory=list)
    pre: list[str] = dataclasses.field(default_factory=list)

    def overrides(self, plan: "Plan") -> list[str]:
        return self.pre + plan.sets + self.sets


@dataclasses.dataclass
class Plan:
    sets: list[str]            # overrides for every point (the size)
    seeds: list[int]
    variants: list[Variant]
    notes: str = ""            # a line for the report: where the settings come from


def by_rule(rules, per_rule: dict[str, list[str]] | None = None,
             grid: dict[str, list] | None = None) -> list[Variant]:
    """Variants for ``rules``: one sweep for the rules without special overrides, one per
    rule that has them (e.g. DBP's larger learning rate)."""
    per_rule = per_rule or {}
    grid = grid or {}
    plain = [r for r in rules if r not in per_rule]
    out = [Variant({"rule.name": plain, **grid})] if plain else []
    out += [Variant({"rule.name": [r], **grid}, list(s)) for r, s in per_rule.items() if r in rules]
    return out


# The paper's CIFAR-10 run (Dalm et al., arXiv:2310.00965, the authors' public code).
PAPER_CIFAR = [
    "data.name=cifar10", "data.n_train=50000", "data.n_test=10000", "data.normalize=unit",
    "model.layers=[3072,1024,1024,1024,10]", "train.batch_size=1000", "train.epochs=50",
    "optimizer.name=adam", "optimizer.lr=1e-4", "decorrelation.lr=1e-3",
]
# The authors' TF code passes tf.nn.leaky_relu (slope 0.2); the specs' own 0.01 is the MTJ
# study's. For the --full runs of leaky-ReLU networks (not e's step / quantiser units).
PAPER_SLOPE = ["model.activation_params.slope=0.2"]
PAPER_DBP = {"dbp": ["optimizer.lr=1e-3"]}
TINY_DIGITS = ["data.name=digits", "data.n_train=300", "data.n_test=100",
               "train.epochs=2", "train.batch_size=50", "train.log_every=1"]


# ======================================================================================
# What the driver hands to an analysis
# ======================================================================================


@dataclasses.dataclass
class Point:
    overrides: list[str]       # exactly what sweep passes to load_config (name included)
    path: Path


@dataclasses.dataclass
class Context:
    exp: "Experiment"
    size: str
    plan: Plan
    spec: Path
    runs: Path
    results: Path
    workers: int
    points: list[Point] = dataclasses.field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [p.path for p in self.points if p.path.exists()]


@dataclasses.dataclass
class Experiment:
    """One experiment: its key on the command line, the module (and TOML spec) it lives
    in, a title, and the module's plan and analysis."""

    key: str
    slug: str
    title: str
    spec: str
    plan: Callable[[str], Plan]
    analyse: Callable[[Context], list[Path]]


# ======================================================================================
# Analysis helpers
# ======================================================================================


def rule_key(rule: Any) -> tuple:
    return (RULE_ORDER.index(rule) if rule in RULE_ORDER else len(RULE_ORDER), str(rule))


def pm(mean: float, std: float, n: int, fmt: str = ".3f") -> str:
    """``mean ± std [lo, hi]``: the seeds' std and the 95% t confidence interval of the mean
    (``noisysim.stats.t_halfwidth``, as ``noisysim compare`` reports it); the mean alone for
    one run."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "nan"
    if n < 2:
        return f"{mean:{fmt}}"
    h = float(t_halfwidth(std, n))
    return f"{mean:{fmt}} ± {std:{fmt}} [{mean - h:{fmt}}, {mean + h:{fmt}}]"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def run_status(path: Path) -> str:
    """A trajectory's status, with divergence reported by the optimiser counted as such:
    noisysim.optim raises for a finite gradient whose norm overflows and the run is then
    stored as "failed" with a message saying it diverged."""
    t = Trajectory(path)
    if t.status == "failed" and "diverged" in t.message:
        return "diverged"
    return t.status


def _completed(files) -> str:
    statuses = [run_status(f) for f in files]
    done, div = statuses.count("completed"), statuses.count("diverged")
    return f"{done}/{len(files)}" + (f" ({div} diverged)" if div else "")


def _wall_per_update(files) -> float:
    """Mean seconds per update from the files' created/updated stamps (whole-second clock)."""
    from datetime import datetime

    vals = []
    for f in files:
        t = Trajectory(f)
        try:
            dt = (datetime.fromisoformat(t.updated) - datetime.fromisoformat(t.created))
            steps = int(t.series("train", "step")[-1])
        except Exception:
            continue
        if steps > 0 and dt.total_seconds() >= 10:  # the stamps have whole seconds
            vals.append(dt.total_seconds() / steps)
    return float(np.mean(vals)) if vals else float("nan")


def _rows_sorted(rows, keys):
    def key(r):
        out = []
        for k in keys:
            v = r.get(k)
            out.append(rule_key(v) if k == "rule.name" else
                       (v is None, str(type(v)), v if v is not None else 0))
        return out

    return sorted(rows, key=key)


def accuracy_table(files, by: list[str]) -> tuple[str, list[dict]]:
    acc = summarize(files, by=by, metric="eval/test_accuracy")
    loss = {json.dumps([r[k] for k in by], default=str): r
            for r in summarize(files, by=by, metric="eval/test_loss")}
    acc = _rows_sorted(acc, by)
    header = by + ["final test accuracy", "final test loss", "runs completed", "s / update"]
    rows = []
    for r in acc:
        lr = loss[json.dumps([r[k] for k in by], default=str)]
        rows.append([r[k] for k in by] + [pm(r["mean"], r["std"], r["n"]),
                                          pm(lr["mean"], lr["std"], lr["n"]),
                                          _completed(r["files"]),
                                          _cell3(_wall_per_update(r["files"]))])
    return md_table(header, rows), acc


def _cell3(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.3f}"


def write_report(ctx: Context, body: list[str], figures: list[Path]) -> Path:
    ctx.results.mkdir(parents=True, exist_ok=True)
    size_flag = {"tiny": " --tiny", "full": " --full", "default": ""}[ctx.size]
    lines = [f"# {ctx.exp.key}: {ctx.exp.title} ({ctx.size} size)", "",
             f"Settings: {ctx.plan.notes}. Base config `experiments/{ctx.spec.name}`; "
             f"trajectories in `{rel(ctx.runs)}`.", "",
             f"Reproduce: `python experiments/reproduce.py {ctx.exp.key}{size_flag}`", ""]
    lines += body
    if figures:
        lines += ["", "Figures: " + ", ".join(f"[{f.name}]({f.name})" for f in figures)]
    path = ctx.results / "table.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def figure(ncols: int = 1, width: float = 7.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def style(rule: str) -> dict:
    """One colour per rule family; decorrelated variants solid, plain ones dashed."""
    family = rule[1:] if rule in ("dbp", "dnp", "dinp", "danp") else rule
    colours = {"bp": "C0", "np": "C1", "inp": "C2", "anp": "C3", "wp": "C4", "fg": "C5"}
    return {"color": colours.get(family, "C7"),
            "linestyle": "-" if (rule != family or family in ("wp", "fg")) else "--"}


def files_where(files, key: str, value: Any) -> list[Path]:
    return [f for f in files if get_config_value(Trajectory(f).config, key, None) == value]


def accuracy_per_value(ctx: Context, key: str, values, by, title: str) -> list[Path]:
    """One figure of test accuracy against epochs per value of config ``key``
    (``test_accuracy_<value>.png``), curves grouped by ``by``; ``title`` is formatted with
    the value. Values no run has are left out."""
    figs = []
    for value in values:
        sub = files_where(ctx.files, key, value)
        if sub:
            figs.append(plot_curves(sub, ctx.results / f"test_accuracy_{value}.png", by=by,
                                    x="epoch", title=title.format(value)).path)
    return figs
