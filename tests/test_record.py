"""Trajectory files: round trips, lazy series, checkpoints, modes, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

import noisysim
from noisysim.errors import NoisysimError
from noisysim.record import FORMAT, FORMAT_VERSION, Trajectory, TrajectoryWriter

CONFIG = {"rule": {"name": "anp", "sigma": 1e-3}, "network": {"widths": [4, 3, 2]}, "seed": 7}


def write_run(path, steps=12, config=CONFIG, seed=7, **kwargs):
    """A small run touching every group; returns what was logged."""
    rng = np.random.default_rng(0)
    logged = {"train": [], "eval": [], "alignment": [], "snapshots": []}
    with TrajectoryWriter(path, config, seed, **kwargs) as w:
        for step in range(steps):
            row = {"step": step, "loss": float(rng.normal()), "update_norm_l0": float(rng.random())}
            w.log("train", row)
            logged["train"].append(row)
            if step % 4 == 3:
                ev = {"step": step, "epoch": step // 4, "train_loss": 1.0 / (step + 1),
                      "test_accuracy": step / 100}
                w.log("eval", ev)
                logged["eval"].append(ev)
                al = {"step": step, "layer_0": 0.5, "layer_1": float(rng.random())}
                w.log("alignment", al)
                logged["alignment"].append(al)
                params = {"W_0": rng.normal(size=(3, 4)).astype(np.float32),
                          "b_0": rng.normal(size=3).astype(np.float32)}
                w.snapshot(step, params)
                logged["snapshots"].append((step, params))
        w.set_status("completed", "done")
    return logged


def test_round_trip_all_groups(tmp_path):
    path = tmp_path / "run.h5"
    logged = write_run(path, flush_every=5)
    t = Trajectory(path)
    assert t.config == CONFIG and t.seed == 7 and t.format_version == FORMAT_VERSION
    assert (t.status, t.message) == ("completed", "done")
    assert t.noisysim_version == noisysim.__version__
    for group in ("train", "eval", "alignment"):
        rows = logged[group]
        for name in rows[0]:
            np.testing.assert_array_equal(t.series(group, name), [r[name] for r in rows])
    assert t.series("train", "step").dtype == np.int64
    assert t.series("eval", "epoch").dtype == np.int64
    assert t.names("eval") == ["step", "epoch", "test_accuracy", "train_loss"]
    snaps = logged["snapshots"]
    np.testing.assert_array_equal(t.series("snapshots", "step"), [s for s, _ in snaps])
    w0 = t.series("snapshots", "W_0")
    assert w0.shape == (len(snaps), 3, 4) and w0.dtype == np.float32
    np.testing.assert_array_equal(w0, np.stack([p["W_0"] for _, p in snaps]))
    assert t.final("eval/test_accuracy") == logged["eval"][-1]["test_accuracy"]
    described = {p: (shape, dtype) for p, shape, dtype in t.describe()}
    assert described["/train/loss"] == ((12,), "float64")
    assert described["/snapshots/W_0"] == ((3, 3, 4), "float32")


def test_series_are_chunked_compressed_and_extendable(tmp_path):
    path = tmp_path / "run.h5"
    write_run(path)
    with h5py.File(path, "r") as f:
        for name in ("train/loss", "train/step", "snapshots/W_0"):
            ds = f[name]
            assert ds.chunks is not None and ds.compression == "gzip" and ds.maxshape[0] is None


def test_lazily_added_keys_are_back_filled_with_nan(tmp_path):
    path = tmp_path / "run.h5"
    with TrajectoryWriter(path, CONFIG, 1, flush_every=3) as w:
        for step in range(10):
            row = {"step": step, "loss": float(step)}
            if step >= 4:
                row["decorrelation_loss_l0"] = 10.0 + step
            if step == 6:
                del row["loss"]
            w.log("train", row)
        w.log("eval", {"step": 9, "test_accuracy": 0.5})  # no epoch: -1
        w.set_status("completed")
    t = Trajectory(path)
    late = t.series("train", "decorrelation_loss_l0")
    assert np.isnan(late[:4]).all() and list(late[4:]) == [14, 15, 16, 17, 18, 19]
    loss = t.series("train", "loss")
    assert np.isnan(loss[6]) and loss[5] == 5 and loss[7] == 7
    assert len(t.series("train", "step")) == 10
    with TrajectoryWriter(path, None, None, mode="resume") as w:
        w.log("eval", {"step": 10, "epoch": 1, "test_accuracy": 0.6})
        w.set_status("completed")
    np.testing.assert_array_equal(Trajectory(path).series("eval", "epoch"), [-1, 1])


def _checkpoint_state():
    rng = np.random.default_rng(1)
    return {
        "step": 1234,
        "epoch": 3,
        "lr": 1e-3,
        "done": False,
        "note": "héllo",
        "blob": b"\x00\x01raw",
        "nothing": None,
        "big_counter": 2**64 - 5,
        "params": [
            {"W": rng.normal(size=(3, 4)).astype(np.float32), "b": None},
            {"W": rng.normal(size=(2, 3)), "b": np.arange(2, dtype=np.float64)},
        ],
        "optimizer": {
            "name": "adam",
            "t": np.int64(17),
            "m": (np.zeros((3, 4), np.float32), np.ones(2, ">f8")),
            "beta": np.float32(0.9),
        },
        "noise": {"telegraph": {"s": np.array([[1, -1], [-1, 1]], np.int8)},
                  "flags": np.array([True, False, True]), "c": np.array([1 + 2j], np.complex64),
                  "scalar0d": np.array(3.5, np.float32), "empty": np.zeros((0, 3), np.float32)},
        "data": {"order": rng.permutation(50).astype(np.int64), "position": 17,
                 "u64": np.array([2**63 + 1], np.uint64)},
    }


def _assert_same(a, b, where="state"):
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), where
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), where
    else:
        assert a == b, where


def test_checkpoint_round_trips_bytes_and_dtypes(tmp_path):
    path = tmp_path / "run.h5"
    state = _checkpoint_state()
    with TrajectoryWriter(path, CONFIG, 1) as w:
        assert w.read_checkpoint() is None
        w.write_checkpoint({"step": 0, "old": np.arange(3)})
        w.write_checkpoint(state)  # replaces the whole group
        _assert_same(w.read_checkpoint(), state)
        w.set_status("completed")
    back = Trajectory(path).checkpoint()
    _assert_same(back, state)
    assert "old" not in back
    with h5py.File(path, "r") as f:
        assert "_checkpoint_new" not in f


@pytest.mark.parametrize(
    "bad, words",
    [({"a/b": 1}, "'a/b'"), ({1: 2}, "str"), ({"x": object()}, "object"),
     ({"u": np.array(["ab"])}, "dtype <U2")],
)
def test_checkpoint_refuses_what_it_cannot_store(tmp_path, bad, words):
    with TrajectoryWriter(tmp_path / "run.h5", CONFIG, 1) as w:
        w.write_checkpoint({"keep": 1})
        with pytest.raises(NoisysimError, match="checkpoint") as info:
            w.write_checkpoint(bad)
        assert words in str(info.value)
        assert w.read_checkpoint() == {"keep": 1}  # the previous one survives


def test_new_refuses_existing_file_and_overwrite_replaces_it(tmp_path):
    path = tmp_path / "run.h5"
    write_run(path)
    with pytest.raises(NoisysimError) as info:
        TrajectoryWriter(path, CONFIG, 7)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    assert "completed run of this config" in msg and "--overwrite" in msg  # nothing to resume
    with pytest.raises(NoisysimError, match=r"a different config \(first difference at .*"
                                            r"--overwrite"):
        TrajectoryWriter(path, {**CONFIG, "other": 1}, 7)
    with h5py.File(path, "r+") as f:  # the same config, interrupted: continue it
        f.attrs["status"] = np.bytes_(b"interrupted".ljust(16, b"\0"))
    with pytest.raises(NoisysimError, match=r"status interrupted.*noisysim run --resume"):
        TrajectoryWriter(path, CONFIG, 7)
    with TrajectoryWriter(path, {"other": 1}, 8, mode="overwrite") as w:
        w.log("train", {"step": 0, "loss": 1.0})
        w.set_status("completed")
    t = Trajectory(path)
    assert t.config == {"other": 1} and len(t.series("train", "loss")) == 1


def _watch_swmr_start(monkeypatch, when_started):
    """Call ``when_started()`` as h5py's File switches SWMR writing on."""
    original = h5py.File.swmr_mode

    def start(self, value):
        when_started()
        original.fset(self, value)
    monkeypatch.setattr(h5py.File, "swmr_mode", property(original.fget, start))


