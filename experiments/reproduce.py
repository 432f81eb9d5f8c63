#!/usr/bin/env python
"""Reproduce the paper's experiments with noisysim's own sweep, analysis and plotting.

    python experiments/reproduce.py EXP [--tiny | --full] [--workers N] [--seeds 0,1,2]
                                        [--root DIR] [--analyse-only] [--estimate]
                                        [--dry-run] [--fresh] [--docs]

EXP is one of a..i (or ``all``):

    a  parameter convergence on a student-teacher problem: ||W R - W*|| against updates
    b  gradient alignment per layer with the exact gradient, every rule
    c  Fashion-MNIST MLP: every rule with and without decorrelation, 3 seeds
    d  noisy hardware: two noisy passes with simulated sMTJ and Bernoulli device noise
    e  discontinuous activations: step and quantised networks, DANP vs BP (with/without STE)
    f  final accuracy against the level of the device's intrinsic Gaussian noise
    g  training on a device whose noise model was fitted to a recorded trace (a script)
    h  Fashion-MNIST convnet: bp, dbp, np, dnp, anp, danp with and without device noise
    i  hardware realism: ADC bits, node variability, weight devices

Sizes: the default runs on 2 CPU cores in about an hour per experiment (Fashion-MNIST
subsets, narrower networks, fewer epochs); ``--full`` is the paper's size (CIFAR-10,
3072-1024-1024-1024-10, the authors' settings); ``--tiny`` takes
seconds (the shipped digits or a small teacher; used by tests/test_experiments.py).

Every training run is one point of ``noisysim sweep`` (run as a subprocess: ``python -m
noisysim.cli sweep experiments/<spec>.toml --grid ... --set ... --workers N``); the base
configuration of each experiment is its TOML file in experiments/, its grids, per-size
overrides and analysis are the module of the same name beside it (``a_teacher.toml`` +
``a_teacher.py``: ``KEY``, ``TITLE``, ``plan(size)``, ``analyse(ctx)``; shared pieces in
``common.py``); this script is the one driver, and ``EXPERIMENT_MODULES`` below registers
the experiments, one line each. Trajectories go to
``runs/<exp>[-tiny|-full]/``, figures, CSV data and ``table.md`` to
``results/<exp>[-tiny|-full]/`` (both under --root, default the repository). A rerun skips
completed points and resumes interrupted ones; a trajectory whose stored config no longer
matches the plan stops the script (``--fresh`` deletes such stale files first).
``--docs`` copies the figures to docs/experiments/<exp>/ (curated figures for the README).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

# common (beside this script) also puts the repository on sys.path for a checkout without install
from common import HERE, REPO, Context, Experiment, Point, Variant, rel, run_status

from noisysim.analysis import get_config_value
from noisysim.config import DATASET_SHAPES, load_config
from noisysim.dotted import first_difference
from noisysim.record import Trajectory
from noisysim.sweep import point_name, points

#: The experiments, in the order ``all`` runs them: one module each beside its TOML spec.
#: Register a new experiment by adding its module name here.
EXPERIMENT_MODULES = (
    "a_teacher",
    "b_alignment",
    "c_fashion_mlp",
    "d_noisy_hardware",
    "e_discontinuous",
    "f_noise_level",
    "h_fashion_convnet",
    "i_hardware",
)


def load_experiment(module: str) -> Experiment:
    """The experiment that ``experiments/<module>.py`` defines (KEY, TITLE, plan, analyse)."""
    m = importlib.import_module(module)
    return Experiment(m.KEY, module, m.TITLE, f"{module}.toml", m.plan, m.analyse)


EXPERIMENTS = {e.key: e for e in map(load_experiment, EXPERIMENT_MODULES)}

#: Experiments that are one script of their own (not a sweep plan): key -> module with
#: ``main(argv)`` taking --quick / --full, --seeds and --root.
SCRIPT_EXPERIMENTS = {
    "g": "g_fitted_noise",
}


def run_script_experiment(key: str, args) -> bool:
    """Run a script experiment with the driver's size, seeds and root."""
    argv = {"tiny": ["--quick"], "full": ["--full"]}.get(args.size, [])
    argv += ["--root", str(args.root)] + (["--seeds", args.seeds] if args.seeds else [])
    if args.dry_run or args.estimate or args.analyse_only:
        print(f"== {key}: python experiments/{SCRIPT_EXPERIMENTS[key]}.py {' '.join(argv)}"
              " (a script: no dry run, estimate or separate analysis)", flush=True)
        return True
    return importlib.import_module(SCRIPT_EXPERIMENTS[key]).main(argv) == 0


