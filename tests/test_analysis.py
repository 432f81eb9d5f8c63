"""Tables, curves and figures from trajectory files."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest

from noisysim.analysis import (
    AnalysisWarning,
    SkippedFileWarning,
    curves,
    format_table,
    get_config_value,
    summarize,
)
from noisysim.errors import NoisysimError
from noisysim.plot import plot_curves
from noisysim.record import TrajectoryWriter


def fake_run(path, rule, seed, accuracies, dataset="digits", lr=1e-3):
    """A trajectory whose eval group holds ``accuracies`` at epochs 1, 2, ..."""
    config = {"data": {"name": dataset}, "rule": {"name": rule, "sigma": 1e-3},
              "optimizer": {"name": "adam", "lr": lr}, "seed": seed}
    with TrajectoryWriter(path, config, seed) as w:
        for epoch, acc in enumerate(accuracies, start=1):
            w.log("train", {"step": epoch * 10, "loss": 1.0 - acc})
            w.log("eval", {"step": epoch * 10, "epoch": epoch, "test_accuracy": acc,
                           "test_loss": 1.0 - acc})
        w.set_status("completed")
    return path


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(3)
    acc = {"np": rng.uniform(0.3, 0.6, (3, 4)), "anp": rng.uniform(0.6, 0.9, (3, 4))}
    paths = {rule: [fake_run(tmp_path / f"{rule}_{s}.h5", rule, s, acc[rule][s]) for s in range(3)]
             for rule in acc}
    return paths, acc


def test_get_config_value():
    config = {"rule": {"name": "np"}, "network": {"widths": [784, 100, 10]}}
    assert get_config_value(config, "rule.name") == "np"
    assert get_config_value(config, "network.widths.1") == 100
    assert get_config_value(config, "rule.sigma", None) is None
    with pytest.raises(NoisysimError, match="rule.sigma.*name"):
        get_config_value(config, "rule.sigma")


def test_summarize_mean_std_over_seeds_equals_numpy(runs):
    paths, acc = runs
    rows = summarize(paths["np"] + paths["anp"], by=["rule.name"], metric="eval/test_accuracy")
    assert [r["rule.name"] for r in rows] == ["anp", "np"]
    for row in rows:
        finals = acc[row["rule.name"]][:, -1]
        assert row["n"] == 3
        assert row["mean"] == pytest.approx(np.mean(finals), rel=1e-12)
        assert row["std"] == pytest.approx(np.std(finals, ddof=1), rel=1e-12)
        assert sorted(row["files"]) == sorted(map(str, paths[row["rule.name"]]))
    single = summarize(paths["np"][:1], by="rule.name")
    assert single[0]["std"] == 0.0 and single[0]["n"] == 1
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["rule.name", "mean", "std", "n"]
    assert len(lines) == 4 and len({len(line) for line in lines[:2]}) == 1
    assert f"{rows[0]['mean']:.4g}" in lines[2]


def test_summarize_skips_unreadable_files_with_a_warning(runs, tmp_path):
    paths, acc = runs
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    missing = tmp_path / "missing.h5"
    with pytest.warns(SkippedFileWarning) as record:
        rows = summarize(paths["np"] + [broken, missing], by="rule.name")
    messages = [str(w.message) for w in record]
    assert any(str(broken) in m for m in messages) and any(str(missing) in m for m in messages)
    assert rows[0]["n"] == 3 and rows[0]["mean"] == pytest.approx(acc["np"][:, -1].mean())
    # nothing usable: the error alone says why, once (no warning before it)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(NoisysimError, match="none of the 1 file"):
            summarize([broken])
    with pytest.raises(NoisysimError, match="did you mean 'rule.name'"):
        summarize(paths["np"], by="rule.nam")


def test_summarize_accepts_a_directory(runs, tmp_path):
    rows = summarize(tmp_path, by=["rule.name", "optimizer.lr"])
    got = [(r["rule.name"], r["optimizer.lr"], r["n"]) for r in rows]
    assert got == [("anp", 1e-3, 3), ("np", 1e-3, 3)]


def test_curves_align_by_x_and_use_common_values(runs, tmp_path):
    paths, acc = runs
    out = curves(paths["np"] + paths["anp"], by="rule.name", metric="eval/test_accuracy", x="epoch")
    for entry in out:
        a = acc[entry["rule.name"]]
        np.testing.assert_array_equal(entry["x"], [1, 2, 3, 4])
        np.testing.assert_allclose(entry["mean"], a.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(entry["std"], a.std(axis=0, ddof=1), rtol=1e-12)
    short = fake_run(tmp_path / "short.h5", "np", 9, [0.1, 0.2])
    with pytest.warns(AnalysisWarning, match="2 they share"):
        out = curves(paths["np"] + [short], by="rule.name", x="epoch")
    np.testing.assert_array_equal(out[0]["x"], [1, 2])
    expected = np.vstack([acc["np"][:, :2], [0.1, 0.2]])
    np.testing.assert_allclose(out[0]["mean"], expected.mean(axis=0))


def test_plot_writes_png_and_plots_the_curves(runs, tmp_path):
    paths, _ = runs
    files = paths["np"] + paths["anp"]
    out_png = tmp_path / "fig" / "acc.png"
    result = plot_curves(files, out_png, metric="eval/test_accuracy", by="rule.name", x="epoch")
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    expected = curves(files, by="rule.name", metric="eval/test_accuracy", x="epoch")
    assert len(result.lines) == len(expected) == 2
    for line, entry in zip(result.lines, expected):
        np.testing.assert_array_equal(line.get_xdata(), entry["x"])
        np.testing.assert_array_equal(line.get_ydata(), entry["mean"])
        assert line.get_label().startswith(entry["rule.name"])
    ax = result.figure.axes[0]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "eval/test_accuracy"
    assert "digits" in ax.get_title() and "optimizer.name=adam" in ax.get_title()
    with open(result.data_path) as fh:
        table = list(csv.reader(fh))
    assert table[0][:2] == ["rule.name", "epoch"] and len(table) == 1 + 2 * 4
