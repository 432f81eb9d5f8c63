"""noisysim compare (and the pooling check of summary / plot) on trajectory files written
with the real recorder: per-run numbers against hand-computed values, tests against
noisysim.stats on the same numbers, bad input as one line and exit code 2."""

from __future__ import annotations

import csv
import json
import math

import h5py
import numpy as np
import pytest

from noisysim import stats
from noisysim.analysis import AnalysisWarning, SkippedFileWarning, summarize
from noisysim.cli import main
from noisysim.compare import compare, format_comparison
from noisysim.errors import NoisysimError
from noisysim.plot import plot_curves
from noisysim.record import TrajectoryWriter


def write_run(path, rule, seed, steps, values, *, lr=1e-3, batch_size=100):
    """A trajectory whose eval/test_accuracy (and test_loss = 1 - it) is ``values`` at
    ``steps``; named and seeded as a sweep names its points."""
    config = {"name": f"t-rule.name={rule}-seed={seed}", "seed": seed,
              "rule": {"name": rule}, "optimizer": {"name": "adam", "lr": lr},
              "train": {"batch_size": batch_size}, "data": {"name": "digits"}}
    with TrajectoryWriter(path, config, seed) as w:
        for step, value in zip(steps, values):
            w.log("eval", {"step": int(step), "test_accuracy": float(value),
                           "test_loss": 1.0 - float(value)})
        w.set_status("completed")
    return path


STEPS = [0, 10, 20, 30, 40]
FAST = {  # seed -> curve; seed 2 logged every 5 updates instead of every 10
    0: (STEPS, [0.1, 0.6, 0.8, 0.85, 0.9]),
    1: (STEPS, [0.1, 0.5, 0.7, 0.9, 0.88]),
    2: ([0, 5, 10, 15, 20, 25, 30, 35, 40], [0.1, 0.3, 0.5, 0.7, 0.75, 0.8, 0.82, 0.84, 0.86]),
}
SLOW = {  # seed 1 never reaches 0.75
    0: (STEPS, [0.1, 0.3, 0.5, 0.7, 0.8]),
    1: (STEPS, [0.1, 0.2, 0.4, 0.6, 0.7]),
    2: (STEPS, [0.1, 0.4, 0.6, 0.75, 0.78]),
}


@pytest.fixture
def two_rules(tmp_path):
    # files in an order that is not the seed order: pairing must go by seed
    for seed in (2, 0, 1):
        write_run(tmp_path / f"fast-{seed}.h5", "fast", seed, *FAST[seed])
        write_run(tmp_path / f"slow-{seed}.h5", "slow", seed, *SLOW[seed])
    return tmp_path


def hand_auc(x, y):
    """Trapezoid by hand over the whole span, divided by it."""
    area = sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))
    return area / (x[-1] - x[0])


def test_efficiency_and_groups_match_hand_computed_values(two_rules):
    c = compare(two_rules, by="rule.name", threshold=0.75)
    assert [g.label for g in c.groups] == ["fast", "slow"] and c.higher and c.span == (0, 40)
    for g, curves in zip(c.groups, (FAST, SLOW)):
        seeds = list(g.seeds)
        want = {s: curves[s] for s in seeds}
        assert g.per_run["final"] == tuple(want[s][1][-1] for s in seeds)
        assert g.per_run["best"] == tuple(max(want[s][1]) for s in seeds)
        assert g.per_run["auc"] == pytest.approx([hand_auc(*want[s]) for s in seeds], rel=1e-12)
        for name in ("final", "best", "auc"):
            assert getattr(g, name) == stats.describe(g.per_run[name])
    fast, slow = c.groups
    # first logged update at or above 0.75: seed 0 at 20, seed 1 at 30, seed 2 at 20 (every 5)
    assert dict(zip(fast.seeds, fast.per_run["updates"])) == {0: 20, 1: 30, 2: 20}
    assert dict(zip(slow.seeds, slow.per_run["updates"])) == {0: 40, 1: math.inf, 2: 30}
    assert (fast.updates.n_reached, slow.updates.n_reached, slow.updates.n_not_reached) == (3, 3 - 1, 1)
    assert slow.updates.stats.mean == 35 and slow.updates.median == 40
    assert slow.samples.stats.mean == 3500 and slow.samples.per_run.count(math.inf) == 1
    text = format_comparison(c)
    assert "(2/3 reached)" in text and "(3/3 reached)" in text


