"""The ``noisysim`` command: parse, call, print.

Exit codes: 0 done; 1 a run (or a sweep point) ended diverged or failed; 2 a user mistake
(bad config, bad values, missing or corrupt files, an existing output file): one line on
stderr naming the file/key/value and the fix, ``--debug`` shows the traceback instead;
130 interrupted by SIGINT or SIGTERM (the trajectory is flushed and checkpointed, status
"interrupted"; continue it with ``noisysim run --resume FILE``). Warnings (e.g. a file that
summary or plot skips) are printed as one line each on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

from . import __version__
from .backends import BACKENDS
from .errors import NoisysimError, one_line
from .main_job import MAIN_RULES, main_job

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    with warnings.catch_warnings():
        if not args.debug:
            warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except BrokenPipeError:
            # the reader went away (noisysim summary ... | head -1): end quietly, as Unix
            # tools do; point stdout at /dev/null so that the exit flush cannot fail again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0
        except NoisysimError as err:
            if args.debug:
                raise
            print(f"noisysim: error: {one_line(err)}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as err:  # e.g. an output folder that cannot be created
            if args.debug:
                raise
            print(f"noisysim: error: {one_line(err)} (run with --debug for details)",
                  file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            if args.debug:
                raise
            print("noisysim: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Every warning as one line on stderr: noisysim's own by their message alone."""
    ours = category.__module__.split(".")[0] == "noisysim"
    text = one_line(message) if ours else f"{category.__name__}: {one_line(message)}"
    print(f"noisysim: warning: {text}", file=file or sys.stderr, flush=True)