def test_a_new_file_gets_its_name_only_once_in_swmr_mode(tmp_path, monkeypatch):
    """Switching SWMR on unlocks and relocks the file inside HDF5, so a reader that opened
    it then (a progress poll, `noisysim inspect`) made the run fail at its start: until
    then the file has a hidden name. The writer works on under the real one."""
    path = tmp_path / "run.h5"
    visible = []
    _watch_swmr_start(monkeypatch, lambda: visible.append(path.exists()))
    with TrajectoryWriter(path, CONFIG, 7) as w:
        assert visible == [False] and path.exists()
        assert [p.name for p in tmp_path.iterdir()] == ["run.h5"]  # no hidden name left
        w.log("train", {"step": 1, "loss": 0.5})
        w.flush()
        w.set_status("completed")
    t = Trajectory(path)
    assert t.config == CONFIG and list(t.series("train", "loss")) == [0.5]


def test_a_name_taken_while_the_file_is_made_is_refused_and_nothing_is_left(tmp_path,
                                                                           monkeypatch):
    path = tmp_path / "run.h5"
    _watch_swmr_start(monkeypatch, lambda: path.write_bytes(b"another run's file"))
    with pytest.raises(NoisysimError) as info:
        TrajectoryWriter(path, CONFIG, 7)
    msg = str(info.value)
    assert "\n" not in msg and "another process created it" in msg and str(path) in msg
    assert [p.name for p in tmp_path.iterdir()] == ["run.h5"]
    assert path.read_bytes() == b"another run's file"


