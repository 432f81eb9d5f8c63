"""The ``noisysim`` command end to end, in subprocesses, on tiny configs.

Covered: run (plain and terminal progress, the closing summary, refusing an existing file,
--overwrite), inspect, summary and plot (PNG plus the CSV of the plotted numbers, skipped
unreadable files), SIGINT/SIGTERM (exit 130, status "interrupted"), SIGKILL (the file opens
and keeps what was flushed), --resume after either (the finished file equals an
uninterrupted run's, noise state and checkpoint included), divergence, and bad input (exit
code 2, exactly one line on stderr, no traceback). A trajectory is read with plain h5py.

Every run here takes a second or two; numba's compiled kernels come from its on-disk cache,
which all the subprocesses share.
"""

from __future__ import annotations

import csv
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

try:
    from tiny_config import TINY
except ImportError:  # tests/ imported as a package
    from tests.tiny_config import TINY


# Long enough (600 updates, about 2 s) to be interrupted: stateful telegraph noise, node
# perturbation with decorrelation (rule, device, optimiser and R all carry state), alignment
# rows and parameter snapshots.
LONG = """\
name = "long"
seed = 3

[model]
layers = [64, 16, 10]

[noise]
model = "telegraph"
p_flip = 0.1
amplitude = 0.05

[rule]
name = "danp"
sigma = 1e-3

[optimizer]
name = "adam"
lr = 1e-2

[data]
name = "digits"
n_train = 600
n_test = 100

[train]
epochs = 10
batch_size = 10
log_every = 1
alignment_every = 7
snapshot_every = 25

[backend]
name = "cpu"
"""


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [e.get("PYTHONPATH")] if p])
    e["NOISYSIM_FLUSH_SECONDS"] = "0.2"  # what a SIGKILL may lose; rows show up quickly
    e["NUMBA_NUM_THREADS"] = "1"  # several subprocesses share 2 cores
    e["MPLBACKEND"] = "Agg"
    e.pop("NOISYSIM_DEBUG", None)
    e.update(extra)
    return e


def cmd(*args) -> list[str]:
    return [sys.executable, "-m", "noisysim.cli", *map(str, args)]


def cli(*args, cwd, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd(*args), cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout, **kw)


def explain(p: subprocess.CompletedProcess) -> str:
    return f"rc {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def stderr_lines(p) -> list[str]:
    return [line for line in p.stderr.splitlines() if line.strip()]


# -- plain h5py ---------------------------------------------------------------------------
def h5open(path):
    """Plain h5py: a closed file opens normally, one whose writer died needs SWMR read."""
    try:
        return h5py.File(path, "r")
    except OSError:
        return h5py.File(path, "r", swmr=True)


def text_attr(f, key) -> str:
    v = f.attrs[key]
    return v.decode() if isinstance(v, bytes) else str(v)


def series(f, group) -> dict[str, np.ndarray]:
    """Every series of a group, cut to the rows that all of them hold (as the format says)."""
    g = f[group]
    n = min((ds.shape[0] for ds in g.values()), default=0)
    return {k: ds[:n] for k, ds in g.items()}


def checkpoint(f) -> h5py.Group:
    """The last complete checkpoint: /checkpoint/<slot> named by /checkpoint/current (two
    slots, written alternately), or /checkpoint itself in a file without slots."""
    cp = f["checkpoint"]
    if "current" in cp:
        slot = cp["current"][()]
        return cp[slot.decode() if isinstance(slot, bytes) else str(slot)]
    return cp


def datasets(group: h5py.Group) -> dict[str, object]:
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]

    group.visititems(visit)
    return out