def where_option(parser: argparse.ArgumentParser) -> None:
    """``--where KEY=VALUE`` (repeatable) of every command that reads runs; pass the list to
    ``noisysim.analysis.select_runs`` (or to summarize, curves, plot_curves or compare as
    ``where``)."""
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="only runs whose config has this value, e.g. --where seed=0 "
                        "(repeatable: all must hold)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="noisysim",
        description="Simulate noisy neural hardware and train it with perturbation-based rules.",
    )
    p.add_argument("--version", action="version", version=f"noisysim {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    runs = argparse.ArgumentParser(add_help=False)  # the analysis commands' shared arguments
    runs.add_argument("paths", nargs="+", help="trajectory files or folders")
    runs.add_argument("--by", action="append", default=None,
                      help="config key to group by (default rule.name; repeatable)")
    where_option(runs)
    runs.add_argument("--pool", action="store_true",
                      help="pool runs whose configs differ in keys other than --by and the "
                           "replicate keys (refused otherwise, naming the keys)")
    one_metric = argparse.ArgumentParser(add_help=False)  # plot takes several (one per panel)
    one_metric.add_argument("--metric", default="eval/test_accuracy",
                            help="group/series (default eval/test_accuracy)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", parents=[common], help="train one configured run (or the main job)",
                       description="Train the run CONFIG describes, streaming its trajectory to "
                       "OUT/<name>.h5. Without CONFIG and --set (or with --main): the main job, which compares "
                       + ", ".join(MAIN_RULES) + " on the embedded digits data with intrinsic "
                       "noise and prints the comparison table. Progress goes to stderr (a bar on "
                       "a terminal, a plain line every 10 s otherwise), a summary to stdout.",
                       epilog="Exit codes: 0 completed, 1 diverged or failed, 2 bad input, 130 "
                       "interrupted (SIGINT/SIGTERM: flushed, checkpointed; continue with "
                       "--resume FILE). NOISYSIM_FLUSH_SECONDS (default 5) bounds what a killed "
                       "process loses.")
    r.add_argument("config", nargs="?", help="TOML experiment file: what it changes from the "
                   "embedded default (noisysim config show FILE prints the result)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set rule.name=anp (repeatable)")
    r.add_argument("--out", default=None, help="output folder (default runs/, main job runs/main/)")
    r.add_argument("--resume", metavar="FILE",
                   help="continue an interrupted (or killed) trajectory from its last checkpoint")
    r.add_argument("--overwrite", action="store_true", help="replace an existing trajectory")
    r.add_argument("--main", action="store_true",
                   help="the main job (the default without CONFIG and --set), with any --set "
                        "applied to each of its runs, e.g. --main --set train.epochs=5")
    r.add_argument("--backend", choices=BACKENDS, default=None,
                   help="compute backend (same as --set backend.name=...)")
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser("summary", parents=[common, runs, one_metric],
                       help="final metrics grouped by config keys",
                       description="Final value of a metric per run, as mean +- std (ddof 1) and "
                       "n over the runs of each group (usually seeds). Unreadable files are "
                       "skipped with a warning.")
    s.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    s.set_defaults(func=_cmd_summary)

    pl = sub.add_parser("plot", parents=[common, runs], help="mean curves with a band over seeds",
                        description="Mean of a metric against step or epoch per group of runs "
                        "with a 95% confidence band (t over the runs, drawn when n > 1); "
                        "writes the figure and the plotted numbers as CSV beside it.")
    pl.add_argument("-o", "--output", required=True, help="figure file (.png, .pdf, .svg)")
    pl.add_argument("--metric", action="append", default=None,
                    help="group/series (default eval/test_accuracy); repeat for one panel each")
    pl.add_argument("--x", default="epoch", choices=["step", "epoch"])
    pl.add_argument("--seeds", action="store_true",
                    help="draw every run's curve instead of the confidence band")
    pl.add_argument("--log", action="store_true", help="logarithmic y axis")
    pl.add_argument("--smooth", type=int, default=1, metavar="N",
                    help="trailing moving average over N points (default 1: none)")
    pl.set_defaults(func=_cmd_plot)

    c = sub.add_parser("compare", parents=[common, runs, one_metric],
                       help="statistics between groups: intervals, tests, efficiency",
                       description="Per group of runs (usually seeds): n, mean, std, median "
                       "and a 95% confidence interval of the final value, the best value and "
                       "the area under the learning curve (and, with a threshold, the updates "
                       "and samples to reach it). Between groups: the difference with its "
                       "interval, a paired t test and Wilcoxon signed-rank test when both "
                       "groups ran the same seeds, Welch's t test otherwise, an effect size "
                       "and Holm-adjusted p-values. Unreadable files are skipped with a "
                       "warning.",
                       epilog="Exit codes: 0 done, 2 bad input (a metric that does not exist, "
                       "a group with one run, runs that differ in unnamed config keys, no "
                       "usable file).")
    c.add_argument("--baseline", default=None,
                   help="compare every group against this one (default: every pair)")
    c.add_argument("--measure", default="final", choices=["final", "best", "auc"],
                   help="what the tests between groups compare (default final)")
    thr = c.add_mutually_exclusive_group()
    thr.add_argument("--threshold", type=float, default=None,
                     help="report updates and samples until the metric reaches this value")
    thr.add_argument("--threshold-fraction", type=float, default=None, metavar="F",
                     help="threshold = F x the best group's mean final value")
    c.add_argument("--lower-is-better", dest="higher", action="store_false", default=None,
                   help="lower values are better (default: so for metrics named *loss* or "
                        "*error*)")
    c.add_argument("--higher-is-better", dest="higher", action="store_true",
                   help="higher values are better (the default for other metrics)")
    c.add_argument("--bootstrap", action="store_true",
                   help="BCa bootstrap intervals instead of t intervals (seeded)")
    c.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    c.add_argument("--plot", default=None, metavar="FILE",
                   help="also draw the differences as a forest plot (.png, .pdf, .svg)")
    c.set_defaults(func=_cmd_compare)

    cf = sub.add_parser("config", parents=[common], help="show a resolved config and where each value came from")
    csub = cf.add_subparsers(dest="config_command", metavar="ACTION")
    cs = csub.add_parser("show", parents=[common], help="the resolved config, one key a line, with its source",
                         description="Print every key of the resolved config (the embedded default, "
                         "an included model file, FILE, then each --set) and where its value came "
                         "from: default, model file, your file or --set.")
    cs.add_argument("config", nargs="?", help="TOML experiment file (default: the embedded default)")
    cs.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (repeatable)")
    cs.add_argument("--toml", action="store_true", help="print the resolved config as TOML only")
    cs.set_defaults(func=_cmd_config_show)
    cf.set_defaults(func=lambda args: (cf.print_help(), EXIT_USAGE)[1])

    i = sub.add_parser("inspect", parents=[common], help="status, final metrics, config and datasets of a trajectory")
    i.add_argument("file")
    i.set_defaults(func=_cmd_inspect)

    sw = sub.add_parser("sweep", parents=[common], help="run a grid of configs (local processes or Dask)",
                        description="Run every point of the grid (the product of the --grid "
                        "values) as its own trajectory OUT/<name>-<key>=<value>....h5. A failed "
                        "point is reported and does not stop the others; a rerun skips completed "
                        "points and resumes interrupted ones.",
                        epilog="Exit codes: 0 all points completed, 1 some diverged or failed, "
                        "2 bad input, 130 interrupted.")
    sw.add_argument("config", nargs="?", help="TOML experiment file: what it changes from the "
                    "embedded default")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="a config key and its values (repeatable: the grid is the product)")
    sw.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key for every point (repeatable)")
    sw.add_argument("--out", default="runs/sweep", help="output folder (default runs/sweep)")
    sw.add_argument("--overwrite", action="store_true",
                    help="run every point from the start, replacing files of earlier runs (of "
                    "this or another config)")
    sw.add_argument("--workers", type=int, default=None,
                    help="local processes at a time (default: CPU count)")
    sw.add_argument("--scheduler", default=None,
                    help="run on the Dask cluster of this scheduler (tcp://host:port); workers "
                    "need noisysim and the output folder")
    sw.set_defaults(func=_cmd_sweep)

    b = sub.add_parser("bench", parents=[common], help="time full training steps",
                       description=_bench_description())
    b.add_argument("--rule", default="danp")
    b.add_argument("--layers", default="3072,1024,1024,1024,10",
                   help="widths, or a TOML array of layer tables for a conv net, e.g. "
                   "'[{conv = 16, kernel = 5}, {pool = \"max\", size = 2}, {dense = 10}]'")
    b.add_argument("--input-shape", default=None,
                   help="H,W,C of the input images of a conv net, e.g. 28,28,1")
    b.add_argument("--batch", type=int, default=1000)
    b.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    b.add_argument("--backend", default="cpu", choices=BACKENDS)
    b.add_argument("--noise", default="gaussian", help="intrinsic noise model (default gaussian, sigma 0.01)")
    b.add_argument("--dtype", default="float32")
    b.add_argument("--json", action="store_true", help="print only the JSON line")
    b.set_defaults(func=_cmd_bench)

    from .fit.cli import add_parser as _add_noise_parser  # noisysim noise fit (noisysim/fit)
    _add_noise_parser(sub, common)
    return p