LOCKED = ("Unable to start swmr writing (unable to lock file, errno = 11, error message = "
          "'Resource temporarily unavailable')")  # HDF5's words when a reader slipped in


def test_a_reader_slipping_in_as_swmr_starts_leaves_the_writer_unlocked(tmp_path, monkeypatch):
    """When HDF5's relock fails as SWMR is switched on again (after a new series, or on
    resuming), the file is reopened without locks and the run goes on."""
    path = tmp_path / "run.h5"
    starts, fail_at = [], [2]  # the first restructure's start

    def start():
        starts.append(path.exists())
        if len(starts) in fail_at:
            raise RuntimeError(LOCKED)
    _watch_swmr_start(monkeypatch, start)
    with TrajectoryWriter(path, CONFIG, 7) as w:
        w.log("train", {"step": 1, "loss": 0.5})
        w.flush()  # a new series: made outside SWMR mode, which then starts again
        assert len(starts) == 3 and w._unlocked
        w.log("train", {"step": 2, "loss": 0.25})
        w.set_status("interrupted")
    assert list(Trajectory(path).series("train", "loss")) == [0.5, 0.25]
    starts.clear()
    fail_at[0] = 1  # resuming's start
    with TrajectoryWriter(path, None, None, mode="resume") as w:
        assert len(starts) == 2
        w.log("train", {"step": 3, "loss": 0.125})
        w.set_status("completed")
    assert list(Trajectory(path).series("train", "loss")) == [0.5, 0.25, 0.125]


def test_resume_truncates_after_checkpoint_and_keeps_config(tmp_path):
    path = tmp_path / "run.h5"
    with TrajectoryWriter(path, CONFIG, 7) as w:
        for step in range(10):
            w.log("train", {"step": step, "loss": float(step)})
            if step == 5:
                w.write_checkpoint({"step": step})
                w.snapshot(step, {"W_0": np.zeros(2)})
        w.snapshot(9, {"W_0": np.ones(2)})
        w.set_status("interrupted")
    with pytest.raises(NoisysimError, match="config differs"):
        TrajectoryWriter(path, {**CONFIG, "seed": 8}, None, mode="resume")
    with TrajectoryWriter(path, CONFIG, None, mode="resume") as w:
        assert w.config == CONFIG and w.seed == 7 and w.status == "running"
        step = w.read_checkpoint()["step"]
        w.truncate_after(step)
        for s in range(step + 1, 12):
            w.log("train", {"step": s, "loss": -float(s)})
        w.set_status("completed")
    t = Trajectory(path)
    np.testing.assert_array_equal(t.series("train", "step"), np.arange(12))
    assert list(t.series("train", "loss")[:6]) == [0, 1, 2, 3, 4, 5]
    assert list(t.series("snapshots", "step")) == [5]
    assert int(t.attrs["resumes"]) == 1
    with pytest.raises(NoisysimError, match="does not exist"):
        TrajectoryWriter(tmp_path / "nope.h5", None, None, mode="resume")


