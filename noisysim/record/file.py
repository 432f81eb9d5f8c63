"""The HDF5 file of a trajectory: its format, and its lifecycle as a file.

Creating a file (root attributes, the standard groups, SWMR mode), opening one to read
(SWMR read mode for files a writer holds or left open), opening one to resume (config and
seed checks, half-written rows dropped), reopening for writing (``TrajectoryWriter``'s
structural changes) and repairing a file whose writer was killed (``h5clear -s`` in
Python, then a clean copy).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from noisysim.dotted import first_difference
from noisysim.errors import NoisysimError, one_line

FORMAT = "noisysim-trajectory"
FORMAT_VERSION = 1
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")
STANDARD_GROUPS = ("train", "eval", "alignment", "snapshots")
SNAPSHOTS = "snapshots"
CHECKPOINT = "checkpoint"
# The first checkpoint layout's temporary group (written, then renamed to CHECKPOINT): no
# series group, and a sign of that layout (noisysim.record.checkpoint refuses it).
LEGACY_CHECKPOINT_NEW = "_checkpoint_new"
NOT_SERIES = (CHECKPOINT, LEGACY_CHECKPOINT_NEW)  # root groups that hold no series
INDEX_KEYS = ("step", "epoch")  # int64 series; every other scalar series is float64
INT_FILL = -1  # value of an index key in a row that lacks it
# Lower bound v110 is what SWMR needs; the upper bound keeps the file readable by any
# HDF5 >= 1.10 (the library would otherwise use its newest object formats).
LIBVER = ("v110", "v110")

# Root attributes that change while the file is in SWMR mode are fixed-length UTF-8 strings
# (bytes when read with h5py) updated in place: a variable-length string lives in the global
# heap, and a writer killed while replacing one can leave the attribute pointing at nothing.
MUTABLE_TEXT = {"status": 16, "message": 1024, "updated": 40}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


# --------------------------------------------------------------------------------------
# small helpers


def now() -> str:
    """The time stamp of the ``created`` and ``updated`` attributes (UTC, ISO 8601)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def set_text(attrs: h5py.AttributeManager, key: str, text: str) -> None:
    """Write a MUTABLE_TEXT attribute (created fixed-length, then modified in place)."""
    size = MUTABLE_TEXT[key]
    data = str(text).encode("utf-8")[:size].decode("utf-8", "ignore").encode("utf-8")
    if key in attrs:
        attrs.modify(key, np.bytes_(data))
    else:
        attrs.create(key, data=np.bytes_(data), dtype=h5py.string_dtype("utf-8", size))