# -- run ------------------------------------------------------------------------------------
def _cmd_run(args) -> int:
    from .config import load_config
    from .experiment import Progress, run

    start = time.monotonic()
    main_job = args.main or (args.config is None and not args.overrides and not args.resume)
    if args.backend:
        args.overrides = list(args.overrides) + [f"backend.name={args.backend}"]
    if args.resume:
        if args.config is not None or args.overrides or args.overwrite or args.out:
            given = ("CONFIG" if args.config is not None else "--set" if args.overrides
                     else "--overwrite" if args.overwrite else "--out")
            raise NoisysimError(f"--resume continues {args.resume} with its recorded config in "
                                f"place; drop {given} (or start a new run without --resume)")
        result, path = run({}, resume=args.resume, progress=Progress())
        return _report_run(result, path, start)
    if main_job:
        if args.config is not None:
            raise NoisysimError("--main runs the embedded comparison; drop CONFIG (or --main)")
        return _main_job(args)
    config = load_config(args.config, args.overrides).to_dict()
    out = args.out or "runs"
    result, path = run(config, out, overwrite=args.overwrite, progress=Progress())
    return _report_run(result, path, start)


def _report_run(result, path, start: float | None = None) -> int:
    """The closing summary: status, file, position, final evaluation, what to do next."""
    final = result.final
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if k not in ("epoch", "step"))
    took = f" in {time.monotonic() - start:.1f} s" if start is not None else ""
    print(f"{result.status}: {path} (step {result.step}, epoch {result.epoch}{took})"
          + (f"; {metrics}" if metrics else ""), flush=True)
    if result.message:
        print(f"  {result.message}")
    if result.status == "interrupted":
        print(f"  resume with: noisysim run --resume {path}", flush=True)
        return EXIT_INTERRUPTED
    if result.status == "diverged":
        print("  the file holds every row up to the divergence; lower optimizer.lr or "
              "rule.sigma and rerun with --overwrite", flush=True)
    return 0 if result.status == "completed" else EXIT_FAILED


def _main_job(args) -> int:
    job = main_job(args.overrides, args.out or "runs/main", overwrite=args.overwrite,
                   report=_report_run)
    return EXIT_INTERRUPTED if job.interrupted else 0


# -- analysis -------------------------------------------------------------------------------
def _cmd_summary(args) -> int:
    from .analysis import format_table, summarize

    rows = summarize(args.paths, by=args.by or ["rule.name"], metric=args.metric,
                     where=args.where, pool=args.pool)
    if args.json:
        for row in rows:
            print(json.dumps({"metric": args.metric, **row}, default=str))
    else:
        print(f"{args.metric}: final value per run, mean +- std (ddof 1) over the n runs of "
              "each group")
        print(format_table(rows))
    return 0


