"""Grids of runs: every point is its own trajectory.

    noisysim sweep CONFIG --grid rule.name=np,anp --grid seed=0,1 [--out DIR]
                          [--workers N | --scheduler tcp://host:port]

The grid is the product of the ``--grid`` values; point ``rule.name=np, seed=1`` of a config
named ``tiny`` writes ``DIR/tiny-rule.name=np-seed=1.h5`` (the config's own name, with the
point's values appended). Every point's config is resolved and validated here, before any
work, and sent to the workers as data (workers need noisysim and the output folder, not the
config file).

Points run in local processes (one fresh process per point, ``--workers`` at a time), or on a
Dask distributed cluster when a scheduler address is given. A point that fails (an error, a
divergence, even a crashed process or a lost Dask worker) is reported and does not stop the
others. A rerun of the same sweep skips the points whose file holds a finished run of the
same config, resumes interrupted ones and reruns failed ones; a file written by a different
config is left alone and the point reported as failed (``overwrite`` replaces it, and reruns
every point). The closing table averages over seeds: it groups by the grid keys other than
``seed``.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import threading
from pathlib import Path

from .errors import NoisysimError

#: Status of a point whose file already holds a finished run of the same config.
SKIPPED = "skipped"
_NAME_BAD = re.compile(r"[^A-Za-z0-9._+=@,-]+")


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """["rule.name=np,anp", "seed=0,1"] -> {"rule.name": ["np", "anp"], "seed": ["0", "1"]}.

    Values are split at commas outside brackets and quotes, so list values work:
    ``model.layers=[64,32,10],[64,16,10]``.
    """
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        items = _split_values(values) if sep else []
        if not sep or not key or not items:
            raise NoisysimError(f"--grid expects KEY=V1,V2,... (e.g. rule.name=np,anp), got {spec!r}")
        if key in grid:
            raise NoisysimError(f"--grid names {key} twice; give all its values in one "
                                f"--grid {key}=V1,V2,...")
        if len(set(items)) != len(items):
            raise NoisysimError(f"--grid {spec!r} lists a value twice; list each value once")
        grid[key] = items
    if not grid:
        raise NoisysimError("sweep needs at least one --grid KEY=V1,V2,... "
                            "(e.g. --grid rule.name=np,anp --grid seed=0,1)")
    return grid


def _split_values(text: str) -> list[str]:
    items, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    items.append("".join(cur).strip())
    return [i for i in items if i]


def points(grid: dict[str, list[str]]) -> list[list[str]]:
    """The product of the grid as lists of KEY=VALUE overrides."""
    keys = list(grid)
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*grid.values())]


def point_name(base: str, overrides: list[str]) -> str:
    """``tiny`` + ["rule.name=np", "seed=1"] -> ``tiny-rule.name=np-seed=1`` (a valid name)."""
    tag = "-".join(_NAME_BAD.sub("_", o.replace(" ", "")).strip("_") for o in overrides)
    name = f"{base}-{tag}"
    if len(name) > 200:
        name = f"{name[:180]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return name


def _label(point: list[str]) -> str:
    return " ".join(point)


# -- planning -------------------------------------------------------------------------------
def plan(config: dict, path: Path, overwrite: bool = False) -> tuple[str, str]:
    """What to do for one point: ("run" | "resume" | "skip" | "conflict", why)."""
    from .record import Trajectory
    from .record.file import existing_run

    if not path.exists():
        return "run", ""
    if overwrite:
        return "run", "overwriting"
    kind, why = existing_run(path, config)
    if kind == "unreadable":
        return "run", "replacing an unreadable file"
    if kind == "different":
        return "conflict", why
    traj = Trajectory(path)
    if traj.status == "completed":
        return "skip", "already completed"
    if traj.status == "diverged":
        return "skip", f"diverged earlier ({traj.message}); change the config to rerun"
    if traj.status in ("interrupted", "running"):  # running: its writer was killed
        return "resume", f"resuming ({traj.status})"
    return "run", f"rerunning ({traj.status}: {traj.message})"


def run_point(config: dict, path: str, action: str = "run") -> dict:
    """Run or resume one point; never raises: failures come back as a status."""
    from .experiment import run

    try:
        if action == "resume":
            result, _ = run({}, resume=path)
        else:
            result, _ = run(config, path=path, overwrite=True)
        return {"status": result.status, "message": result.message, "final": result.final}
    except NoisysimError as err:
        return {"status": "failed", "message": str(err)}
    except KeyboardInterrupt:
        return {"status": "interrupted", "message": "interrupted before training started"}
    except Exception as err:  # a failed point is a result, not the end of the sweep
        return {"status": "failed", "message": " ".join(f"{type(err).__name__}: {err}".split())}


# -- the sweep ------------------------------------------------------------------------------
def sweep(config_path, grid, overrides=(), out="runs/sweep", workers=None, scheduler=None,
          stream=None, overwrite=False) -> list[dict]:
    """Run every grid point; prints one line per finished point and returns the results.
    ``overwrite``: run every point from the start, replacing whatever its file holds.

    Each result: ``point`` (its KEY=VALUE list), ``path``, ``status`` (completed, skipped,
    diverged, interrupted, failed, not finished), ``message`` and ``final`` (last eval row).
    """
    from .config import load_config

    stream = stream or sys.stdout
    overrides = list(overrides)
    load_config(config_path, overrides)  # the base config first: its errors are clearer
    out = Path(out).resolve()
    tasks = []
    for point in points(grid):
        ov = overrides + point
        base_name = load_config(config_path, ov)["name"]  # a bad grid value fails here
        config = load_config(config_path, ov + [f"name={point_name(base_name, point)}"]).to_dict()
        tasks.append({"point": point, "config": config,
                      "path": str(out / f"{config['name']}.h5")})
    names = [t["path"] for t in tasks]
    if len(set(names)) != len(names):
        raise NoisysimError("two grid points map to the same file name; make the values differ "
                            "in letters or digits")
    out.mkdir(parents=True, exist_ok=True)

    results: list[dict] = []
    n = len(tasks)

    def report(task, res):
        res = {"point": task["point"], "path": task["path"], **res}
        results.append(res)
        msg = f" ({res['message']})" if res.get("message") else ""
        acc = (res.get("final") or {}).get("test_accuracy")
        score = (f", test_accuracy {acc:.4f}"
                 if res["status"] == "completed" and isinstance(acc, float) else "")
        print(f"[{len(results)}/{n}] {_label(task['point'])}: {res['status']}{score}{msg}",
              file=stream, flush=True)

    todo = []
    for task in tasks:
        action, why = plan(task["config"], Path(task["path"]), overwrite)
        if action == "skip":
            status = SKIPPED if why == "already completed" else "diverged"
            report(task, {"status": status, "message": why})
        elif action == "conflict":
            report(task, {"status": "failed", "message": why, "conflict": True})
        else:
            todo.append({**task, "action": action})
    where = f"Dask scheduler {scheduler}" if scheduler else "local processes"
    resumed = sum(t["action"] == "resume" for t in todo)
    print(f"sweep: {n} points, {len(todo)} to run" + (f" ({resumed} resumed)" if resumed else "")
          + f" -> {out}/ ({where})", file=stream, flush=True)
    interrupted = False
    if todo:
        if scheduler:
            interrupted = _on_dask(scheduler, todo, report)
        else:
            interrupted = _on_local(todo, workers or os.cpu_count() or 1, report)
    for task in todo:
        if not any(r["path"] == task["path"] for r in results):
            report(task, {"status": "not finished", "message": "the sweep was interrupted"})
    _finish(results, list(grid), stream, interrupted)
    return results


def _finish(results, keys, stream, interrupted):
    done = [r for r in results if r["status"] in ("completed", SKIPPED)]
    bad = [r for r in results if r["status"] not in ("completed", SKIPPED)]
    print(f"sweep {'interrupted' if interrupted else 'done'}: {len(done)} completed "
          f"({sum(r['status'] == SKIPPED for r in results)} skipped), {len(bad)} not completed"
          + (": " + "; ".join(f"{_label(r['point'])} {r['status']}" for r in bad) if bad else ""),
          file=stream, flush=True)
    conflicts = [r for r in bad if r.get("conflict")]
    if conflicts:
        print(f"{len(conflicts)} points hold runs of a different config: rerun with --overwrite "
              "to replace them, or choose another --out", file=stream, flush=True)
    if interrupted or any(r["status"] not in ("completed", SKIPPED, "diverged")
                          and not r.get("conflict") for r in results):
        print("rerun the same command to resume interrupted points and retry failed ones",
              file=stream, flush=True)
    if done:
        from .analysis import format_table, summarize

        # the mean over seeds: group by the other grid keys
        by = [k for k in keys if k != "seed"] or ["rule.name"]
        try:
            rows = summarize([r["path"] for r in done], by=by, metric="eval/test_accuracy")
        except NoisysimError:
            return
        for row in rows:
            del row["files"], row["values"]
        print(f"final eval/test_accuracy by {', '.join(by)} (mean +- std over the other "
              "points, usually seeds):", file=stream)
        print(format_table(rows), file=stream, flush=True)


# -- local processes ------------------------------------------------------------------------
def _context():
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["noisysim.experiment"])  # imported once, then forked
        return ctx
    return multiprocessing.get_context("spawn")


def _child(conn, config, path, action, threads):
    try:
        import numba

        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    except Exception:
        pass
    res = run_point(config, path, action)
    conn.send(res)
    conn.close()


def _on_local(todo, workers, report) -> bool:
    """One fresh process per point, ``workers`` at a time. True if stopped by a signal.

    SIGINT/SIGTERM: no new point starts; running points get SIGINT, checkpoint and end as
    interrupted (a rerun resumes them).
    """
    if workers < 1:
        raise NoisysimError(f"--workers must be >= 1, got {workers}")
    threads = max(1, (os.cpu_count() or 1) // workers)
    # The BLAS reads its thread count when numpy loads, i.e. in the process that forks the
    # workers: set it before that process starts, so that `workers` points do not run
    # workers x cores BLAS threads (oversubscribed cores).
    blas = blas_thread_env(threads)
    os.environ.update(blas)
    ctx = _context()
    pending = list(todo)
    running: dict[int, tuple] = {}  # sentinel -> (process, receiving end, task)
    stop = {"signal": None}

    def handler(signum, frame):
        stop["signal"] = signum
        for proc, _, _ in running.values():
            if proc.pid:
                try:
                    os.kill(proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass

    main = threading.current_thread() is threading.main_thread()
    previous = ({s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
                if main else {})
    try:
        while running or (pending and stop["signal"] is None):
            while pending and len(running) < workers and stop["signal"] is None:
                task = pending.pop(0)
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, name=f"noisysim-{Path(task['path']).stem}",
                                   args=(send, task["config"], task["path"], task["action"], threads))
                proc.start()
                send.close()
                running[proc.sentinel] = (proc, recv, task)
            for sentinel in multiprocessing.connection.wait(list(running)):
                proc, recv, task = running.pop(sentinel)
                res = None
                try:
                    if recv.poll():
                        res = recv.recv()
                except (EOFError, OSError):
                    res = None
                recv.close()
                proc.join()
                if res is None:
                    code = proc.exitcode
                    how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
                           else f"exit code {code}")
                    res = {"status": "failed",
                           "message": f"its process died ({how}) without a result; see "
                                      f"`noisysim inspect {task['path']}`"}
                report(task, res)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for key in blas:
            os.environ.pop(key, None)
    return stop["signal"] is not None


#: environment variables that set a BLAS's (or OpenMP's) thread count when it loads
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def blas_thread_env(threads: int) -> dict[str, str]:
    """The BLAS thread variables to give local sweep workers: ``threads`` each, for those the
    user has not set (theirs win)."""
    return {key: str(threads) for key in BLAS_THREAD_VARS if key not in os.environ}


# -- Dask -----------------------------------------------------------------------------------
def _on_dask(scheduler, todo, report) -> bool:
    try:
        from dask.distributed import Client, as_completed
    except ImportError:
        raise NoisysimError("--scheduler needs Dask: pip install 'noisysim[dist]' "
                            "(or run without --scheduler on local processes)") from None
    try:
        client = Client(scheduler, timeout="15s")
    except (OSError, TimeoutError, ValueError) as err:
        raise NoisysimError(f"cannot connect to the Dask scheduler at {scheduler!r} "
                            f"({' '.join(str(err).split())}); check the address (tcp://host:port) "
                            "and that the scheduler is running") from None
    with client:
        futures = {}
        for task in todo:
            fut = client.submit(run_point, task["config"], task["path"], task["action"],
                                pure=False, key=f"noisysim-{Path(task['path']).stem}-{os.urandom(4).hex()}")
            futures[fut.key] = (fut, task)
        try:
            for fut in as_completed([f for f, _ in futures.values()]):
                task = futures[fut.key][1]
                try:
                    res = fut.result()
                except Exception as err:  # a lost worker, a cancelled task, ...
                    res = {"status": "failed",
                           "message": " ".join(f"{type(err).__name__}: {err}".split())}
                report(task, res)
        except KeyboardInterrupt:
            client.cancel([f for f, _ in futures.values()])
            return True
    return False