def assert_same_trajectory(a: Path, b: Path) -> None:
    """Every series, every snapshot and the checkpoint (bytes) are equal; status completed."""
    with h5open(a) as fa, h5open(b) as fb:
        assert text_attr(fa, "status") == text_attr(fb, "status") == "completed"
        assert fa.attrs["config"] == fb.attrs["config"]
        for group in ("train", "eval", "alignment", "snapshots"):
            sa, sb = series(fa, group), series(fb, group)
            assert sorted(sa) == sorted(sb), group
            assert len(sa["step"]) > 0, group
            for name in sa:
                assert sa[name].dtype == sb[name].dtype, f"{group}/{name}"
                assert sa[name].shape == sb[name].shape, f"{group}/{name}"
                assert np.array_equal(sa[name], sb[name], equal_nan=True), f"{group}/{name}"
        ca, cb = datasets(checkpoint(fa)), datasets(checkpoint(fb))
        assert sorted(ca) == sorted(cb)
        assert any(k.startswith("device/noise") for k in ca)  # the telegraph state is in it
        for name in ca:
            va, vb = np.asarray(ca[name]), np.asarray(cb[name])
            if name.endswith("__noisysim_manifest__"):  # JSON text in a padded byte buffer
                ta, tb = (bytes(v.tobytes()).rstrip(b" \0") for v in (va, vb))
                assert json.loads(ta) == json.loads(tb), name
                continue
            assert va.dtype == vb.dtype and va.shape == vb.shape, name
            assert va.tobytes() == vb.tobytes(), f"checkpoint/{name} differs"


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    write(d / "tiny.toml", TINY)
    write(d / "long.toml", LONG)
    return d


@pytest.fixture(scope="module")
def tiny_run(work):
    """`noisysim run tiny.toml` with stdout and stderr piped (not a terminal)."""
    t = time.monotonic()
    p = cli("run", "tiny.toml", "--out", "out", cwd=work)
    return p, work / "out" / "tiny.h5", time.monotonic() - t


@pytest.fixture(scope="module")
def reference(work):
    """The uninterrupted LONG run that interrupted-and-resumed runs must reproduce."""
    p = cli("run", "long.toml", "--out", "ref", cwd=work)
    assert p.returncode == 0, explain(p)
    return work / "ref" / "long.h5"


def train_rows(path: Path) -> int:
    """Rows of train a reader sees now (0 while the file does not exist or is being created)."""
    try:
        with h5open(path) as f:
            g = f.get("train")
            return int(g["step"].shape[0]) if g is not None and "step" in g else 0
    except (OSError, KeyError, RuntimeError):
        return 0


