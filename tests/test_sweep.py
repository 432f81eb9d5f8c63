"""``noisysim sweep`` end to end: local processes, a Dask LocalCluster, reruns that skip
finished points, a failing point that does not stop the others, up-front validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from noisysim.errors import NoisysimError
from noisysim.sweep import parse_grid, point_name, points

ROOT = Path(__file__).resolve().parents[1]

try:
    from tiny_config import TINY
except ImportError:  # tests/ imported as a package
    from tests.tiny_config import TINY


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [e.get("PYTHONPATH")] if p])
    e["NUMBA_NUM_THREADS"] = "1"
    e["MPLBACKEND"] = "Agg"
    return e


def sweep(*args, cwd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "noisysim.cli", "sweep", *map(str, args)],
                          cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def explain(p) -> str:
    return f"rc {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"


def status_of(path: Path) -> str:
    with h5py.File(path, "r") as f:
        v = f.attrs["status"]
        return v.decode() if isinstance(v, bytes) else str(v)


def config_of(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["config"])


def point_lines(stdout: str) -> dict[str, str]:
    """'[i/n] rule.name=np seed=0: completed ...' -> {'rule.name=np seed=0': 'completed ...'}"""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("["):
            label, _, rest = line.split("] ", 1)[1].partition(": ")
            out[label] = rest
    return out


@pytest.fixture
def cfg(tmp_path) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    return p


# -- the grid -----------------------------------------------------------------------------
def test_grid_parsing_and_point_names():
    grid = parse_grid(["rule.name=np, anp", "seed=0,1", "model.layers=[64,16,10],[64,8,10]"])
    assert grid == {"rule.name": ["np", "anp"], "seed": ["0", "1"],
                    "model.layers": ["[64,16,10]", "[64,8,10]"]}
    pts = points(grid)
    assert len(pts) == 8 and pts[0] == ["rule.name=np", "seed=0", "model.layers=[64,16,10]"]
    assert point_name("tiny", ["rule.name=np", "seed=1"]) == "tiny-rule.name=np-seed=1"
    name = point_name("tiny", ["model.layers=[64, 16, 10]"])
    assert "/" not in name and " " not in name and "[" not in name
    for bad in (["rule.name"], ["=np"], ["rule.name="], ["seed=0", "seed=1"], ["seed=0,0"], []):
        with pytest.raises(NoisysimError):
            parse_grid(bad)


def test_bad_grid_value_fails_up_front_with_one_line(cfg, tmp_path):
    p = sweep(cfg, "--grid", "rule.name=np,anp", "--grid", "rule.sigma=1e-3,-1",
              "--out", tmp_path / "bad", cwd=tmp_path)
    assert p.returncode == 2, explain(p)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr
    assert "rule.sigma" in lines[0] and "-1" in lines[0]
    assert not list(tmp_path.rglob("*.h5"))  # validation happens before any work


# -- local processes ----------------------------------------------------------------------
def test_local_pool_runs_every_point_and_a_rerun_skips_them(cfg, tmp_path):
    out = tmp_path / "grid"
    p = sweep(cfg, "--grid", "rule.name=np,anp", "--grid", "seed=0,1", "--out", out,
              "--workers", "2", cwd=tmp_path)
    assert p.returncode == 0, explain(p)
    files = sorted(out.glob("*.h5"))
    assert [f.name for f in files] == sorted(
        f"tiny-rule.name={r}-seed={s}.h5" for r in ("np", "anp") for s in (0, 1))
    for f in files:
        assert status_of(f) == "completed"
        c = config_of(f)
        assert f.name == f"tiny-rule.name={c['rule']['name']}-seed={c['seed']}.h5"
    lines = point_lines(p.stdout)
    assert len(lines) == 4 and all(v.startswith("completed") for v in lines.values())
    assert "local processes" in p.stdout
    assert "sweep done: 4 completed" in p.stdout
    assert "final eval/test_accuracy" in p.stdout  # the closing table

    stamps = {f: f.stat().st_mtime_ns for f in files}
    again = sweep(cfg, "--grid", "rule.name=np,anp", "--grid", "seed=0,1", "--out", out,
                  "--workers", "2", cwd=tmp_path)
    assert again.returncode == 0, explain(again)
    lines = point_lines(again.stdout)
    assert len(lines) == 4 and all(v.startswith("skipped") for v in lines.values()), again.stdout
    assert "0 to run" in again.stdout
    assert {f: f.stat().st_mtime_ns for f in files} == stamps  # not touched

    # the same point of a different config: its file is left alone, the point fails
    clash = sweep(cfg, "--grid", "rule.name=np", "--grid", "seed=0", "--set", "train.epochs=1",
                  "--out", out, "--workers", "1", cwd=tmp_path)
    assert clash.returncode == 1, explain(clash)
    line = point_lines(clash.stdout)["rule.name=np seed=0"]
    assert line.startswith("failed") and "different config" in line and "train.epochs" in line
    assert {f: f.stat().st_mtime_ns for f in files} == stamps


# -- Dask ---------------------------------------------------------------------------------
def test_dask_cluster_runs_points_and_a_failing_point_does_not_stop_the_others(
        cfg, tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    monkeypatch.setenv("PYTHONPATH", env()["PYTHONPATH"])  # the workers import noisysim
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    out = tmp_path / "dask"
    grid = ["--grid", "optimizer.lr=1e-2,1e30,3e-2"]  # 1e30 diverges at run time
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        p = sweep(cfg, *grid, "--out", out, "--scheduler", cluster.scheduler_address,
                  cwd=tmp_path)
    assert p.returncode == 1, explain(p)  # not every point completed
    assert f"Dask scheduler {cluster.scheduler_address}" in p.stdout
    lines = point_lines(p.stdout)
    assert lines["optimizer.lr=1e-2"].startswith("completed")
    assert lines["optimizer.lr=3e-2"].startswith("completed")
    assert lines["optimizer.lr=1e30"].startswith("diverged") and "step" in lines["optimizer.lr=1e30"]
    assert "2 completed" in p.stdout and "1 not completed" in p.stdout
    assert status_of(out / "tiny-optimizer.lr=1e-2.h5") == "completed"
    assert status_of(out / "tiny-optimizer.lr=3e-2.h5") == "completed"
    assert status_of(out / "tiny-optimizer.lr=1e30.h5") == "diverged"

    # a rerun (on local processes) skips both completed points and does not retry the
    # deterministic divergence
    again = sweep(cfg, *grid, "--out", out, "--workers", "1", cwd=tmp_path)
    assert again.returncode == 1, explain(again)
    lines = point_lines(again.stdout)
    assert lines["optimizer.lr=1e-2"].startswith("skipped")
    assert lines["optimizer.lr=3e-2"].startswith("skipped")
    assert lines["optimizer.lr=1e30"].startswith("diverged")
    assert "0 to run" in again.stdout


def test_local_workers_get_their_share_of_blas_threads(monkeypatch):
    """The BLAS thread variables are set (cores // workers) when the process that forks the
    workers is made, the user's own settings win, and the environment is restored after."""
    from noisysim import sweep as sweep_module

    monkeypatch.setattr(sweep_module.os, "cpu_count", lambda: 8)
    for key in sweep_module.BLAS_THREAD_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    seen = {}

    def context():
        seen.update({k: os.environ.get(k) for k in sweep_module.BLAS_THREAD_VARS})
        return sweep_module.multiprocessing.get_context("spawn")

    monkeypatch.setattr(sweep_module, "_context", context)
    assert sweep_module._on_local([], 4, lambda task, res: None) is False
    assert seen == {"OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "3", "OMP_NUM_THREADS": "2"}
    assert "OPENBLAS_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ
    assert os.environ["MKL_NUM_THREADS"] == "3"
