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
