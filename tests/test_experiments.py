"""The experiment driver (experiments/reproduce.py) end to end, at its --tiny size.

Experiment a (teacher problem: generated data, no download) runs in a subprocess exactly as
a user runs it: one `noisysim sweep` per variant, then the analysis, which must write its
markdown table and figure. A dry run checks that every experiment's plan resolves to valid
configs at every size (no data is loaded, nothing is trained).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "reproduce.py"
RULES = ("bp", "dbp", "np", "dnp", "inp", "dinp", "anp", "danp")


def _run(args, tmp_path, timeout):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["MPLBACKEND"] = "Agg"
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--root", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_teacher_experiment_tiny_end_to_end(tmp_path):
    proc = _run(["a", "--tiny", "--workers", "1"], tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    runs = sorted((tmp_path / "runs" / "a_teacher-tiny").glob("*.h5"))
    assert len(runs) == 2 * len(RULES)  # two SGD learning rates at --tiny

    results = tmp_path / "results" / "a_teacher-tiny"
    table = (results / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| rule | decorrelated | best lr |")
    best = rows[1:1 + len(RULES)]  # the first table: each rule at its best lr
    assert sorted(r.split("|")[1].strip() for r in best) == sorted(RULES)
    for row in best:  # a finite final error for every rule
        final = row.split("|")[6].strip().split()[0]
        assert 0.0 <= float(final) < 10.0, row

    figure = results / "parameter_error.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure.stat().st_size > 5000
    curve = (results / "parameter_error.csv").read_text().splitlines()
    assert curve[0] == "rule,lr,step,mean,std,n"
    # Each curve starts at the initial weights (update 0) and the error falls for bp.
    bp = [line.split(",") for line in curve[1:] if line.startswith("bp,0.1,")]
    assert bp[0][2] == "0" and float(bp[-1][3]) < float(bp[0][3])

    # A rerun skips the completed points and only redoes the analysis.
    again = _run(["a", "--tiny", "--workers", "1"], tmp_path, timeout=60)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped" in again.stdout


@pytest.mark.parametrize("size", ["--tiny", None, "--full"])
def test_every_plan_resolves(tmp_path, size):
    proc = _run(["all", "--dry-run"] + ([size] if size else []), tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("noisysim.cli sweep") >= 6
    assert not (tmp_path / "runs").exists()  # a dry run trains nothing


def test_bench_vs_torch_runs_on_a_tiny_network_or_says_skipped(tmp_path):
    # Not a timing test: the comparison script must work end to end (both worker
    # processes, the table) where PyTorch is installed, and skip cleanly where it is not.
    import importlib.util

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "bench_vs_torch.py"), "--layers", "12,8,3",
         "--batches", "4", "--rules", "np,danp", "--repeats", "1", "--rounds", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if importlib.util.find_spec("torch") is None:
        assert proc.stdout.startswith("skipped: PyTorch is not installed")
        return
    rows = [line.split() for line in proc.stdout.splitlines()
            if line.split()[:1] in (["np"], ["danp"])]
    assert [r[:2] for r in rows] == [["np", "4"], ["danp", "4"]]
    assert all(float(r[4]) > 0 for r in rows)  # a speedup was computed