def test_status_on_exceptions(tmp_path):
    with pytest.raises(RuntimeError):
        with TrajectoryWriter(tmp_path / "a.h5", CONFIG, 1) as w:
            w.log("train", {"step": 0, "loss": 1.0})
            raise RuntimeError("boom\nsecond line")
    a = Trajectory(tmp_path / "a.h5")
    assert a.status == "failed" and a.message == "RuntimeError: boom second line"
    assert list(a.series("train", "loss")) == [1.0]  # buffered row written before the status
    with pytest.raises(KeyboardInterrupt):
        with TrajectoryWriter(tmp_path / "b.h5", CONFIG, 1) as w:
            raise KeyboardInterrupt
    assert Trajectory(tmp_path / "b.h5").status == "interrupted"
    with TrajectoryWriter(tmp_path / "c.h5", CONFIG, 1) as w:
        pass  # no final status: not left as "running"
    assert Trajectory(tmp_path / "c.h5").status == "interrupted"
    with TrajectoryWriter(tmp_path / "d.h5", CONFIG, 1) as w:
        w.set_status("diverged", "loss is nan at step 3")
    assert Trajectory(tmp_path / "d.h5").status == "diverged"


def test_bad_rows_are_refused(tmp_path):
    with TrajectoryWriter(tmp_path / "a.h5", CONFIG, 1) as w:
        with pytest.raises(NoisysimError, match="step"):
            w.log("train", {"loss": 1.0})
        with pytest.raises(NoisysimError, match="update_norm_l0"):
            w.log("train", {"step": 0, "update_norm/0": 1.0})
        with pytest.raises(NoisysimError, match="scalar"):
            w.log("train", {"step": 0, "loss": np.zeros(3)})
        with pytest.raises(NoisysimError, match="status"):
            w.set_status("finished")
        w.snapshot(0, {"W_0": np.zeros((2, 3))})
        with pytest.raises(NoisysimError, match=r"W_0 has shape \(3, 2\)"):
            w.snapshot(1, {"W_0": np.zeros((3, 2))})
        w.log("train", {"step": 0, "loss": 1.0})
        w.flush()  # the refused rows did not poison the buffer
        w.set_status("completed")
    with pytest.raises(NoisysimError, match="mode"):
        TrajectoryWriter(tmp_path / "b.h5", CONFIG, 1, mode="append")