def attr_str(attrs: Mapping, key: str, default: str = "") -> str:
    value = attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def check_name(what: str, name: Any) -> str:
    """A group or series name: letters, digits, '_', '.', '-' (HDF5 paths use '/')."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise NoisysimError(
            f"{what} must be a name of letters, digits, '_', '.' or '-' (no '/'), got "
            f"{name!r}; for per-layer values use e.g. 'update_norm_l0'"
        )
    return name


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def config_to_json(config: Mapping) -> str:
    """The config as the JSON string stored in the file (numpy values become plain ones)."""
    if not isinstance(config, Mapping):
        raise NoisysimError(f"config must be a dict, got {type(config).__name__}")
    try:
        return json.dumps(config, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise NoisysimError(f"config must be JSON-serialisable: {one_line(err)}") from None


def group_length(group: h5py.Group) -> int:
    """Rows that every series of the group holds (a crash mid-flush may leave some longer)."""
    lengths = [ds.shape[0] for ds in group.values() if isinstance(ds, h5py.Dataset)]
    return min(lengths) if lengths else 0


def series_groups(f: h5py.File) -> list[str]:
    return [
        name
        for name, obj in f.items()
        if isinstance(obj, h5py.Group) and name not in NOT_SERIES
    ]


# --------------------------------------------------------------------------------------
# opening


def h5open(path: Path, mode: str, **kwargs: Any) -> h5py.File:
    """h5py.File that tolerates file systems without locks (NFS, Lustre, ...)."""
    try:
        return h5py.File(path, mode, locking="best-effort", **kwargs)
    except ValueError as err:  # HDF5 older than 1.12.1 / 1.10.7: no best-effort locking
        if "locking" not in str(err):
            raise
        return h5py.File(path, mode, **kwargs)
    except OSError as err:
        # this process already has the file open without locks (a writer that gave up
        # waiting for a reader's lock): HDF5 wants the same setting
        if "locking flag values don't match" not in str(err):
            raise
        return h5py.File(path, mode, locking=False, **kwargs)


def open_for_reading(path: Path) -> h5py.File:
    """Open read-only; files held open by a writer (or left by a killed one) need SWMR read."""
    if not path.exists():
        raise NoisysimError(f"{path}: no such file")
    if path.is_dir():
        raise NoisysimError(f"{path} is a directory, not a trajectory file")
    deadline = time.monotonic() + 0.5
    while True:
        try:
            return h5open(path, "r")
        except (OSError, RuntimeError) as err:  # h5py raises either for damaged files
            first = one_line(err)
        try:
            return h5open(path, "r", swmr=True, libver=LIBVER)
        except (OSError, RuntimeError):
            pass
        # a live writer leaves SWMR mode for milliseconds to create objects: wait that out
        transient = "already open for write" in first or "unable to lock" in first
        if not transient or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    if "unable to lock" in first:
        raise NoisysimError(f"{path} is locked by another process writing it; retry ({first})")
    if "already open for write" in first:
        raise NoisysimError(
            f"{path} was left open by a writer that did not close it and cannot be read; "
            f"clear its flags with `h5clear -s {path}` (Debian package hdf5-tools) and retry"
        )
    raise NoisysimError(f"{path} is not a readable HDF5 file (damaged or another format): {first}")


def check_format(path: Path, attrs: Mapping) -> int:
    """The file's format_version; refuses files that are not trajectories or too new."""
    fmt = attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT:
        raise NoisysimError(
            f"{path} is not a noisysim trajectory (its 'format' attribute is {fmt!r}, "
            f"expected {FORMAT!r})"
        )
    version = int(attrs.get("format_version", -1))
    if not 1 <= version <= FORMAT_VERSION:
        raise NoisysimError(
            f"{path} has trajectory format_version {version}; this noisysim reads versions "
            f"1 to {FORMAT_VERSION}: upgrade noisysim"
        )
    return version


def live_writer(path: Path) -> str | None:
    """Describe the process still writing ``path`` (same host only), or None."""
    try:
        f = open_for_reading(path)
    except NoisysimError:
        return None
    with f:
        status = attr_str(f.attrs, "status")
        pid = int(f.attrs.get("writer_pid", -1))
        host = attr_str(f.attrs, "writer_host")
    if status != "running" or host != socket.gethostname() or pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return f"process {pid} on {host}"


def existing_run(path: Path, config: Mapping) -> tuple[str, str]:
    """What ``path`` holds compared with ``config``, and what to do about it:
    ("same", why) a run of this very config, ("different", why) a run of another config
    (names the first differing key), ("unreadable", why) not a readable trajectory."""
    import json

    from noisysim.dotted import first_difference

    from .reader import Trajectory

    try:
        traj = Trajectory(path)
        stored = traj.config
    except NoisysimError as err:
        return "unreadable", (f"{path} already exists and is not a readable trajectory "
                              f"({one_line(err)}); pass --overwrite to replace it")
    diff = first_difference(json.loads(config_to_json(config)), stored)
    if diff is not None:
        return "different", (f"{path} already holds a run of a different config (first "
                             f"difference at {diff!r}); pass --overwrite to replace it, or give "
                             "this run another name (--set name=...) or --out")
    if traj.status == "completed":
        return "same", (f"{path} already holds a completed run of this config; nothing to do "
                        "(pass --overwrite to run it again)")
    return "same", (f"{path} already holds a run of this config (status {traj.status}); "
                    f"continue it with: noisysim run --resume {path} (or pass --overwrite)")