# ======================================================================================
# Running: one `noisysim sweep` per variant
# ======================================================================================


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
        diff = first_difference(want, have)
        if diff is not None:
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

    def step_time(rule, model, batch, noisy, dtype):
        layers = model["layers"]
        key = (rule, json.dumps(layers), batch, noisy, dtype)
        if key not in times:
            shape = []
            if layers and isinstance(layers[0], dict):  # a conv net: layer tables as TOML
                text = "[" + ", ".join("{" + ", ".join(f"{k} = {json.dumps(v)}"
                                                       for k, v in t.items()) + "}"
                                       for t in layers) + "]"
                shape = ["--input-shape", ",".join(map(str, model["input_shape"]))]
            else:
                text = ",".join(map(str, layers))
            cmd = [sys.executable, "-m", "noisysim.cli", "bench", "--rule", rule,
                   "--layers", text, *shape, "--batch", str(batch),
                   "--steps", str(bench_steps), "--noise", "gaussian" if noisy else "none",
                   "--dtype", dtype, "--json"]
            out = subprocess.run(cmd, cwd=REPO, env=_env(workers), capture_output=True,
                                 text=True, check=True).stdout
            times[key] = json.loads(out.strip().splitlines()[-1])["step_s"]
            rows.append(f"  {rule:>5} {text} batch {batch}: "
                        f"{times[key] * 1e3:.1f} ms/update")
        return times[key]

    train_s = eval_s = 0.0
    for p in ctx.points:
        cfg = load_config(ctx.spec, p.overrides).to_dict()
        t, m = cfg["train"], cfg["model"]
        n_train = _n_train(cfg)
        steps = math.ceil(n_train / t["batch_size"]) * t["epochs"]
        noisy = cfg["noise"]["model"] != "none" and cfg["noise"].get("sigma") != 0
        train_s += steps * step_time(cfg["rule"]["name"], m, t["batch_size"], noisy,
                                     m["dtype"])
        # Evaluation: one forward pass over train + test after every epoch (and before the
        # first); a forward pass costs about a third of a BP step per sample.
        n_test = cfg["data"].get("n_test") or DATASET_SHAPES.get(
            cfg["data"]["name"], {}).get("n_test") or 0
        bp = step_time("bp", m, t["batch_size"], False, m["dtype"])
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
# The command line
# ======================================================================================


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reproduce.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join([f"  {e.key}  {e.title}" for e in EXPERIMENTS.values()]
                          + [f"  {k}  experiments/{m}.py" for k, m in SCRIPT_EXPERIMENTS.items()]))
    p.add_argument("experiment", choices=list(EXPERIMENTS) + list(SCRIPT_EXPERIMENTS) + ["all"])
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
    print(f"== {exp.key}: {exp.title} [{args.size}]: {len(ctx.points)} runs -> {rel(ctx.runs)}",
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
    print(f"results: {rel(ctx.results)}/ ({', '.join(f.name for f in figs)}, table.md)")
    if args.docs:
        dest = REPO / "docs" / "experiments" / f"{exp.slug}{suffix}"
        dest.mkdir(parents=True, exist_ok=True)
        for f in figs:
            shutil.copy2(f, dest / f.name)
        print(f"copied {len(figs)} figures to {rel(dest)}/")
    return ok


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    keys = (list(EXPERIMENTS) + list(SCRIPT_EXPERIMENTS) if args.experiment == "all"
            else [args.experiment])
    ok = True
    for k in keys:
        if k in SCRIPT_EXPERIMENTS:
            ok = run_script_experiment(k, args) and ok
        else:
            ok = run_experiment(EXPERIMENTS[k], args) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