def test_reader_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.h5"
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    for path, words in [(missing, "no such file"), (text, "not a readable HDF5"),
                        (other, "not a noisysim trajectory")]:
        with pytest.raises(NoisysimError, match=words) as info:
            Trajectory(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    good = tmp_path / "good.h5"
    write_run(good)
    with pytest.raises(NoisysimError, match="test_accuracy"):
        Trajectory(good).series("eval", "test_acc")
    with pytest.raises(NoisysimError, match="group/name"):
        Trajectory(good).final("test_accuracy")


def test_plain_h5py_reader_reads_every_series(tmp_path):
    path = tmp_path / "run.h5"
    logged = write_run(path)
    # Only h5py, json and numpy below: the format is documented, not tied to noisysim.
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "noisysim-trajectory"
        assert int(f.attrs["format_version"]) == 1
        assert json.loads(f.attrs["config"]) == CONFIG
        assert f.attrs["status"].decode() == "completed"  # fixed-length: bytes in h5py
        for group in ("train", "eval", "alignment"):
            g = f[group]
            n = len(g["step"])
            for name in logged[group][0]:
                assert len(g[name]) == n
                np.testing.assert_array_equal(g[name][:], [r[name] for r in logged[group]])
        snaps = f["snapshots"]
        expected = np.stack([p["b_0"] for _, p in logged["snapshots"]])
        np.testing.assert_array_equal(snaps["b_0"][:], expected)


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from noisysim.record import TrajectoryWriter
    w = TrajectoryWriter(sys.argv[1], {"rule": {"name": "np"}}, 3, flush_every=10,
                         flush_seconds=3600)
    for step in range(35):  # three flushes of 10 rows, 5 rows left in the buffer
        w.log("train", {"step": step, "loss": step * 0.5})
        if step == 9:
            w.snapshot(step, {"W_0": np.full((2, 2), step, np.float32)})
        if step == 19:
            w.write_checkpoint({"step": step, "W": np.arange(4.0)})
    print("ready", flush=True)
    time.sleep(60)
    """
)


def _run_and_kill(path: Path) -> None:
    env = dict(os.environ)
    root = str(Path(noisysim.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_sigkilled_writer_leaves_a_readable_file(tmp_path):
    path = tmp_path / "killed.h5"
    _run_and_kill(path)
    t = Trajectory(path)
    assert t.status == "running"
    np.testing.assert_array_equal(t.series("train", "step"), np.arange(30))  # flushed rows only
    np.testing.assert_array_equal(t.series("train", "loss"), np.arange(30) * 0.5)
    np.testing.assert_array_equal(t.series("snapshots", "W_0"), np.full((1, 2, 2), 9, np.float32))
    ckpt = t.checkpoint()
    assert ckpt["step"] == 19 and ckpt["W"].tobytes() == np.arange(4.0).tobytes()
    # a plain h5py reader needs SWMR read mode for a file whose writer never closed it
    with h5py.File(path, "r", swmr=True) as f:
        assert len(f["train/loss"]) == 30
    # and the run can be resumed from its checkpoint
    with TrajectoryWriter(path, None, None, mode="resume") as w:
        w.truncate_after(w.read_checkpoint()["step"])
        w.log("train", {"step": 20, "loss": -1.0})
        w.set_status("completed")
    t = Trajectory(path)
    assert t.status == "completed" and len(t.series("train", "step")) == 21
    with h5py.File(path, "r") as f:  # closed cleanly again: no SWMR needed
        assert f.attrs["format"] == FORMAT
        assert f.attrs.get_id("status").dtype == np.dtype("S16")  # still fixed-length


def test_time_based_flush_reaches_the_file(tmp_path):
    path = tmp_path / "run.h5"
    with TrajectoryWriter(path, CONFIG, 1, flush_every=10**6, flush_seconds=0.05) as w:
        w.log("train", {"step": 0, "loss": 2.0})
        import time

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and w._pending:
            time.sleep(0.01)
        assert w._pending == 0  # the background thread flushed without another log call
        assert len(Trajectory(path).series("train", "loss")) == 1  # a second reader sees it
        w.set_status("completed")


def _layout_state(k, n=4, tag="abc"):
    """A checkpoint whose layout does not depend on ``k``."""
    return {
        "position": {"step": np.int64(10 * k), "epoch": k},
        "W": np.full((n, 3), k, np.float32),
        "order": np.arange(n, dtype=np.int64)[::-1] + k,
        "tag": f"{tag}{k % 10}",
        "lr": 0.1 * k,
        "flags": [k % 2 == 0, None, b"x" * 3],
        "beta": np.float64(k),
    }


def test_checkpoints_of_one_layout_are_overwritten_in_place(tmp_path):
    path = tmp_path / "run.h5"
    with TrajectoryWriter(path, CONFIG, 1, flush_every=2) as w:
        sizes = []
        w.log("train", {"step": 0, "loss": 0.0})
        for k in range(6):
            state = _layout_state(k)
            w.write_checkpoint(state)
            _assert_same(w.read_checkpoint(), state)
            _assert_same(Trajectory(path).checkpoint(), state)
            assert w._file.swmr_mode
            sizes.append(path.stat().st_size)
        assert w._restructures == 2  # the train series, then the two checkpoint slots
        assert len(set(sizes[1:])) == 1  # in place: the file does not grow
        # a new layout (shapes, a key, a string length): both slots are laid out again
        for k in range(6, 9):
            state = _layout_state(k, n=7, tag="longer")
            state["extra"] = {"z": np.zeros(2, np.complex64)}
            w.write_checkpoint(state)
            _assert_same(w.read_checkpoint(), state)
            _assert_same(Trajectory(path).checkpoint(), state)
        assert w._restructures == 4
        w.set_status("completed")
    _assert_same(Trajectory(path).checkpoint(), state)
    with h5py.File(path, "r") as f:  # the documented layout, read with h5py only
        slot = f["checkpoint/current"][()].decode()
        group = f["checkpoint"][slot]
        manifest = json.loads(group["__noisysim_manifest__"][()].tobytes())
        assert manifest["root"]["items"]["tag"] == {"kind": "str", "n": 7}
        assert group["tag"][()].decode() == "longer8"
        np.testing.assert_array_equal(group["W"][...], np.full((7, 3), 8, np.float32))


def test_series_and_groups_added_after_several_flushes(tmp_path):
    path = tmp_path / "run.h5"
    with TrajectoryWriter(path, CONFIG, 1, flush_every=2) as w:
        for step in range(8):
            w.log("train", {"step": step, "loss": float(step)})
        w.write_checkpoint({"step": 7})
        w.log("train", {"step": 8, "loss": 8.0, "late": 1.5})  # a new key, 4 flushes later
        w.log("custom", {"step": 8, "x": 2.0})  # a new group
        w.snapshot(8, {"W_0": np.ones((2, 2), np.float32)})
        w.flush()
        w.snapshot(9, {"W_0": np.zeros((2, 2), np.float32), "R_0": np.eye(2)})  # new param
        w.log("train", {"step": 9, "loss": 9.0})
        w.flush()
        assert w._file.swmr_mode
        # another process reads everything while the writer still has the file open
        code = ("import sys, h5py; f = h5py.File(sys.argv[1], 'r', swmr=True); "
                "print(len(f['train/late']), len(f['custom/x']), f['snapshots/R_0'].shape)")
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                             text=True, timeout=60)
        assert out.stdout.split() == ["10", "1", "(2,", "2,", "2)"], out.stderr
        w.set_status("completed")
    t = Trajectory(path)
    late = t.series("train", "late")
    assert np.isnan(late[:8]).all() and late[8] == 1.5 and np.isnan(late[9])
    np.testing.assert_array_equal(t.series("train", "step"), np.arange(10))
    assert list(t.series("custom", "x")) == [2.0]
    r0 = t.series("snapshots", "R_0")
    assert np.isnan(r0[0]).all() and (r0[1] == np.eye(2)).all()
    assert t.checkpoint() == {"step": 7}


def test_checkpoint_of_the_first_layout_is_refused_naming_the_version_that_reads_it(tmp_path):
    path = tmp_path / "run.h5"
    with TrajectoryWriter(path, CONFIG, 1) as w:
        w.log("train", {"step": 0, "loss": 1.0})
        w.set_status("interrupted")
    manifest = {"format_version": 1, "root": {"kind": "dict", "items": {
        "step": {"kind": "int"}, "note": {"kind": "str"}, "W": {"kind": "ndarray"}}}}
    with h5py.File(path, "r+") as f:  # what the first writer left: one tree, vlen strings
        g = f.create_group("checkpoint")
        g["step"] = np.int64(5)
        g.create_dataset("note", data="héllo", dtype=h5py.string_dtype())
        g["W"] = np.arange(3.0)
        g.create_dataset("__noisysim_manifest__", data=json.dumps(manifest),
                         dtype=h5py.string_dtype())
    before = path.read_bytes()
    message = r"first \(pre-release\) layout.*noisysim 0\.1\.0 at commit e34d63a"
    t = Trajectory(path)  # its rows still read
    assert list(t.series("train", "loss")) == [1.0] and t.groups() == ["alignment", "eval",
                                                                        "snapshots", "train"]
    with pytest.raises(NoisysimError, match=message) as err:
        t.checkpoint()
    assert "\n" not in str(err.value)
    with pytest.raises(NoisysimError, match=message):
        TrajectoryWriter(path, None, None, mode="resume")
    assert path.read_bytes() == before  # refused before anything in the file changed


def test_a_checkpoint_group_without_slots_yet_holds_no_checkpoint_and_resumes(tmp_path):
    # what a writer killed between creating /checkpoint and /checkpoint/current leaves
    path = tmp_path / "run.h5"
    with TrajectoryWriter(path, CONFIG, 1) as w:
        w.log("train", {"step": 0, "loss": 1.0})
        w.set_status("interrupted")
    with h5py.File(path, "r+") as f:
        f.create_group("checkpoint")
    assert Trajectory(path).checkpoint() is None
    with TrajectoryWriter(path, None, None, mode="resume") as w:
        assert w.read_checkpoint() is None
        w.write_checkpoint({"step": 1})
        w.set_status("completed")
    assert Trajectory(path).checkpoint() == {"step": 1}


LOOP_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from noisysim.record import TrajectoryWriter

    def state(k):
        return {"k": k, "W": np.full((384, 384), k, np.float64), "v": np.full(999, k, np.int32),
                "tag": f"{k:08d}",
                "nested": {"list": [np.full(5, k % 100, np.int8), k, str(k % 7)]}}

    w = TrajectoryWriter(sys.argv[1], {"rule": {"name": "np"}}, 3, mode=sys.argv[2],
                         flush_every=7, flush_seconds=3600)
    k = 0 if sys.argv[2] == "new" else w.read_checkpoint()["k"] + 1
    for j in range(2):  # lays out the series and both slots
        w.log("train", {"step": k, "loss": float(k)})
        w.write_checkpoint(state(k))
        k += 1
    print("ready", flush=True)
    while True:
        for _ in range(3):
            w.log("train", {"step": k, "loss": float(k)})
        w.write_checkpoint(state(k))
        k += 1
    """
)