def create(path: Path, config: Mapping, seed: int, overwrite: bool) -> h5py.File:
    """A new trajectory file, in SWMR mode, with its root attributes and standard groups.

    The file is made under a hidden name in the same folder and gets ``path`` (a hard link:
    atomic, and refused if ``path`` appeared meanwhile) only once it is in SWMR mode.
    Switching SWMR on unlocks and relocks the file inside HDF5: a reader that opened it in
    between (a sweep's progress, ``noisysim inspect``) would make that fail. Under the
    hidden name no reader finds it."""
    config_json = config_to_json(config)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise NoisysimError(f"seed must be an integer, got {seed!r}")
    if path.is_dir():
        raise NoisysimError(f"{path} is a directory; give a file name for the trajectory")
    if path.exists():
        if not overwrite:
            raise NoisysimError(existing_run(path, config)[1])
        live = live_writer(path)
        if live:
            raise NoisysimError(f"{path} is being written by {live}; stop that run first")
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    hidden = path.with_name(f".{path.name}.{os.getpid()}.new")
    hidden.unlink(missing_ok=True)  # left by a process of the same pid that was killed here
    try:
        f = h5open(hidden, "x", libver=LIBVER)
    except (OSError, FileExistsError) as err:
        raise NoisysimError(f"cannot create {path}: {one_line(err)}") from None
    try:
        _fill_new(f, config_json, seed)
        _link_in_place(hidden, path)
    except BaseException:
        f.close()
        hidden.unlink(missing_ok=True)
        raise
    return f


def _link_in_place(hidden: Path, path: Path) -> None:
    """Give the new file (open, in SWMR mode) its name: a hard link, which fails if ``path``
    exists; on a file system without hard links, a rename."""
    taken = NoisysimError(f"cannot create {path}: another process created it while this "
                          "run was starting (two runs with one name?); give this one another "
                          "name")
    try:
        os.link(hidden, path)
    except FileExistsError:
        raise taken from None
    except OSError:
        if path.exists():
            raise taken from None
        os.replace(hidden, path)
        return
    hidden.unlink()


def _fill_new(f: h5py.File, config_json: str, seed: int) -> None:
    """Root attributes and standard groups of a new file, then SWMR mode."""
    from noisysim import __version__

    stamp = now()
    attrs = {
        "format": FORMAT,
        "format_version": np.int64(FORMAT_VERSION),
        "config": config_json,
        "noisysim_version": __version__,
        "seed": np.int64(seed),
        "created": stamp,
        "resumes": np.int64(0),
        "writer_pid": np.int64(os.getpid()),
        "writer_host": socket.gethostname(),
    }
    for key, value in attrs.items():
        f.attrs[key] = value
    set_text(f.attrs, "status", "running")
    set_text(f.attrs, "message", "")
    set_text(f.attrs, "updated", stamp)
    for name in STANDARD_GROUPS:
        f.create_group(name)
    f.flush()
    f.swmr_mode = True