def test_paired_when_seeds_match_with_holm_and_the_same_numbers_as_stats(two_rules, tmp_path):
    c = compare(two_rules, by="rule.name", baseline="slow")
    (pair,) = c.pairs
    fast, slow = c.groups
    a = [FAST[s][1][-1] for s in (0, 1, 2)]
    b = [SLOW[s][1][-1] for s in (0, 1, 2)]
    assert pair.a == "fast" and pair.b == "slow" and "same seeds (0,1,2): paired" == pair.reason
    assert pair.difference == stats.paired_difference(a, b)
    assert pair.p_holm == pair.difference.p  # one comparison: nothing to adjust
    # a third group with other seeds: Welch against it, Holm over the two pairs
    for seed in (5, 6, 7):
        write_run(tmp_path / f"other-{seed}.h5", "other", seed, STEPS, [0.1, 0.2, 0.3, 0.4, 0.5 + seed / 100])
    c = compare(tmp_path, by="rule.name", baseline="slow")
    assert [(p.a, p.b, p.difference.test) for p in c.pairs] == [
        ("fast", "slow", "paired t"), ("other", "slow", "Welch t")]
    welch = c.pairs[1]
    assert "seeds differ (other: 5,6,7; slow: 0,1,2): unpaired" == welch.reason
    assert welch.difference == stats.welch_difference([0.5 + s / 100 for s in (5, 6, 7)], b)
    np.testing.assert_array_equal([p.p_holm for p in c.pairs],
                                  stats.holm([p.difference.p for p in c.pairs]))
    every = compare(tmp_path, by="rule.name")  # no baseline: every pair
    assert [(p.a, p.b) for p in every.pairs] == [("fast", "other"), ("fast", "slow"),
                                                 ("other", "slow")]


def test_threshold_fraction_and_lower_is_better(two_rules):
    c = compare(two_rules, threshold_fraction=0.9)
    best = np.mean([FAST[s][1][-1] for s in (0, 1, 2)])
    assert c.threshold == pytest.approx(0.9 * best, rel=1e-12)
    assert "fast" in c.threshold_source
    loss = compare(two_rules, metric="eval/test_loss", threshold=0.25, measure="best")
    assert not loss.higher  # inferred from the name
    fast = loss.groups[0]
    # loss = 1 - accuracy <= 0.25 where the accuracy first reaches 0.75 (as above)
    assert dict(zip(fast.seeds, fast.per_run["updates"])) == {0: 20, 1: 30, 2: 20}
    assert fast.per_run["best"] == tuple(1.0 - max(FAST[s][1]) for s in fast.seeds)
    assert loss.pairs[0].measure == "best"


def test_calibration_end_to_end_on_recorded_files(tmp_path):
    """Zero true difference, runs sharing seeds: what compare reads back from the files
    equals the numbers written, and its test is the paired one on them (the rejection rate
    of that test is calibrated in test_stats.py)."""
    rng = np.random.default_rng(5)
    finals = {}
    for seed in range(6):
        shared = rng.normal(0.8, 0.05)  # the seed's own effect, the same for both rules
        for rule in ("a", "b"):
            finals[rule, seed] = shared + rng.normal(0, 0.01)
            write_run(tmp_path / f"{rule}-{seed}.h5", rule, seed, [0, 50, 100],
                      [0.1, 0.5, finals[rule, seed]])
    c = compare(tmp_path, baseline="b")
    a, b = ([finals[r, s] for s in range(6)] for r in ("a", "b"))
    assert c.pairs[0].difference == stats.paired_difference(a, b)
    assert c.pairs[0].difference.p > 0.05  # this draw does not reject (seeded)
    code, out, _ = run_cli("compare", str(tmp_path), "--baseline", "b", "--json")
    data = json.loads(out)
    assert code == 0 and data["pairs"][0]["difference"]["p"] == c.pairs[0].difference.p
    assert data["groups"][0]["final"]["ci"]["low"] == c.groups[0].final.ci.low


# -- command line and bad input -------------------------------------------------------


def run_cli(*argv):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("noisysim: error: "), err
    return lines[0]


def test_compare_command_prints_tables_and_a_forest_plot(two_rules, tmp_path):
    png = tmp_path / "fig" / "forest.png"
    code, out, err = run_cli("compare", str(two_rules), "--by", "rule.name", "--baseline",
                             "slow", "--threshold", "0.75", "--plot", str(png))
    assert code == 0, err
    assert "paired t" in out and "same seeds (0,1,2): paired" in out and "p Holm" in out
    assert "fast - slow" in out and f"wrote {png}" in out
    # 3 seeds: the exact signed-rank test's smallest p is 2 / 2^3
    assert "Wilcoxon signed-rank p-value cannot go below 0.25" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bootstrap_intervals_are_seeded_per_group(two_rules):
    c = compare(two_rules, bootstrap=True, seed=4)
    for i, g in enumerate(c.groups):
        assert g.final == stats.describe(g.per_run["final"], bootstrap=True, seed=4 + i)
        assert g.final.ci.method == "bootstrap BCa"
    assert c.pairs[0].difference.ci.method == "bootstrap BCa"
    assert compare(two_rules, bootstrap=True, seed=4) == c  # rerun: the same numbers


