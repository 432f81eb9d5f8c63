"""The main job as a library function (``noisysim run`` without a file calls it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from noisysim.main_job import MAIN_RULES, main_job
from noisysim.record import Trajectory

TINY = ["train.epochs=1", "data.n_train=96", "data.n_test=48", "train.batch_size=48",
        "model.layers=[64,8,10]"]


def test_main_job_from_python_writes_one_run_per_rule_then_reuses_them(tmp_path):
    lines, reports = [], []
    job = main_job(TINY, tmp_path, echo=lines.append, progress=False,
                   report=lambda result, path, start: reports.append((result.status, path)))
    assert [p.name.rsplit("-", 1)[0] for p in job.paths] == [f"{r}-digits" for r in MAIN_RULES]
    assert reports == [("completed", p) for p in job.paths] and not job.interrupted
    assert lines[0].startswith("noisysim main job: bp, np, anp, danp on digits with gaussian")
    # the table rows are the runs' final test accuracies
    finals = {r: Trajectory(p).final("eval/test_accuracy") for r, p in zip(MAIN_RULES, job.paths)}
    assert {row["rule.name"]: row["mean"] for row in job.rows} == finals
    assert all(row["n"] == 1 for row in job.rows)
    assert job.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the plotted numbers beside it, as the README says (runs/main/comparison.csv)
    header = job.figure.with_suffix(".csv").read_text().splitlines()[0]
    assert header == ("rule.name,epoch,eval/test_accuracy mean,eval/test_accuracy std,"
                      "eval/test_accuracy 95% CI low,eval/test_accuracy 95% CI high,n")
    assert "runs/main/comparison.csv" in (Path(__file__).parents[1] / "README.md").read_text()

    again, reports = [], []
    rerun = main_job(TINY, tmp_path, echo=again.append, progress=False,
                     report=lambda *a: reports.append(a))
    assert reports == [] and rerun.paths == job.paths  # completed runs of the same config
    assert sum("already completed" in line for line in again) == len(MAIN_RULES)
    np.testing.assert_array_equal([r["mean"] for r in rerun.rows], [r["mean"] for r in job.rows])


def test_auto_keeps_the_main_job_on_the_cpu_where_a_gpu_is_usable(monkeypatch):
    """The main job's steps are far below auto's crossover, so a GPU machine runs it on the
    CPU (issue 10 measured the previous cuda engine's main job on an H200 at 17 s, against
    4.8 s on the CPU)."""
    from noisysim import backends
    from noisysim.config import load_config
    from noisysim.experiment import build

    monkeypatch.setattr(backends, "cuda_status", lambda refresh=False: (True, "a GPU"))
    monkeypatch.setattr(backends, "simulated", lambda: False)
    data = None
    for rule in MAIN_RULES:
        config = load_config(None, [f"rule.name={rule}"]).to_dict()
        assert config["backend"]["name"] == "auto"
        built = build(config, data=data)
        data = built.data
        assert built.backend == "cpu", rule
    # and a step above the crossover would go to the GPU
    wide = load_config(None, ["model.layers=[64,4096,4096,10]", "train.batch_size=256"])
    assert build(wide.to_dict(), data=data).backend == "cuda"