def open_for_resume(path: Path, config: Mapping | None, seed: int | None) -> h5py.File:
    """Open an existing trajectory to continue it, in SWMR mode, status back to running.

    ``config`` and ``seed`` (None: take the recorded ones) must match the recorded ones. A
    file whose writer was killed is repaired first; rows a crash left half-written are
    dropped. Every refusal happens before anything in the file changes.
    """
    from noisysim.record.checkpoint import check_layout  # imported here: it imports this module

    if not path.exists():
        raise NoisysimError(
            f"cannot resume: {path} does not exist; start the run without --resume"
        )
    live = live_writer(path)
    if live:
        raise NoisysimError(f"{path} is being written by {live}; stop that run first")
    try:
        f = h5open(path, "r+", libver=LIBVER)
    except (OSError, RuntimeError) as err:
        if "already open" not in str(err):
            raise NoisysimError(
                f"cannot resume {path}: not a readable HDF5 file ({one_line(err)})"
            ) from None
        repair(path)  # its writer was killed: copy what it flushed into a clean file
        f = h5open(path, "r+", libver=LIBVER)
    try:
        check_format(path, f.attrs)
        check_layout(path, f)
        stored = json.loads(attr_str(f.attrs, "config"))
        if config is not None:
            diff = first_difference(json.loads(config_to_json(config)), stored)
            if diff is not None:
                raise NoisysimError(
                    f"cannot resume {path}: config differs from the recorded one at {diff!r}; "
                    "resume with the recorded config or start a new run"
                )
        if seed is not None and int(seed) != int(f.attrs["seed"]):
            raise NoisysimError(
                f"cannot resume {path}: seed {seed} differs from the recorded seed "
                f"{int(f.attrs['seed'])}"
            )
        for name in series_groups(f):  # drop rows a crash left half-written
            group = f[name]
            n = group_length(group)
            for ds in group.values():
                if isinstance(ds, h5py.Dataset) and ds.shape[0] != n:
                    ds.resize(n, axis=0)
        set_text(f.attrs, "status", "running")
        set_text(f.attrs, "message", "")
        set_text(f.attrs, "updated", now())
        f.attrs["resumes"] = np.int64(int(f.attrs.get("resumes", 0)) + 1)
        f.attrs["writer_pid"] = np.int64(os.getpid())
        f.attrs["writer_host"] = socket.gethostname()
        f.flush()
    except BaseException:
        f.close()
        raise
    return start_swmr(f, path, unlocked=False)[0]


def reopen(path: Path, swmr: bool, unlocked: bool) -> tuple[h5py.File, bool]:
    """Open the file for writing again (SWMR mode or not); waits out short reader locks.

    Returns the file and whether it was opened without file locks (``unlocked``: a reader
    held a lock too long once; from then on the writer goes without them).
    """
    deadline = time.monotonic() + 1.0
    while True:
        try:
            if unlocked:
                f = h5py.File(path, "r+", libver=LIBVER, locking=False)
            else:
                f = h5open(path, "r+", libver=LIBVER)
            break
        except OSError as err:
            # a reader (another process: a lock; this one: "already open") is reading
            locked = "unable to lock" in str(err)
            if (locked or "already open" in str(err)) and time.monotonic() < deadline:
                time.sleep(0.02)  # wait for a short read to end
            elif locked and not unlocked:
                # a reader keeps the file open (SWMR readers hold a shared lock): go on
                # without locks from now on; that reader may see a transient error
                unlocked = True
            else:
                raise NoisysimError(f"cannot reopen {path} for writing: {one_line(err)}") from None
    if swmr:
        return start_swmr(f, path, unlocked)
    return f, unlocked


def start_swmr(f: h5py.File, path: Path, unlocked: bool) -> tuple[h5py.File, bool]:
    """``f`` (open for writing) switched to SWMR mode, and whether it is open without file
    locks. HDF5 unlocks and relocks the file to switch SWMR on: a reader that opened it in
    between makes the relock fail. Then HDF5 has undone the switch, and the file is reopened
    without locks, as for a reader that holds a lock too long (``reopen``)."""
    try:
        f.swmr_mode = True
        return f, unlocked
    except BaseException as err:
        f.close()
        if unlocked or "unable to lock" not in str(err):
            raise
    return reopen(path, swmr=True, unlocked=True)


# --------------------------------------------------------------------------------------
# repairing a file whose writer was killed