def _check_whole(ckpt):
    k = ckpt["k"]
    assert ckpt["W"].shape == (384, 384) and (ckpt["W"] == k).all()
    assert (ckpt["v"] == k).all() and ckpt["tag"] == f"{k:08d}"
    lst = ckpt["nested"]["list"]
    assert (lst[0] == k % 100).all() and lst[1] == k and lst[2] == str(k % 7)
    return k


def test_writer_killed_at_random_moments_leaves_a_whole_checkpoint(tmp_path):
    path = tmp_path / "loop.h5"
    env = dict(os.environ)
    root = str(Path(noisysim.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    rng = np.random.default_rng(12345)
    last = -1
    for i in range(5):
        mode = "new" if i == 0 else "resume"  # resuming repairs the killed writer's file
        proc = subprocess.Popen([sys.executable, "-c", LOOP_SCRIPT, str(path), mode],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        try:
            line = proc.stdout.readline()
            assert line.strip() == "ready", proc.stderr.read()
            import time

            time.sleep(rng.uniform(0.0, 0.25))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        t = Trajectory(path)  # opens
        assert t.status == "running"
        k = _check_whole(t.checkpoint())
        assert k > last
        last = k
        steps = t.series("train", "step")
        assert steps[-1] >= k - 1 and len(steps) == len(t.series("train", "loss"))


WINDOW_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import noisysim.record.writer as record

    w = record.TrajectoryWriter(sys.argv[1], {"rule": {"name": "np"}}, 3, flush_every=4)
    for step in range(8):
        w.log("train", {"step": step, "loss": float(step)})
    w.write_checkpoint({"step": 7, "W": np.arange(3.0)})
    create = record._create_series

    def killed_inside(f, missing):  # SIGKILL while the file is out of SWMR mode
        create(f, missing)
        if sys.argv[2] == "flushed":
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    record._create_series = killed_inside
    for step in range(8, 12):
        w.log("train", {"step": step, "loss": float(step), "new": 1.0})
    """
)


@pytest.mark.parametrize("when", ["flushed", "unflushed"])
def test_resume_recovers_a_writer_killed_during_a_structural_change(tmp_path, when):
    path = tmp_path / "window.h5"
    env = dict(os.environ)
    root = str(Path(noisysim.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", WINDOW_SCRIPT, str(path), when],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with pytest.raises(NoisysimError, match="h5clear"):  # HDF5 refuses it until cleared
        Trajectory(path)
    with TrajectoryWriter(path, None, None, mode="resume") as w:  # clears and copies it
        assert w.read_checkpoint()["step"] == 7
        w.truncate_after(7)
        w.log("train", {"step": 8, "loss": -8.0})
        w.set_status("completed")
    t = Trajectory(path)
    np.testing.assert_array_equal(t.series("train", "step"), np.arange(9))
    assert t.series("train", "loss")[8] == -8.0