def _cmd_plot(args) -> int:
    from .plot import plot_curves

    res = plot_curves(args.paths, args.output, metric=args.metric or ["eval/test_accuracy"],
                      by=args.by or ["rule.name"], x=args.x, where=args.where, seeds=args.seeds,
                      log=args.log, smooth=args.smooth, pool=args.pool)
    n = sum(len(c["files"]) for c in res.curves)
    print(f"wrote {res.path} ({len(res.curves)} curves from {n} runs) and the plotted data "
          f"{res.data_path}")
    return 0


def _cmd_compare(args) -> int:
    from .compare import compare, format_comparison

    result = compare(args.paths, by=args.by or ["rule.name"], metric=args.metric,
                     baseline=args.baseline, measure=args.measure, threshold=args.threshold,
                     threshold_fraction=args.threshold_fraction, higher=args.higher,
                     bootstrap=args.bootstrap, where=args.where, pool=args.pool)
    if args.plot:
        from .plot import plot_forest

        plot_forest(result, args.plot)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_comparison(result))
    if args.plot:
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _cmd_inspect(args) -> int:
    from .record import Trajectory

    t = Trajectory(args.file)
    print(f"file:    {args.file}")
    print(f"status:  {t.status}" + (f" ({t.message})" if t.message else ""))
    if "eval" in t.groups() and t.length("eval"):
        last = {k: v[-1] for k, v in t.table("eval").items()}
        print("final:   " + ", ".join(
            f"{k} {int(v)}" if k in ("step", "epoch") else f"{k} {float(v):.4g}"
            for k, v in last.items()))
    if t.status in ("interrupted", "running", "failed"):
        print(f"         continue with: noisysim run --resume {args.file}")
    print(f"format:  noisysim-trajectory v{t.format_version}, seed {t.seed}, noisysim "
          f"{t.noisysim_version}, created {t.created}, updated {t.updated}, "
          f"resumed {int(t.attrs.get('resumes', 0))} times")
    print("rows:    " + ", ".join(f"{g} {t.length(g)}" for g in t.groups()))
    print("config:")
    for line in json.dumps(t.config, indent=2, sort_keys=True).splitlines():
        print(f"  {line}")
    print("datasets:")
    slots: dict[str, int] = {}
    for name, shape, dtype in t.describe():
        parts = name.lstrip("/").split("/")
        if parts[0] == "checkpoint" and len(parts) > 2:  # one line per slot, not its tree
            slots[parts[1]] = slots.get(parts[1], 0) + 1
            continue
        print(f"  {name:40s} {str(shape):18s} {dtype}")
    for slot, n in slots.items():
        print(f"  {'/checkpoint/' + slot:40s} {n} datasets (optimiser state, generators, "
              "parameters: read with Trajectory.checkpoint())")
    return 0


# -- config ---------------------------------------------------------------------------------
def _cmd_config_show(args) -> int:
    from .config.load import explain_config

    cfg, origins = explain_config(args.config, args.overrides)
    if args.toml:
        print(cfg.to_toml(), end="")
        return 0
    from .config.values import _toml_value
    from .dotted import lookup

    plain = cfg.to_dict()
    values = {k: _toml_value(lookup(plain, k)) for k in origins}  # origins: one per leaf
    width = max(len(f"{k} = {v}") for k, v in values.items())
    for key, text in values.items():
        print(f"{key + ' = ' + text:{width}s}  # {origins[key]}")
    return 0



# -- sweep ----------------------------------------------------------------------------------
def _cmd_sweep(args) -> int:
    from .sweep import parse_grid, sweep

    if args.workers is not None and args.scheduler:
        raise NoisysimError("--workers applies to local processes; with --scheduler the Dask "
                            "cluster's workers run the points: drop one of them")
    if args.workers is not None and args.workers < 1:
        raise NoisysimError(f"--workers must be >= 1, got {args.workers}")
    grid = parse_grid(args.grid)
    results = sweep(args.config, grid, overrides=args.overrides, out=args.out,
                    workers=args.workers, scheduler=args.scheduler, overwrite=args.overwrite)
    statuses = {r["status"] for r in results}
    if statuses & {"interrupted", "not finished"}:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if statuses - {"completed", "skipped"} else 0


# -- bench ----------------------------------------------------------------------------------
def _bench_description() -> str:
    from .bench import FLOP_COUNTING

    return "Time full training steps on random data and print one JSON line. " + FLOP_COUNTING


def _cmd_bench(args) -> int:
    from .bench import bench

    shape = None if args.input_shape is None else args.input_shape.split(",")  # Network checks
    result = bench(rule=args.rule, layers=args.layers, batch=args.batch, steps=args.steps,
                   backend=args.backend, noise=args.noise, dtype=args.dtype,
                   verbose=not args.json, input_shape=shape)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