def _lookup3(data: bytes) -> int:
    """Bob Jenkins' lookup3 hashlittle (initval 0): HDF5's metadata checksum."""
    mask = 0xFFFFFFFF

    def rot(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & mask

    n = len(data)
    h = dict.fromkeys("abc", (0xDEADBEEF + n) & mask)
    if n == 0:
        return h["c"]
    data += bytes(-n % 12)  # the last block: 1 to 12 bytes, zero-padded
    blocks = len(data) // 12
    for i in range(blocks):
        for j, key in enumerate("abc"):
            word = int.from_bytes(data[12 * i + 4 * j: 12 * i + 4 * j + 4], "little")
            h[key] = (h[key] + word) & mask
        if i < blocks - 1:  # mix
            for x, z, y, r in (("a", "c", "b", 4), ("b", "a", "c", 6), ("c", "b", "a", 8),
                               ("a", "c", "b", 16), ("b", "a", "c", 19), ("c", "b", "a", 4)):
                h[x] = ((h[x] - h[z]) & mask) ^ rot(h[z], r)
                h[z] = (h[z] + h[y]) & mask
    for x, z, r in (("c", "b", 14), ("a", "c", 11), ("b", "a", 25), ("c", "b", 16),
                    ("a", "c", 4), ("b", "a", 14), ("c", "b", 24)):  # final
        h[x] = ((h[x] ^ h[z]) - rot(h[z], r)) & mask
    return h["c"]


def _clear_open_flags(path: Path) -> bool:
    """What `h5clear -s` does: zero the superblock's "open for writing" flags.

    For a file whose writer was killed while it had left SWMR mode (a structural change):
    HDF5 then refuses every open. Only a version 2/3 superblock at offset 0 whose checksum
    verifies is touched; returns whether the flags were cleared.
    """
    try:
        with open(path, "r+b") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3):
                return False
            size = 12 + 4 * head[9]  # flags, then base, extension, EOF and root addresses
            fh.seek(0)
            block = fh.read(size + 4)
            if len(block) < size + 4:
                return False
            if _lookup3(block[:size]) != int.from_bytes(block[size:], "little"):
                return False
            if block[11] == 0:
                return False
            new = block[:11] + b"\x00" + block[12:size]
            fh.seek(0)
            fh.write(new + _lookup3(new).to_bytes(4, "little"))
            fh.flush()
            os.fsync(fh.fileno())
        return True
    except OSError:
        return False


def repair(path: Path) -> None:
    """Rewrite a file whose writer was killed (flags still say 'open') into a clean copy."""
    tmp = path.with_name(path.name + ".repair-tmp")
    try:
        src = h5open(path, "r", swmr=True, libver=LIBVER)
    except (OSError, RuntimeError) as err:
        # killed outside SWMR mode (inside a structural change): clear the flags, then the
        # copy below reads every group, so damage still shows up as an error
        if not ("already open" in str(err) and _clear_open_flags(path)):
            raise NoisysimError(
                f"cannot resume {path}: its writer did not close it and it cannot be read "
                f"({one_line(err)}); try `h5clear -s {path}` (Debian package hdf5-tools)"
            ) from None
        try:
            src = h5open(path, "r", libver=LIBVER)
        except (OSError, RuntimeError) as err2:
            raise NoisysimError(
                f"cannot resume {path}: its writer was killed while changing its structure "
                f"and it cannot be read ({one_line(err2)})"
            ) from None
    try:
        with src, h5open(tmp, "w", libver=LIBVER) as dst:
            for key, value in src.attrs.items():
                if key in MUTABLE_TEXT:  # keep them fixed-length
                    set_text(dst.attrs, key, attr_str(src.attrs, key))
                else:
                    dst.attrs[key] = value
            for name in src:
                try:
                    src.copy(src[name], dst, name=name)
                except (OSError, RuntimeError, KeyError) as err:
                    if name not in NOT_SERIES:
                        raise NoisysimError(
                            f"cannot resume {path}: its group {name} is damaged "
                            f"({one_line(err)})"
                        ) from None
                    if name in dst:  # a half-written checkpoint: leave it behind
                        del dst[name]
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
