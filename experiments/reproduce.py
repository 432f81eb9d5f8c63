#!/usr/bin/env python
"""Reproduce the paper's experiments with noisysim's own sweep, analysis and plotting.

    python experiments/reproduce.py EXP [--tiny | --full] [--workers N] [--seeds 0,1,2]
                                        [--root DIR] [--analyse-only] [--estimate]
                                        [--dry-run] [--fresh] [--docs]

EXP is one of a..f (or ``all``):

    a  parameter convergence on a student-teacher problem: ||W R - W*|| against updates
    b  gradient alignment per layer with the exact gradient, every rule
    c  Fashion-MNIST MLP: every rule with and without decorrelation, 3 seeds
    d  noisy hardware: two noisy passes with simulated sMTJ and Bernoulli device noise
    e  discontinuous activations: step and quantised networks, DANP vs BP (with/without STE)
    f  final accuracy against the level of the device's intrinsic Gaussian noise

Sizes: the default runs on 2 CPU cores in about an hour per experiment (Fashion-MNIST
subsets, narrower networks, fewer epochs); ``--full`` is the paper's size (CIFAR-10,
3072-1024-1024-1024-10, the authors' settings in shared/SCIENCE.md); ``--tiny`` takes
seconds (the shipped digits or a small teacher; used by tests/test_experiments.py).

Every training run is one point of ``noisysim sweep`` (run as a subprocess: ``python -m
noisysim.cli sweep experiments/<spec>.toml --grid ... --set ... --workers N``); the base
configuration of each experiment is the TOML file next to this script, the grids and the
per-size overrides are the ``plan_*`` functions below. Trajectories go to
``runs/<exp>[-tiny|-full]/``, figures, CSV data and ``table.md`` to
``results/<exp>[-tiny|-full]/`` (both under --root, default the repository). A rerun skips
completed points and resumes interrupted ones; a trajectory whose stored config no longer
matches the plan stops the script (``--fresh`` deletes such stale files first).
``--docs`` copies the figures to docs/experiments/<exp>/ (curated figures for the README).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from noisysim.analysis import curves, get_config_value, summarize  # noqa: E402
from noisysim.config import DATASET_SHAPES, load_config  # noqa: E402
from noisysim.plot import plot_curves  # noqa: E402
from noisysim.record import Trajectory  # noqa: E402
from noisysim.sweep import point_name, points  # noqa: E402

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


def _by_rule(rules, per_rule: dict[str, list[str]] | None = None,
             grid: dict[str, list] | None = None) -> list[Variant]:
    """Variants for ``rules``: one sweep for the rules without special overrides, one per
    rule that has them (e.g. DBP's larger learning rate)."""
    per_rule = per_rule or {}
    grid = grid or {}
    plain = [r for r in rules if r not in per_rule]
    out = [Variant({"rule.name": plain, **grid})] if plain else []
    out += [Variant({"rule.name": [r], **grid}, list(s)) for r, s in per_rule.items() if r in rules]
    return out


# The paper's CIFAR-10 run (SCIENCE.md, the authors' public code).
PAPER_CIFAR = [
    "data.name=cifar10", "data.n_train=50000", "data.n_test=10000", "data.normalize=unit",
    "model.layers=[3072,1024,1024,1024,10]", "train.batch_size=1000", "train.epochs=50",
    "optimizer.name=adam", "optimizer.lr=1e-4", "decorrelation.lr=1e-3",
]
PAPER_DBP = {"dbp": ["optimizer.lr=1e-3"]}
TINY_DIGITS = ["data.name=digits", "data.n_train=300", "data.n_test=100",
               "train.epochs=2", "train.batch_size=50", "train.log_every=1"]


def plan_a(size: str) -> Plan:
    rules = ["bp", "dbp", "np", "dnp", "inp", "dinp", "anp", "danp"]
    # Each rule at its fastest stable SGD step: the admissible lr is what decorrelation
    # changes (a_teacher.toml explains), so one shared lr would hide the effect.
    lrs = {"optimizer.lr": ["0.003", "0.01", "0.03", "0.1", "0.3"]}
    if size == "tiny":
        return Plan(["data.n_inputs=10", "data.n_outputs=3", "model.layers=[10,3]",
                     "data.n_train=200", "data.n_test=50", "train.epochs=2",
                     "train.batch_size=10", "train.snapshot_every=2", "train.log_every=1",
                     "decorrelation.lr=0.05"],
                    [0], _by_rule(rules, grid={"optimizer.lr": ["0.03", "0.1"]}),
                    "tiny: 10 -> 3 teacher, 40 updates, SGD lr 0.03 and 0.1")
    if size == "full":
        # SCIENCE.md gives no sizes for the teacher problem: twice the inputs, 4x the
        # updates and 5 seeds; lr grid shifted down for lambda_max = 90.1, decorrelation lr
        # halved (row sums of off-diagonal covariances 89).
        return Plan(["data.n_inputs=100", "data.n_outputs=10", "model.layers=[100,10]",
                     "data.n_train=40000", "train.epochs=25", "train.snapshot_every=100",
                     "decorrelation.lr=2.5e-3"],
                    [0, 1, 2, 3, 4],
                    _by_rule(rules, grid={"optimizer.lr": ["0.001", "0.003", "0.01", "0.03",
                                                           "0.1", "0.3"]}),
                    "full: 100 -> 10 linear teacher, correlation 0.9, SGD at the best of 6 "
                    "learning rates per rule, batch 50, 20,000 updates, 5 seeds")
    return Plan([], [0, 1, 2], _by_rule(rules, grid=lrs),
                "50 -> 10 linear teacher, correlation 0.9, SGD at the best of 5 learning "
                "rates (0.003-0.3) per rule, batch 50, decorrelation lr 5e-3, 5,000 updates, "
                "3 seeds")


def plan_b(size: str) -> Plan:
    rules = list(RULE_ORDER)
    if size == "tiny":
        return Plan(TINY_DIGITS + ["model.layers=[64,32,32,10]", "train.alignment_every=2"],
                    [0], _by_rule(rules), "tiny: digits 64-32-32-10, 12 updates")
    if size == "full":
        return Plan(PAPER_CIFAR + ["train.alignment_every=25"], [0, 1, 2],
                    _by_rule(rules, PAPER_DBP),
                    "full: CIFAR-10 3072-1024-1024-1024-10, the authors' settings, 50 epochs")
    return Plan([], [0, 1, 2], _by_rule(rules),
                "Fashion-MNIST, 784-256-256-256-10, batch 100, Adam 3e-4, decorrelation lr "
                "1e-3, 3,000 updates, alignment every 25, 3 seeds")


def plan_c(size: str) -> Plan:
    rules = ["bp", "dbp", "np", "dnp", "inp", "dinp", "anp", "danp"]
    if size == "tiny":
        return Plan(TINY_DIGITS + ["model.layers=[64,32,32,10]"], [0], _by_rule(rules),
                    "tiny: digits 64-32-32-10, 12 updates")
    if size == "full":
        return Plan(PAPER_CIFAR, [0, 1, 2], _by_rule(rules, PAPER_DBP),
                    "full: CIFAR-10 3072-1024-1024-1024-10, batch 1000, Adam 1e-4 (DBP 1e-3), "
                    "decorrelation lr 1e-3, sigma 1e-3, K = 1, 50 epochs, 3 seeds")
    return Plan([], [0, 1, 2], _by_rule(rules),
                "Fashion-MNIST, 784-256-256-256-10, batch 100, Adam 3e-4 for every rule, "
                "decorrelation lr 1e-3, sigma 1e-3, 15 epochs (9,000 updates), 3 seeds")


def plan_d(size: str) -> Plan:
    smtj, bern = str(MODELS / "mtj_mlp_smtj.toml"), str(MODELS / "mtj_mlp_bernoulli.toml")
    np_sets = ["rule.sigma=1e-3"]  # NP needs a known injected perturbation
    if size == "full":
        # MTJ study, CIFAR-10: forward lr 2.4414e-5; decorrelation lr per noise model.
        # The study's epoch count is not in SCIENCE.md: 50, as the paper's CIFAR-10 runs.
        common = ["data.name=cifar10", "data.n_train=50000", "data.n_test=10000",
                  "model.layers=[3072,500,500,500,10]", "optimizer.lr=2.4414e-5",
                  "train.epochs=50"]
        noises = [("d-smtj", smtj, "1.9073e-7"), ("d-bernoulli", bern, "7.6294e-7")]
        seeds, notes = [0, 1, 2, 3, 4], ("full: CIFAR-10 3072-500-500-500-10, batch 64, Adam "
                                         "2.4414e-5, decorrelation lr 1.9073e-7 (sMTJ) / "
                                         "7.6294e-7 (Bernoulli), 50 epochs, 5 seeds")
    else:
        common = (TINY_DIGITS + ["model.layers=[64,32,32,32,10]", "train.batch_size=32"]
                  if size == "tiny" else ["model.layers=[784,256,256,256,10]"])
        noises = [("d-smtj", smtj, None), ("d-bernoulli", bern, None)]
        seeds = [0] if size == "tiny" else [0, 1, 2]
        notes = ("tiny: digits 64-32-32-32-10" if size == "tiny" else
                 "Fashion-MNIST, 784-256-256-256-10, batch 64, Adam 3e-4, "
                 "decorrelation lr 1e-3, 10 epochs (9,380 updates), 3 seeds")
    variants = []
    for name, model_file, dlr in noises:
        pre = [f"name={name}", f"model={model_file}"]
        own = [f"decorrelation.lr={dlr}"] if dlr else []
        variants.append(Variant({"rule.name": ["anp", "danp", "bp"]}, own, pre))
        variants.append(Variant({"rule.name": ["np"]}, own + np_sets, pre))
    return Plan(common, seeds, variants, notes)


def plan_e(size: str) -> Plan:
    acts = {"model.activation": ["step", "quantize"]}
    variants = [Variant({"rule.name": ["danp"], **acts}),
                Variant({"rule.name": ["bp"], "rule.surrogate": ["ste", "none"], **acts})]
    if size == "tiny":
        return Plan(TINY_DIGITS + ["model.layers=[64,32,32,10]"], [0], variants,
                    "tiny: digits 64-32-32-10")
    if size == "full":
        return Plan(PAPER_CIFAR, [0, 1, 2], variants,
                    "full: CIFAR-10 3072-1024-1024-1024-10 with step / quantiser units, the "
                    "authors' settings (Adam 1e-4), DANP sigma 0.2, 50 epochs, 3 seeds")
    return Plan([], [0, 1, 2], variants,
                "Fashion-MNIST, 784-256-256-10, batch 100, Adam 1e-3, DANP sigma 0.2, "
                "15 epochs (9,000 updates), 3 seeds")


def plan_f(size: str) -> Plan:
    rules = ["np", "anp", "danp"]
    if size == "tiny":
        return Plan(TINY_DIGITS + ["model.layers=[64,32,32,10]"], [0],
                    [Variant({"rule.name": rules, "noise.sigma": ["0", "0.01", "0.1"]})],
                    "tiny: digits 64-32-32-10")
    if size == "full":
        sig = ["0", "1e-3", "3e-3", "1e-2", "3e-2", "1e-1", "3e-1"]
        return Plan(PAPER_CIFAR, [0, 1, 2],
                    [Variant({"rule.name": rules, "noise.sigma": sig})],
                    "full: CIFAR-10 3072-1024-1024-1024-10, the authors' settings, 3 seeds")
    sig = ["0", "1e-3", "3e-3", "1e-2", "3e-2", "1e-1"]
    return Plan([], [0, 1, 2], [Variant({"rule.name": rules, "noise.sigma": sig})],
                "Fashion-MNIST, 784-256-256-10, batch 100, Adam 3e-4, injected sigma 1e-3, "
                "10 epochs (6,000 updates), 3 seeds")


# ======================================================================================
# Running: one `noisysim sweep` per variant
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


def _grid_with_seeds(v: Variant, seeds) -> dict[str, list[str]]:
    return {**{k: [str(x) for x in vals] for k, vals in v.grid.items()},
            "seed": [str(s) for s in seeds]}


def plan_points(ctx: Context) -> list[Point]:
    """The trajectory each sweep point writes (names as noisysim.sweep gives them)."""
    out = []
    for v in ctx.plan.variants:
        overrides = v.overrides(ctx.plan)
        for point in points(_grid_with_seeds(v, ctx.plan.seeds)):
            base = load_config(ctx.spec, overrides + point).name
            ov = overrides + point + [f"name={point_name(base, point)}"]
            out.append(Point(ov, ctx.runs / f"{point_name(base, point)}.h5"))
    return out


def _plain_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                return prefix + k
            d = _first_difference(a[k], b[k], f"{prefix}{k}.")
            if d:
                return d
        return None
    return None if a == b else (prefix.rstrip(".") or "(root)")


def check_stale(ctx: Context, fresh: bool) -> None:
    """Refuse (or with ``fresh`` delete) trajectories made with a different config: the
    sweep would otherwise skip them as completed."""
    stale = []
    for p in ctx.points:
        if not p.path.exists():
            continue
        want = _plain_json(load_config(ctx.spec, p.overrides).to_dict())
        try:
            have = Trajectory(p.path).config
        except Exception as err:  # unreadable: the sweep would fail on it too
            stale.append((p.path, f"unreadable ({err})"))
            continue
        diff = _first_difference(want, have)
        if diff:
            stale.append((p.path, f"{diff}: plan {get_config_value(want, diff, '-')!r}, "
                                  f"file {get_config_value(have, diff, '-')!r}"))
    if not stale:
        return
    if fresh:
        for path, why in stale:
            print(f"removing stale {path} ({why})")
            path.unlink()
        return
    lines = "\n".join(f"  {p}: {why}" for p, why in stale[:10])
    sys.exit(f"{len(stale)} trajectories in {ctx.runs} were made with another config:\n{lines}\n"
             "rerun with --fresh to delete and redo them (or use another --root)")


def _env(workers: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    if workers > 1:  # one thread per worker process: no oversubscription of the cores
        for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                  "MKL_NUM_THREADS"):
            env.setdefault(k, "1")
    return env


def sweep_commands(ctx: Context) -> list[list[str]]:
    cmds = []
    for v in ctx.plan.variants:
        grid = _grid_with_seeds(v, ctx.plan.seeds)
        n = math.prod(len(x) for x in grid.values())
        cmd = [sys.executable, "-m", "noisysim.cli", "sweep", str(ctx.spec)]
        for k, vals in grid.items():
            cmd += ["--grid", f"{k}={','.join(vals)}"]
        for s in v.overrides(ctx.plan):
            cmd += ["--set", s]
        cmd += ["--out", str(ctx.runs), "--workers", str(max(1, min(ctx.workers, n)))]
        cmds.append(cmd)
    return cmds


def run_sweeps(ctx: Context, dry_run: bool) -> bool:
    ok = True
    for cmd in sweep_commands(ctx):
        workers = int(cmd[-1])
        print("$ " + " ".join(_quote(c) for c in cmd), flush=True)
        if dry_run:
            continue
        rc = subprocess.run(cmd, cwd=REPO, env=_env(workers)).returncode
        if rc != 0:
            print(f"sweep exited with {rc} (some points did not complete)", file=sys.stderr)
            ok = False
    return ok


def _quote(s: str) -> str:
    return s if all(c.isalnum() or c in "-_=.,/:+[]" for c in s) else repr(s)


# ======================================================================================
# Runtime estimate: noisysim's own step benchmark, times the updates of every point
# ======================================================================================


def _n_train(cfg: dict) -> int:
    n = cfg["data"].get("n_train")
    if n is None:
        n = DATASET_SHAPES.get(cfg["data"]["name"], {}).get("n_train") or 10000
    return int(n * (1 - cfg["data"].get("validation", 0.0)))


def estimate(ctx: Context, bench_steps: int = 5) -> float:
    """Seconds of wall time for the plan: `noisysim bench` (one process per rule and shape,
    with the thread settings the sweep's workers get) times the updates of every point."""
    times: dict[tuple, float] = {}
    rows = []
    workers = max(1, min(ctx.workers, len(ctx.points)))

    def step_time(rule, layers, batch, noisy, dtype):
        key = (rule, tuple(layers), batch, noisy, dtype)
        if key not in times:
            cmd = [sys.executable, "-m", "noisysim.cli", "bench", "--rule", rule,
                   "--layers", ",".join(map(str, layers)), "--batch", str(batch),
                   "--steps", str(bench_steps), "--noise", "gaussian" if noisy else "none",
                   "--dtype", dtype, "--json"]
            out = subprocess.run(cmd, cwd=REPO, env=_env(workers), capture_output=True,
                                 text=True, check=True).stdout
            times[key] = json.loads(out.strip().splitlines()[-1])["step_s"]
            rows.append(f"  {rule:>5} {list(layers)} batch {batch}: "
                        f"{times[key] * 1e3:.1f} ms/update")
        return times[key]

    train_s = eval_s = 0.0
    for p in ctx.points:
        cfg = load_config(ctx.spec, p.overrides).to_dict()
        t, m = cfg["train"], cfg["model"]
        n_train = _n_train(cfg)
        steps = math.ceil(n_train / t["batch_size"]) * t["epochs"]
        noisy = cfg["noise"]["model"] != "none"
        train_s += steps * step_time(cfg["rule"]["name"], m["layers"], t["batch_size"], noisy,
                                     m["dtype"])
        # Evaluation: one forward pass over train + test after every epoch (and before the
        # first); a forward pass costs about a third of a BP step per sample.
        n_test = cfg["data"].get("n_test") or DATASET_SHAPES.get(
            cfg["data"]["name"], {}).get("n_test") or 0
        bp = step_time("bp", m["layers"], t["batch_size"], False, m["dtype"])
        eval_s += (t["epochs"] + 1) * (n_train + n_test) * bp / (3 * t["batch_size"])
    total = train_s + eval_s
    wall = total / workers
    print(f"{ctx.exp.key} ({ctx.size}): {len(ctx.points)} runs; step times from noisysim bench "
          f"({'1 thread per worker' if workers > 1 else 'all threads'}, this machine's "
          "current load):")
    print("\n".join(rows))
    print(f"  total {train_s / 60:.1f} CPU-min of updates + {eval_s / 60:.1f} of evaluation; "
          f"~{wall / 60:.1f} min wall with {workers} workers (alignment, logging and start-up "
          "not included)")
    return wall


# ======================================================================================
# Analysis helpers
# ======================================================================================


def _order(rule: Any) -> tuple:
    return (RULE_ORDER.index(rule) if rule in RULE_ORDER else len(RULE_ORDER), str(rule))


def _pm(mean: float, std: float, n: int, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "nan"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


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
            out.append(_order(v) if k == "rule.name" else
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
        rows.append([r[k] for k in by] + [_pm(r["mean"], r["std"], r["n"]),
                                          _pm(lr["mean"], lr["std"], lr["n"]),
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
             f"trajectories in `{_rel(ctx.runs)}`.", "",
             f"Reproduce: `python experiments/reproduce.py {ctx.exp.key}{size_flag}`", ""]
    lines += body
    if figures:
        lines += ["", "Figures: " + ", ".join(f"[{f.name}]({f.name})" for f in figures)]
    path = ctx.results / "table.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def _figure(ncols: int = 1, width: float = 7.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _style(rule: str) -> dict:
    """One colour per rule family; decorrelated variants solid, plain ones dashed."""
    family = rule[1:] if rule in ("dbp", "dnp", "dinp", "danp") else rule
    colours = {"bp": "C0", "np": "C1", "inp": "C2", "anp": "C3", "wp": "C4", "fg": "C5"}
    return {"color": colours.get(family, "C7"),
            "linestyle": "-" if (rule != family or family in ("wp", "fg")) else "--"}


def _subset(files, key: str, value: Any) -> list[Path]:
    return [f for f in files if get_config_value(Trajectory(f).config, key, None) == value]


# ======================================================================================
# Analyses
# ======================================================================================


def _parameter_error(path: Path) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(updates, ||W R - W*|| / ||W*||, status) from a run's snapshots; W* and the initial
    weights are regenerated by noisysim.experiment.build from the stored config (the
    teacher is a deterministic function of the data options, the initial student of the
    seed)."""
    from noisysim.experiment import build

    t = Trajectory(path)
    if "snapshots" not in t.groups():
        warnings.warn(f"{path}: no snapshots (status {t.status}); skipped")
        return None
    b = build(t.config)
    w_star = np.asarray(b.data.meta["teacher"][0], dtype=np.float64)
    init = b.network.state_dict()
    snap = t.table("snapshots")
    w = np.asarray(snap["W_0"], dtype=np.float64)
    if "R_0" in snap:
        w = w @ np.asarray(snap["R_0"], dtype=np.float64)
    w0 = init["W_0"] @ init["R_0"] if "R_0" in init else init["W_0"]
    steps = np.concatenate([[0], snap["step"]])
    err = np.concatenate([[np.linalg.norm(w0 - w_star)],
                          np.linalg.norm(w - w_star, axis=(1, 2))]) / np.linalg.norm(w_star)
    return steps, err, run_status(path)


A_THRESHOLDS = (0.1, 0.01)


def _a_group(runs: list[tuple[np.ndarray, np.ndarray, str]]) -> dict:
    """Mean curve and summary numbers of one (rule, lr) group of seeds."""
    common = runs[0][0]
    for s, _, _ in runs[1:]:
        common = np.intersect1d(common, s)
    errs = np.stack([e[np.searchsorted(s, common)] for s, e, _ in runs])
    with np.errstate(invalid="ignore", over="ignore"):
        mean = errs.mean(0)
        std = errs.std(0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
    diverged = any(st != "completed" or not np.all(np.isfinite(e)) for _, e, st in runs)
    reach = []
    for th in A_THRESHOLDS:
        hits = [s[np.flatnonzero(e < th)[0]] if np.any(e < th) else math.inf
                for s, e, _ in runs]
        reach.append(float(np.mean(hits)))
    final = np.array([e[-1] for _, e, _ in runs])
    return {"x": common, "mean": mean, "std": std, "n": len(runs), "diverged": diverged,
            "lo": errs.min(0), "hi": errs.max(0),
            "reach": reach, "final": final, "last": int(common[-1])}


def analyse_a(ctx: Context) -> list[Path]:
    """||W R - W*|| / ||W*|| against updates; each rule at its best learning rate."""
    groups: dict[tuple[str, float], list] = {}
    for f in ctx.files:
        got = _parameter_error(f)
        if got is not None:
            cfg = Trajectory(f).config
            groups.setdefault((cfg["rule"]["name"], float(cfg["optimizer"]["lr"])), []).append(got)
    stats = {k: _a_group(v) for k, v in groups.items()}
    rules = sorted({r for r, _ in stats}, key=_order)
    lrs = sorted({lr for _, lr in stats})

    def score(g):  # fastest to the first threshold, then the second, then the final error
        if g["diverged"]:
            return (math.inf, math.inf, math.inf)
        return (g["reach"][0], g["reach"][1], float(np.mean(g["final"])))

    best = {r: min((lr for lr in lrs if (r, lr) in stats), key=lambda lr: score(stats[r, lr]))
            for r in rules}

    def reach_text(g, i):
        v = g["reach"][i]
        return f"{v:.0f}" if math.isfinite(v) else f"> {g['last']}"

    fig, (ax,) = _figure()
    rows, csv = [], ["rule,lr,step,mean,std,n"]
    for rule in rules:
        g = stats[rule, best[rule]]
        style = _style(rule)
        ax.plot(g["x"], g["mean"], label=f"{rule} (lr {best[rule]:g})", **style)
        ax.fill_between(g["x"], g["lo"], g["hi"], color=style["color"], alpha=0.15,
                        linewidth=0)  # min-max over seeds (a std band misleads on a log axis)
        fin = g["final"]
        rows.append([rule, "yes" if rule in ("dbp", "dnp", "dinp", "danp") else "no",
                     f"{best[rule]:g}", reach_text(g, 0), reach_text(g, 1),
                     f"{fin.mean():.3g}" + (f" ± {fin.std(ddof=1):.2g}" if len(fin) > 1 else ""),
                     g["n"]])
    for (rule, lr), g in sorted(stats.items(), key=lambda kv: (_order(kv[0][0]), kv[0][1])):
        csv += [f"{rule},{lr!r},{int(x)},{float(m)!r},{float(d)!r},{g['n']}"
                for x, m, d in zip(g["x"], g["mean"], g["std"])]
    ax.set_yscale("log")
    ax.set_xlabel("update")
    ax.set_ylabel("‖W R − W*‖ / ‖W*‖")
    ax.set_title("parameter convergence on the teacher problem, best SGD lr per rule\n"
                 "(dashed: plain, solid: decorrelated; mean and min-max over seeds)",
                 fontsize="medium")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="small", ncol=2)
    ctx.results.mkdir(parents=True, exist_ok=True)
    fig_path = ctx.results / "parameter_error.png"
    fig.savefig(fig_path, dpi=120)
    (ctx.results / "parameter_error.csv").write_text("\n".join(csv) + "\n")

    header = ["rule", "decorrelated", "best lr",
              *(f"updates to < {th:g}" for th in A_THRESHOLDS), "final ‖WR − W*‖ / ‖W*‖",
              "n"]
    grid_rows = []
    for rule in rules:
        cells = [rule]
        for lr in lrs:
            g = stats.get((rule, lr))
            cells.append("-" if g is None else "diverged" if g["diverged"] else
                         f"{reach_text(g, 0)} / {float(np.mean(g['final'])):.2g}")
        grid_rows.append(cells)
    body = ["Relative parameter error of the effective weights W R (R = I without "
            "decorrelation) against the teacher's W*, mean ± std over seeds, each rule at the "
            "learning rate that reaches the thresholds in the fewest updates (mean over "
            "seeds; a learning rate at which any seed diverged is not eligible).", "",
            md_table(header, rows), "",
            f"Every learning rate: updates to < {A_THRESHOLDS[0]:g} / final error "
            "(mean over seeds).", "", md_table(["rule"] + [f"lr {lr:g}" for lr in lrs],
                                               grid_rows)]
    by_rule = {r[0]: r for r in rows}
    speed = []
    for plain in ("bp",) + PLAIN_NP:
        d = "d" + plain
        if plain in by_rule and d in by_rule:
            speed.append(f"{plain} {by_rule[plain][3]} -> {d} {by_rule[d][3]}")
    if speed:
        body += ["", f"Updates to < {A_THRESHOLDS[0]:g}, plain -> decorrelated: "
                 + "; ".join(speed) + "."]
    layers = Trajectory(ctx.files[0]).config["model"]["layers"]
    if len(layers) == 2:
        body += ["", "With a single layer INP and ANP are the same estimator (the only "
                 "perturbed layer is the output, so ||da||^2 over all layers is that layer's); "
                 "identical rows are expected. The decorrelated rules level off at an error "
                 "floor: R keeps moving with each batch's covariance estimate and W R follows."]
    write_report(ctx, body, [fig_path])
    return [fig_path]


def analyse_b(ctx: Context) -> list[Path]:
    files = ctx.files
    n_layers = len(Trajectory(files[0]).config["model"]["layers"]) - 1
    fig, axes = _figure(n_layers, width=3.6 * n_layers, height=4.0)
    per = {}  # rule -> layer -> per-run time-averaged cosine
    for l in range(n_layers):
        metric = f"alignment/layer_{l}"
        for entry in sorted(curves(files, by="rule.name", metric=metric, x="step"),
                            key=lambda e: _order(e["rule.name"])):
            rule = entry["rule.name"]
            axes[l].plot(entry["x"], entry["mean"], label=rule, **_style(rule))
        for f in files:
            t = Trajectory(f)
            v = t.series("alignment", f"layer_{l}")
            per.setdefault(t.config["rule"]["name"], {}).setdefault(l, []).append(
                float(np.nanmean(v)) if v.size else math.nan)
        axes[l].set_title(f"layer {l}" + (" (output)" if l == n_layers - 1 else ""),
                          fontsize="medium")
        axes[l].set_xlabel("update")
        axes[l].set_ylim(-0.1, 1.05)
        axes[l].grid(True, alpha=0.3)
    axes[0].set_ylabel("cosine(estimate, exact gradient)")
    axes[-1].legend(fontsize="small", ncol=2)
    ctx.results.mkdir(parents=True, exist_ok=True)
    fig_path = ctx.results / "alignment.png"
    fig.savefig(fig_path, dpi=120)
    rows, csv = [], ["rule,layer,mean_cosine,std,n,angle_deg"]
    for rule in sorted(per, key=_order):
        row = [rule]
        for l in range(n_layers):
            v = np.array(per[rule][l])
            m, s = float(np.nanmean(v)), float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0
            ang = math.degrees(math.acos(max(-1.0, min(1.0, m)))) if not math.isnan(m) else math.nan
            row.append(f"{m:.3f}" + (f" ± {s:.3f}" if len(v) > 1 else "") + f" ({ang:.0f}°)")
            csv.append(f"{rule},{l},{m!r},{s!r},{len(v)},{ang!r}")
        rows.append(row)
    (ctx.results / "alignment.csv").write_text("\n".join(csv) + "\n")
    body = ["Cosine similarity between each rule's batch estimate and the exact gradient of "
            "the same batch, averaged over the run (every alignment row), then mean ± std "
            "over seeds; the angle is arccos of the mean cosine.", "",
            md_table(["rule"] + [f"layer {l}" for l in range(n_layers)], rows)]
    write_report(ctx, body, [fig_path])
    return [fig_path]


def analyse_c(ctx: Context) -> list[Path]:
    figs = [plot_curves(ctx.files, ctx.results / "test_accuracy.png", by="rule.name",
                        x="epoch").path,
            plot_curves(ctx.files, ctx.results / "train_loss.png", metric="train/loss",
                        by="rule.name", x="step").path]
    table, _ = accuracy_table(ctx.files, ["rule.name"])
    body = ["Final test accuracy (noise-free inference), mean ± std over seeds.", "", table]
    write_report(ctx, body, figs)
    return figs


def analyse_d(ctx: Context) -> list[Path]:
    figs = []
    for noise in ("smtj", "bernoulli"):
        sub = _subset(ctx.files, "noise.model", noise)
        if sub:
            figs.append(plot_curves(sub, ctx.results / f"test_accuracy_{noise}.png",
                                    by="rule.name", x="epoch",
                                    title=f"two noisy passes, {noise} device noise").path)
    table, _ = accuracy_table(ctx.files, ["noise.model", "rule.name"])
    body = ["Two noisy passes (no clean pass); ANP/DANP learn from the device's noise alone "
            "(rule.sigma = 0), NP injects sigma 1e-3 on top of it, BP backpropagates through "
            "the first noisy pass. Final test accuracy of the noise-free network, mean ± std "
            "over seeds.", "", table]
    write_report(ctx, body, figs)
    return figs


def analyse_e(ctx: Context) -> list[Path]:
    figs = []
    for act in ("step", "quantize"):
        sub = _subset(ctx.files, "model.activation", act)
        if sub:
            figs.append(plot_curves(sub, ctx.results / f"test_accuracy_{act}.png",
                                    by=["rule.name", "rule.surrogate"], x="epoch",
                                    title=f"{act} hidden units").path)
    table, _ = accuracy_table(ctx.files, ["model.activation", "rule.name", "rule.surrogate"])
    body = ["DANP (no derivative needed) against BP with the straight-through surrogate "
            "(surrogate ste) and BP with the true derivative (surrogate none: zero almost "
            "everywhere, so only the output layer learns). Mean ± std over seeds.", "", table]
    write_report(ctx, body, figs)
    return figs


def analyse_f(ctx: Context) -> list[Path]:
    rows = summarize(ctx.files, by=["rule.name", "noise.sigma"], metric="eval/test_accuracy")
    sigmas = sorted({r["noise.sigma"] for r in rows})
    rules = sorted({r["rule.name"] for r in rows}, key=_order)
    cell = {(r["rule.name"], r["noise.sigma"]): r for r in rows}
    fig, (ax,) = _figure()
    positive = [s for s in sigmas if s > 0]
    csv = ["rule,noise_sigma,mean,std,n"]
    for rule in rules:
        xs = [s for s in sigmas if (rule, s) in cell]
        ax.errorbar(xs, [cell[rule, s]["mean"] for s in xs], [cell[rule, s]["std"] for s in xs],
                    marker="o", capsize=3, label=rule, **_style(rule))
        csv += [f"{rule},{float(s)!r},{cell[rule, s]['mean']!r},{cell[rule, s]['std']!r},"
                f"{cell[rule, s]['n']}" for s in xs]
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlabel("intrinsic noise std (gaussian noise.sigma; symlog axis)")
    ax.set_ylabel("final test accuracy")
    ax.set_title("accuracy against the device's noise level", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    ctx.results.mkdir(parents=True, exist_ok=True)
    fig_path = ctx.results / "accuracy_vs_noise.png"
    fig.savefig(fig_path, dpi=120)
    (ctx.results / "accuracy_vs_noise.csv").write_text("\n".join(csv) + "\n")
    table_rows = [[f"{s:g}"] + [_pm(cell[r, s]["mean"], cell[r, s]["std"], cell[r, s]["n"])
                                if (r, s) in cell else "-" for r in rules] for s in sigmas]
    body = ["Final test accuracy (noise-free inference) against the std of the intrinsic "
            "Gaussian node noise; injected perturbation sigma 1e-3, clean reference pass. "
            "Mean ± std over seeds.", "", md_table(["noise.sigma"] + rules, table_rows)]
    figs = [fig_path]
    for rule in rules:
        sub = _subset(ctx.files, "rule.name", rule)
        figs.append(plot_curves(sub, ctx.results / f"test_accuracy_{rule}.png",
                                by="noise.sigma", x="epoch",
                                title=f"{rule}: test accuracy by device noise level").path)
    write_report(ctx, body, figs)
    return figs


# ======================================================================================
# The experiments and the command line
# ======================================================================================


@dataclasses.dataclass
class Experiment:
    key: str
    slug: str
    title: str
    spec: str
    plan: Callable[[str], Plan]
    analyse: Callable[[Context], list[Path]]


EXPERIMENTS = {e.key: e for e in (
    Experiment("a", "a_teacher", "parameter convergence on a teacher problem",
               "a_teacher.toml", plan_a, analyse_a),
    Experiment("b", "b_alignment", "gradient alignment per layer", "b_alignment.toml",
               plan_b, analyse_b),
    Experiment("c", "c_fashion_mlp", "Fashion-MNIST MLP, every rule with and without "
               "decorrelation", "c_fashion_mlp.toml", plan_c, analyse_c),
    Experiment("d", "d_noisy_hardware", "two noisy passes on sMTJ and Bernoulli hardware",
               "d_noisy_hardware.toml", plan_d, analyse_d),
    Experiment("e", "e_discontinuous", "step and quantised networks", "e_discontinuous.toml",
               plan_e, analyse_e),
    Experiment("f", "f_noise_level", "accuracy against the intrinsic noise level",
               "f_noise_level.toml", plan_f, analyse_f),
)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reproduce.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(f"  {e.key}  {e.title}" for e in EXPERIMENTS.values()))
    p.add_argument("experiment", choices=list(EXPERIMENTS) + ["all"])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_const", dest="size", const="tiny",
                      help="seconds: tiny networks on shipped/generated data (tests)")
    size.add_argument("--full", action="store_const", dest="size", const="full",
                      help="the paper's size (CIFAR-10; hours to days on a CPU)")
    p.set_defaults(size="default")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="parallel sweep points (default: CPU count)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the plan's)")
    p.add_argument("--root", default=str(REPO),
                   help="folder that gets runs/ and results/ (default: the repository)")
    p.add_argument("--analyse-only", action="store_true", help="skip training, analyse runs/")
    p.add_argument("--estimate", action="store_true",
                   help="time a few updates per rule (noisysim bench) and extrapolate; no runs")
    p.add_argument("--dry-run", action="store_true", help="print the sweep commands only")
    p.add_argument("--fresh", action="store_true",
                   help="delete trajectories whose config differs from the plan, then rerun")
    p.add_argument("--docs", action="store_true",
                   help="copy the figures to docs/experiments/<exp>/ afterwards")
    return p


def run_experiment(exp: Experiment, args) -> bool:
    suffix = "" if args.size == "default" else f"-{args.size}"
    plan = exp.plan(args.size)
    if args.seeds:
        plan.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    root = Path(args.root).resolve()
    ctx = Context(exp, args.size, plan, HERE / exp.spec, root / "runs" / f"{exp.slug}{suffix}",
                  root / "results" / f"{exp.slug}{suffix}", max(1, args.workers))
    ctx.points = plan_points(ctx)
    print(f"== {exp.key}: {exp.title} [{args.size}]: {len(ctx.points)} runs -> {_rel(ctx.runs)}",
          flush=True)
    if args.estimate:
        estimate(ctx)
        return True
    if not args.analyse_only:
        check_stale(ctx, args.fresh)
        t0 = time.monotonic()
        run_sweeps(ctx, args.dry_run)  # its exit status also counts diverged points
        if args.dry_run:
            return True
        print(f"training took {(time.monotonic() - t0) / 60:.1f} min", flush=True)
    missing = [p.path for p in ctx.points if not p.path.exists()]
    if missing:
        print(f"{len(missing)} of {len(ctx.points)} trajectories missing, e.g. {missing[0]}",
              file=sys.stderr)
    statuses = {p.path: run_status(p.path) for p in ctx.points if p.path.exists()}
    counts = {st: list(statuses.values()).count(st) for st in sorted(set(statuses.values()))}
    print("runs: " + ", ".join(f"{n} {st}" for st, n in counts.items()), flush=True)
    # A diverged run is a result (e.g. a learning rate past a rule's stability limit); a
    # failed, interrupted or missing one is not.
    ok = not missing and set(counts) <= {"completed", "diverged"}
    if not ok:
        bad = [f"{p.name} ({st})" for p, st in statuses.items()
               if st not in ("completed", "diverged")]
        print("not finished: " + ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""),
              file=sys.stderr)
    if not ctx.files:
        print("nothing to analyse", file=sys.stderr)
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        figs = exp.analyse(ctx)
    report = ctx.results / "table.md"
    print(report.read_text())
    print(f"results: {_rel(ctx.results)}/ ({', '.join(f.name for f in figs)}, table.md)")
    if args.docs:
        dest = REPO / "docs" / "experiments" / f"{exp.slug}{suffix}"
        dest.mkdir(parents=True, exist_ok=True)
        for f in figs:
            shutil.copy2(f, dest / f.name)
        print(f"copied {len(figs)} figures to {_rel(dest)}/")
    return ok


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    keys = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    ok = True
    for k in keys:
        ok = run_experiment(EXPERIMENTS[k], args) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
