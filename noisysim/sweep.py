"""Grids of runs: every point is its own trajectory.

Points run in a local process pool by default, or on a Dask distributed cluster when a
scheduler address is given. A failed point is reported and does not stop the others; a rerun
skips completed points (and resumes interrupted ones).
"""

from __future__ import annotations

import itertools
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from .errors import NoisysimError


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """["rule.name=np,anp", "seed=0,1"] -> {"rule.name": ["np", "anp"], "seed": ["0", "1"]}."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise NoisysimError(f"--grid expects KEY=V1,V2,... (e.g. rule.name=np,anp), got {spec!r}")
        grid[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    if not grid:
        raise NoisysimError("sweep needs at least one --grid KEY=V1,V2,...")
    return grid


def points(grid: dict[str, list[str]]) -> list[list[str]]:
    """The product of the grid as lists of KEY=VALUE overrides."""
    keys = list(grid)
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*grid.values())]


def point_name(base: str, overrides: list[str]) -> str:
    parts = [o.split("=", 1) for o in overrides]
    tag = "-".join(f"{k.split('.')[-1]}{v}" for k, v in parts)
    return f"{base}-{tag}".replace("/", "_").replace(" ", "")


def run_point(config_path, overrides, out) -> dict:
    """Run (or skip, or resume) one point; never raises: failures come back as a status."""
    from .config import load_config
    from .experiment import run
    from .record import Trajectory

    try:
        config = load_config(config_path, overrides).to_dict()
        path = Path(out) / f"{config['name']}.h5"
        if path.exists():
            status = Trajectory(path).status
            if status == "completed":
                return {"point": overrides, "path": str(path), "status": "skipped"}
            if status == "interrupted":
                result, path = run({}, resume=path)
                return {"point": overrides, "path": str(path), "status": result.status,
                        "message": result.message}
        result, path = run(config, out, path=path, overwrite=True)
        return {"point": overrides, "path": str(path), "status": result.status,
                "message": result.message, "final": result.final}
    except Exception as err:  # a failed point is a result, not the end of the sweep
        return {"point": overrides, "path": "", "status": "failed",
                "message": f"{type(err).__name__}: {err}"}


def sweep(config_path, grid, overrides=(), out="runs/sweep", workers=None, scheduler=None,
          stream=None) -> list[dict]:
    """Run every grid point; prints one line per finished point and returns the results."""
    from .config import load_config

    stream = stream or sys.stdout
    base = load_config(config_path, list(overrides)).to_dict()  # validate once, up front
    todo = []
    for point in points(grid):
        ov = list(overrides) + point + [f"name={point_name(base['name'], point)}"]
        load_config(config_path, ov)  # a bad grid value fails here, before any work
        todo.append(ov)
    Path(out).mkdir(parents=True, exist_ok=True)
    print(f"sweep: {len(todo)} points -> {out}/ "
          f"({'dask ' + scheduler if scheduler else 'local pool'})", file=stream, flush=True)
    results = []

    def report(res):
        results.append(res)
        label = " ".join(o for o in res["point"] if not o.startswith("name="))
        msg = f": {res['message']}" if res.get("message") else ""
        print(f"[{len(results)}/{len(todo)}] {label}: {res['status']}{msg}", file=stream, flush=True)

    if scheduler:
        try:
            from dask.distributed import Client, as_completed as dask_completed
        except ImportError:
            raise NoisysimError("--scheduler needs Dask: pip install 'noisysim[dist]'") from None
        with Client(scheduler) as client:
            futures = [client.submit(run_point, config_path, ov, str(out), pure=False) for ov in todo]
            for fut in dask_completed(futures):
                report(fut.result())
    else:
        workers = workers or os.cpu_count() or 1
        if workers == 1:
            for ov in todo:
                report(run_point(config_path, ov, str(out)))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(run_point, config_path, ov, str(out)) for ov in todo]
                for fut in as_completed(futures):
                    report(fut.result())
    failed = [r for r in results if r["status"] not in ("completed", "skipped")]
    print(f"sweep done: {len(results) - len(failed)} ok, {len(failed)} not completed",
          file=stream, flush=True)
    return results