def start_and_wait_for_rows(work: Path, out: str, rows: int = 1):
    """Start the LONG run; return the process once the file shows ``rows`` train rows."""
    path = work / out / "long.h5"
    proc = subprocess.Popen(cmd("run", "long.toml", "--out", out), cwd=work, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    seen = 0
    while time.monotonic() < deadline:
        seen = train_rows(path)
        if seen >= rows:
            return proc, path, seen
        if proc.poll() is not None:
            out_, err = proc.communicate()
            pytest.fail(f"the run ended before showing {rows} rows: rc {proc.returncode}\n{out_}\n{err}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no train rows appeared within 60 s")


# -- the command line ---------------------------------------------------------------------
def test_help_lists_every_command(tmp_path):
    p = cli("--help", cwd=tmp_path)
    assert p.returncode == 0, explain(p)
    for command in ("run", "summary", "plot", "inspect", "sweep"):
        assert command in p.stdout
    p = cli("run", "--help", cwd=tmp_path)
    for option in ("--set", "--out", "--resume", "--overwrite", "130"):
        assert option in p.stdout


def test_run_completes_with_plain_progress_and_summary(tiny_run):
    p, path, seconds = tiny_run
    assert p.returncode == 0, explain(p)
    assert path.exists()
    # not a terminal: plain lines, no carriage returns or bar; the last step is in epoch 2
    assert "\r" not in p.stderr and "[#" not in p.stderr
    progress = [line for line in p.stderr.splitlines() if line.startswith("step ")]
    assert progress and progress[0].startswith("step 1/8 epoch 1/2")
    assert progress[-1].startswith("step 8/8 epoch 2/2"), progress
    # the closing summary on stdout
    last = p.stdout.strip().splitlines()[0]
    assert last.startswith(f"completed: out{os.sep}tiny.h5 (step 8, epoch 2")
    assert "test_accuracy" in last
    assert seconds < 30


def test_trajectory_reads_with_plain_h5py(tiny_run):
    _, path, _ = tiny_run
    with h5py.File(path, "r") as f:  # nothing from noisysim
        assert text_attr(f, "format") == "noisysim-trajectory"
        assert text_attr(f, "status") == "completed"
        config = json.loads(text_attr(f, "config"))
        assert config["rule"]["name"] == "anp" and config["model"]["layers"] == [64, 16, 10]
        assert int(f.attrs["seed"]) == 0
        train = series(f, "train")
        assert train["step"].tolist() == list(range(1, 9))
        assert train["epoch"].tolist() == [0] * 4 + [1] * 4
        assert np.all(np.isfinite(train["loss"])) and train["loss"].dtype == np.float64
        ev = series(f, "eval")
        assert ev["epoch"].tolist() == [0, 1, 2] and ev["step"].tolist() == [0, 4, 8]
        assert np.all((ev["test_accuracy"] >= 0) & (ev["test_accuracy"] <= 1))
        assert int(checkpoint(f)["position/step"][()]) == 8
        assert checkpoint(f)["network/W_0"].shape == (16, 64)


def test_inspect_shows_status_config_and_datasets(tiny_run):
    _, path, _ = tiny_run
    p = cli("inspect", path, cwd=path.parent)
    assert p.returncode == 0, explain(p)
    assert re.search(r"^status:\s+completed$", p.stdout, re.M)
    assert '"name": "anp"' in p.stdout
    assert "/eval/test_accuracy" in p.stdout and "/checkpoint/a " in p.stdout
    assert "/network/W_0" not in p.stdout  # the checkpoint tree is folded into its slots
    assert p.stdout.splitlines()[2].startswith("final:   epoch 2, step 8, ")
    assert "train 8" in p.stdout


def test_existing_file_refused_then_overwritten_with_terminal_progress(tiny_run, work):
    _, path, _ = tiny_run
    before = path.read_bytes()
    p = cli("run", "tiny.toml", "--out", "out", cwd=work)
    assert p.returncode == 2, explain(p)
    lines = stderr_lines(p)
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "tiny.h5" in lines[0] and "--overwrite" in lines[0]
    assert "completed run of this config" in lines[0]  # the same config: nothing to resume
    assert path.read_bytes() == before  # untouched

    # --overwrite replaces it; stderr is a terminal this time: a bar redrawn in place
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(cmd("run", "tiny.toml", "--out", "out", "--overwrite",
                                    "--set", "seed=1"),
                                cwd=work, env=env(), stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO once the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(master)
    tty = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, tty
    assert "\r[" in tty and "#" * 30 in tty and "step 8/8 epoch 2/2" in tty
    assert out.decode().startswith("completed:")
    with h5py.File(path, "r") as f:
        assert int(f.attrs["seed"]) == 1


# -- bad input: exit code 2, one line, no traceback --------------------------------------
BAD_FILES = {
    "malformed.toml": 'name = "x"\n[model\nlayers = [64, 16, 10]\n',
    "unknown_key.toml": TINY.replace("epochs = 2", "epochz = 2"),
    "bad_value.toml": TINY.replace("lr = 1e-2", 'lr = "fast"'),
    "corrupt.h5": "this is not an HDF5 file\n" * 10,
}

# (arguments, texts the single stderr line must contain)
BAD_INPUT = {
    "malformed toml": (["run", "malformed.toml"], ["malformed.toml", "TOML"]),
    "unknown key": (["run", "unknown_key.toml"], ["unknown_key.toml", "epochz", "epochs"]),
    "bad value in file": (["run", "bad_value.toml"], ["bad_value.toml", "optimizer.lr", "fast"]),
    "bad --set value": (["run", "tiny.toml", "--set", "train.epochs=0"], ["train.epochs", "0"]),
    "bad --set syntax": (["run", "tiny.toml", "--set", "train.epochs"], ["train.epochs", "="]),
    "missing config": (["run", "nope.toml"], ["nope.toml"]),
    "resume missing file": (["run", "--resume", "gone.h5"], ["gone.h5"]),
    "resume with a config": (["run", "tiny.toml", "--resume", "gone.h5"], ["--resume", "CONFIG"]),
    "out is a file": (["run", "tiny.toml", "--out", "tiny.toml"], ["tiny.toml"]),
    "inspect corrupt": (["inspect", "corrupt.h5"], ["corrupt.h5"]),
    "summary bad metric": (["summary", "corrupt.h5", "--metric", "accuracy"], ["metric", "accuracy"]),
    "sweep bad grid": (["sweep", "tiny.toml", "--grid", "rule.name"], ["--grid", "rule.name"]),
    "flush env": (["run", "tiny.toml", "--out", "flushenv"], ["NOISYSIM_FLUSH_SECONDS", "abc"]),
}


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory):
    """Run every bad-input case, a few at a time (each is one short process)."""
    d = tmp_path_factory.mktemp("bad")
    write(d / "tiny.toml", TINY)
    for name, text in BAD_FILES.items():
        write(d / name, text)

    def one(case):
        args, _ = BAD_INPUT[case]
        extra = {"NOISYSIM_FLUSH_SECONDS": "abc"} if case == "flush env" else {}
        return case, subprocess.run(cmd(*args), cwd=d, env=env(**extra), capture_output=True,
                                    text=True, timeout=120)

    with ThreadPoolExecutor(3) as pool:
        results = dict(pool.map(one, BAD_INPUT))
    results["debug"] = subprocess.run(cmd("run", "bad_value.toml", "--debug"), cwd=d, env=env(),
                                      capture_output=True, text=True, timeout=120)
    return d, results


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line(bad_input_results, case):
    d, results = bad_input_results
    p = results[case]
    assert p.returncode == 2, explain(p)
    lines = stderr_lines(p)
    assert len(lines) == 1, explain(p)
    assert "Traceback" not in p.stderr
    assert lines[0].startswith("noisysim: error: ")
    for text in BAD_INPUT[case][1]:
        assert text in lines[0], lines[0]
    assert not any(d.rglob("tiny.h5"))  # nothing was written


def test_debug_shows_the_traceback(bad_input_results):
    _, results = bad_input_results
    p = results["debug"]
    assert p.returncode != 0 and "Traceback" in p.stderr and "optimizer.lr" in p.stderr


# -- divergence ---------------------------------------------------------------------------
def test_divergence_names_step_and_layer_and_keeps_the_file(work):
    p = cli("run", "tiny.toml", "--out", "div", "--set", "optimizer.name=sgd",
            "--set", "optimizer.lr=1e30", cwd=work)
    assert p.returncode == 1, explain(p)
    assert p.stdout.startswith("diverged: ")
    assert "Traceback" not in p.stderr
    path = work / "div" / "tiny.h5"
    with h5py.File(path, "r") as f:  # closed cleanly: opens without SWMR
        assert text_attr(f, "status") == "diverged"
        message = text_attr(f, "message")
        assert re.search(r"at step \d+", message) and re.search(r"layer \d+", message), message
        step = int(re.search(r"at step (\d+)", message).group(1))
        train = series(f, "train")
        assert train["step"].tolist() == list(range(1, step))  # every row before it
        assert np.all(np.isfinite(train["loss"]))
        assert series(f, "eval")["step"].tolist() == [0]
    assert message in p.stdout
    s = cli("inspect", path, cwd=work)
    assert s.returncode == 0 and "diverged" in s.stdout


# -- signals and resume -------------------------------------------------------------------
def test_sigint_interrupts_with_130_and_resume_equals_uninterrupted(work, reference):
    proc, path, _ = start_and_wait_for_rows(work, "int")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, f"{out}\n{err}"
    assert out.startswith("interrupted: ") and "--resume" in out
    assert "Traceback" not in err
    with h5open(path) as f:
        assert text_attr(f, "status") == "interrupted"
        assert "SIGINT" in text_attr(f, "message")
        stopped = int(checkpoint(f)["position/step"][()])
        assert series(f, "train")["step"][-1] == stopped  # flushed up to the checkpoint
    assert 0 < stopped < 600

    p = cli("run", "--resume", path, cwd=work)
    assert p.returncode == 0, explain(p)
    assert p.stdout.startswith("completed: ")
    assert_same_trajectory(path, reference)
    with h5py.File(path, "r") as f:
        assert int(f.attrs["resumes"]) == 1

    # a completed run cannot be resumed (nothing to do): one line, exit 2
    p = cli("run", "--resume", path, cwd=work)
    assert p.returncode == 2 and len(stderr_lines(p)) == 1 and "completed" in p.stderr


def test_sigterm_interrupts_with_130(work):
    proc, path, _ = start_and_wait_for_rows(work, "term")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, f"{out}\n{err}"
    with h5open(path) as f:
        assert text_attr(f, "status") == "interrupted"
        assert "SIGTERM" in text_attr(f, "message")


def test_sigkill_loses_at_most_the_last_flush_and_resume_equals_uninterrupted(work, reference):
    proc, path, seen = start_and_wait_for_rows(work, "kill", rows=2)
    # rows reach the file every 0.2 s (NOISYSIM_FLUSH_SECONDS) and at each checkpoint; what a
    # reader has seen can no longer be lost
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with h5open(path) as f:  # still opens: a killed SWMR writer leaves a valid file
        assert text_attr(f, "status") == "running"
        train = series(f, "train")
        assert len(train["step"]) >= seen
        assert train["step"].tolist() == list(range(1, len(train["step"]) + 1))
    with h5py.File(reference, "r") as f:
        ref_train = series(f, "train")
    n = len(train["step"])
    for name in train:  # what survived is exactly the start of the uninterrupted run
        assert np.array_equal(train[name], ref_train[name][:n], equal_nan=True), name

    s = cli("inspect", path, cwd=work)
    assert s.returncode == 0, explain(s)
    assert "running" in s.stdout and "--resume" in s.stdout

    p = cli("run", "--resume", path, cwd=work)
    assert p.returncode == 0, explain(p)
    assert_same_trajectory(path, reference)


# -- summary and plot ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two rules x two seeds of the tiny config (in this process), plus an unreadable file."""
    from noisysim.config import load_config
    from noisysim.experiment import run

    d = tmp_path_factory.mktemp("runs")
    cfg = write(d / "tiny.toml", TINY)
    for rule in ("np", "anp"):
        for seed in (0, 1):
            config = load_config(cfg, [f"rule.name={rule}", f"seed={seed}",
                                       f"name=tiny-{rule}-{seed}"]).to_dict()
            result, _ = run(config, d / "runs")
            assert result.status == "completed"
    write(d / "runs" / "broken.h5", "not an HDF5 file\n")
    return d


def expected_finals(directory: Path) -> dict[str, list[float]]:
    """Final eval/test_accuracy per rule, read with plain h5py."""
    out: dict[str, list[float]] = {}
    for path in sorted(directory.glob("tiny-*.h5")):
        with h5py.File(path, "r") as f:
            rule = json.loads(text_attr(f, "config"))["rule"]["name"]
            out.setdefault(rule, []).append(float(series(f, "eval")["test_accuracy"][-1]))
    return out


def test_summary_mean_std_n_and_skips_unreadable_file(runs):
    p = cli("summary", "runs", "--by", "rule.name", "--metric", "eval/test_accuracy", "--json",
            cwd=runs)
    assert p.returncode == 0, explain(p)
    lines = stderr_lines(p)
    assert len(lines) == 1 and lines[0].startswith("noisysim: warning: "), p.stderr
    assert "broken.h5" in lines[0]
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    expected = expected_finals(runs / "runs")
    assert sorted(r["rule.name"] for r in rows) == sorted(expected) == ["anp", "np"]
    for row in rows:
        values = np.array(expected[row["rule.name"]])
        assert row["n"] == 2
        assert row["mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert row["std"] == pytest.approx(values.std(ddof=1), abs=1e-12)

    table = cli("summary", *sorted((runs / "runs").glob("*.h5")), cwd=runs)
    assert table.returncode == 0, explain(table)
    assert re.search(r"rule\.name\s+mean\s+std\s+n", table.stdout)
    assert re.search(r"^np\s+\S+\s+\S+\s+2$", table.stdout, re.M)
    assert "broken.h5" in table.stderr and "Traceback" not in table.stderr

    by_seed = cli("summary", "runs", "--by", "rule.name", "--by", "seed", "--json", cwd=runs)
    assert [json.loads(line)["n"] for line in by_seed.stdout.splitlines()] == [1, 1, 1, 1]


def test_plot_writes_png_and_csv_equal_to_the_aggregated_curves(runs):
    from noisysim.analysis import curves
    from noisysim.plot import plot_curves

    p = cli("plot", "runs", "-o", "fig/curves.png", "--metric", "eval/test_accuracy",
            "--by", "rule.name", "--x", "epoch", cwd=runs)
    assert p.returncode == 0, explain(p)
    assert len(stderr_lines(p)) == 1 and "broken.h5" in p.stderr
    png = runs / "fig" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    files = sorted((runs / "runs").glob("tiny-*.h5"))
    agg = curves(files, by=["rule.name"], metric="eval/test_accuracy", x="epoch")
    # the aggregated data is the mean / std over seeds of what h5py reads
    expected: dict[str, list[np.ndarray]] = {}
    for path in files:
        with h5py.File(path, "r") as f:
            rule = json.loads(text_attr(f, "config"))["rule"]["name"]
            expected.setdefault(rule, []).append(series(f, "eval")["test_accuracy"])
    for entry in agg:
        stack = np.stack(expected[entry["rule.name"]])
        assert entry["x"].tolist() == [0, 1, 2]
        np.testing.assert_allclose(entry["mean"], stack.mean(axis=0), rtol=0, atol=1e-15)
        np.testing.assert_allclose(entry["std"], stack.std(axis=0, ddof=1), rtol=0, atol=1e-15)

    # the CSV written beside the PNG holds exactly those numbers
    with open(png.with_suffix(".csv"), newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["rule.name", "epoch", "eval/test_accuracy mean",
                       "eval/test_accuracy std", "eval/test_accuracy 95% CI low",
                       "eval/test_accuracy 95% CI high", "n"]
    got = {}
    for rule, x, mean, std, _, _, n in rows[1:]:  # the interval: tests/test_compare.py
        got.setdefault(rule, []).append((int(x), float(mean), float(std), int(n)))
    for entry in agg:
        want = [(int(x), float(m), float(s), 2)
                for x, m, s in zip(entry["x"], entry["mean"], entry["std"])]
        assert got[entry["rule.name"]] == want

    # the plotted lines are those curves
    res = plot_curves(files, runs / "fig" / "again.png", metric="eval/test_accuracy",
                      by="rule.name", x="epoch")
    assert len(res.lines) == len(agg) == 2
    for line, entry in zip(res.lines, res.curves):
        assert np.array_equal(line.get_xdata(), entry["x"])
        assert np.array_equal(line.get_ydata(), entry["mean"])
        assert entry["rule.name"] in line.get_label()


def test_main_job_at_tiny_size_prints_table_and_writes_runs_and_figure(work):
    """The main job (bp, np, anp, danp on the shipped digits), shrunk with --main --set."""
    out = work / "main"
    tiny = ["--set", "train.epochs=1", "--set", "data.n_train=96", "--set", "data.n_test=48",
            "--set", "train.batch_size=48", "--set", "model.layers=[64,8,10]"]
    proc = cli("run", "--main", *tiny, "--out", str(out), cwd=work)
    assert proc.returncode == 0, explain(proc)
    for rule in ("bp", "np", "anp", "danp"):
        (path,) = out.glob(f"{rule}-digits-*.h5")  # <rule>-<dataset>-<hash of the config>
        with h5open(path) as f:
            assert text_attr(f, "status") == "completed"
        assert re.search(rf"^{rule}\s+0\.\d+", proc.stdout, re.M), proc.stdout
    png = (out / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    again = cli("run", "--main", *tiny, "--out", str(out), cwd=work)  # completed: reused
    assert again.returncode == 0 and again.stdout.count("already completed") == 4