@pytest.mark.parametrize("command", ["compare", "summary"])
def test_mixed_configs_are_refused_unless_grouped_or_pooled(two_rules, command):
    write_run(two_rules / "fast-lr.h5", "fast", 3, STEPS, FAST[0][1], lr=1e-2)
    code, _, err = run_cli(command, str(two_rules))
    line = one_error_line(err)
    assert code == 2 and "group fast differ in optimizer.lr (0.001, 0.01)" in line
    assert "--by optimizer.lr" in line and "--pool" in line
    code, _, err = run_cli(command, str(two_rules), "--pool")
    assert code == 0 and "warning: pooling runs in group fast differ in optimizer.lr" in err
    # --where keeps one lr: the runs left are replicates (filtered before grouping)
    code, _, err = run_cli(command, str(two_rules), "--where", "optimizer.lr=0.001")
    assert code == 0 and err == ""
    if command == "compare":
        c = compare(two_rules, where=["optimizer.lr=0.001"])
        assert [g.final.n for g in c.groups] == [3, 3]
    # grouped by it: the lone lr=0.01 run is its own group (compare needs 2 runs: exit 2)
    code, _, err = run_cli(command, str(two_rules), "--by", "rule.name", "--by", "optimizer.lr")
    if command == "summary":
        assert code == 0
    else:
        assert code == 2 and "group rule.name=fast, optimizer.lr=0.01 has 1 run" in one_error_line(err)


def test_bad_input_is_one_line_and_exit_2(two_rules, tmp_path):
    code, _, err = run_cli("compare", str(two_rules), "--metric", "eval/accuracy")
    assert code == 2 and "eval/accuracy" in one_error_line(err)
    code, _, err = run_cli("compare", str(two_rules / "fast-0.h5"), str(two_rules / "slow-0.h5"))
    assert code == 2 and "has 1 run" in one_error_line(err)
    code, _, err = run_cli("compare", str(two_rules), "--baseline", "danp")
    assert code == 2 and "'fast', 'slow'" in one_error_line(err)
    with pytest.raises(SystemExit) as exc:  # argparse: the two thresholds exclude each other
        run_cli("compare", str(two_rules), "--threshold", "0.5", "--threshold-fraction", "0.9")
    assert exc.value.code == 2


def test_an_unreadable_file_is_skipped_with_one_warning(two_rules):
    broken = two_rules / "broken.h5"
    broken.write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    code, out, err = run_cli("compare", str(two_rules), "--baseline", "slow")
    lines = err.strip().splitlines()
    assert code == 0 and len(lines) == 1 and "warning: skipping" in lines[0] and "broken.h5" in lines[0]
    assert "fast - slow" in out
    with pytest.warns(SkippedFileWarning):
        assert compare(two_rules).groups[0].final.n == 3


def test_summarize_and_plot_refuse_mixed_configs_in_python_too(two_rules):
    write_run(two_rules / "fast-lr.h5", "fast", 3, STEPS, FAST[0][1], lr=1e-2)
    with pytest.raises(NoisysimError, match="optimizer.lr"):
        summarize(two_rules)
    with pytest.warns(AnalysisWarning, match="pooling"):
        assert summarize(two_rules, pool=True)[0]["n"] == 4
    with pytest.raises(NoisysimError, match="optimizer.lr"):  # plot groups the same way
        plot_curves(two_rules, two_rules / "mixed.png", x="step")
    assert not (two_rules / "mixed.png").exists()


def test_plot_band_is_the_t_interval_and_seeds_draws_every_run(two_rules, tmp_path):
    with pytest.warns(AnalysisWarning, match="using the 5 they share"):
        res = plot_curves(two_rules, tmp_path / "band.png", by="rule.name", x="step")
    with open(res.data_path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][-3:] == ["eval/test_accuracy 95% CI low", "eval/test_accuracy 95% CI high",
                            "n"]
    for entry in res.curves:  # runs share steps 0, 10, ..., 40 (seed 2's extra ones drop)
        half = stats.t_halfwidth(entry["std"], entry["n"])
        mine = [r for r in rows[1:] if r[0] == entry["rule.name"]]
        np.testing.assert_allclose([float(r[-3]) for r in mine], entry["mean"] - half, rtol=1e-12)
        np.testing.assert_allclose([float(r[-2]) for r in mine], entry["mean"] + half, rtol=1e-12)
    ax = res.figure.axes[0]
    assert len(ax.collections) == 2 and len(ax.lines) == 2  # two bands, two mean lines
    with pytest.warns(AnalysisWarning):
        res = plot_curves(two_rules, tmp_path / "seeds.png", by="rule.name", x="step",
                          seeds=True)
    ax = res.figure.axes[0]
    assert len(ax.collections) == 0 and len(ax.lines) == 2 + 6  # plus one line per run
    with h5py.File(two_rules / "slow-1.h5") as f:  # the thin lines are the runs' own values
        want = f["eval/test_accuracy"][:]
    assert any(np.array_equal(line.get_ydata(), want) for line in ax.lines)
