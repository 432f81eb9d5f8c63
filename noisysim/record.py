"""Trajectory files: one HDF5 file per training run (format in docs/trajectory-format.md).

The writer buffers rows in memory and appends them in bulk; the file is in HDF5 SWMR mode
from right after its creation, so a writer killed at any moment (SIGKILL, power cut of the
process, out-of-memory killer) leaves a file that still opens and holds everything up to the
last flush. Readers of a file that is being written, or whose writer died, open it in SWMR
read mode; ``Trajectory`` does that by itself.

An SWMR writer may only write into existing datasets and extend them: creating, deleting,
moving or shrinking objects is not supported (deleting crashed HDF5). So checkpoints go to
two pre-laid-out slots overwritten in place, and the rare structural changes (a new series or
group, a checkpoint with a new layout, truncate_after) close the file, make the change with
the file opened normally and reopen it in SWMR mode (``TrajectoryWriter._restructure``).

    TrajectoryWriter(path, config, seed, mode="new"|"overwrite"|"resume")
        .log(group, row)            one row of scalars, row["step"] required
        .snapshot(step, params)     parameter arrays, e.g. {"W_0": ..., "b_0": ...}
        .write_checkpoint(state)    nested dict of arrays / scalars / strings (replaces the last)
        .read_checkpoint()          -> the same nested dict, or None
        .truncate_after(step)       drop rows logged after ``step`` (resume from a checkpoint)
        .set_status(status, message)
        .flush(), .close()          (also a context manager)
    Trajectory(path)                read-only view: .config .status .series() .final() ...
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
import threading
import time
import weakref
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import h5py
import numpy as np

from noisysim.errors import NoisysimError, check_choice

FORMAT = "noisysim-trajectory"
FORMAT_VERSION = 1
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")
MODES = ("new", "overwrite", "resume")
STANDARD_GROUPS = ("train", "eval", "alignment", "snapshots")
SNAPSHOTS = "snapshots"
CHECKPOINT = "checkpoint"
SLOTS = ("a", "b")  # /checkpoint/a, /checkpoint/b: the last checkpoint and the one before
CURRENT = "current"  # /checkpoint/current: which slot holds the last complete checkpoint
_CHECKPOINT_NEW = "_checkpoint_new"  # first layout only: written first, then renamed
MANIFEST = "__noisysim_manifest__"  # per slot: JSON of types, key order and a checksum
INDEX_KEYS = ("step", "epoch")  # int64 series; every other scalar series is float64
INT_FILL = -1  # value of an index key in a row that lacks it
# Lower bound v110 is what SWMR needs; the upper bound keeps the file readable by any
# HDF5 >= 1.10 (the library would otherwise use its newest object formats).
LIBVER = ("v110", "v110")
COMPRESSION = dict(compression="gzip", compression_opts=4, shuffle=True)
SCALAR_CHUNK = 4096  # rows per chunk of a scalar series (32 KiB of float64)
SNAPSHOT_CHUNK_BYTES = 1 << 18  # aim for chunks of about 256 KiB of snapshots
MAX_BUFFER_BYTES = 1 << 26  # buffered snapshots beyond 64 MiB are written at once

# Root attributes that change while the file is in SWMR mode are fixed-length UTF-8 strings
# (bytes when read with h5py) updated in place: a variable-length string lives in the global
# heap, and a writer killed while replacing one can leave the attribute pointing at nothing.
MUTABLE_TEXT = {"status": 16, "message": 1024, "updated": 40}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


# --------------------------------------------------------------------------------------
# small helpers


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _set_text(attrs: h5py.AttributeManager, key: str, text: str) -> None:
    """Write a MUTABLE_TEXT attribute (created fixed-length, then modified in place)."""
    size = MUTABLE_TEXT[key]
    data = str(text).encode("utf-8")[:size].decode("utf-8", "ignore").encode("utf-8")
    if key in attrs:
        attrs.modify(key, np.bytes_(data))
    else:
        attrs.create(key, data=np.bytes_(data), dtype=h5py.string_dtype("utf-8", size))


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _check_name(what: str, name: Any) -> str:
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
        raise NoisysimError(f"config must be JSON-serialisable: {_one_line(err)}") from None


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """Dotted key of the first place where two JSON-like values differ (None if equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                return f"{prefix}{key}"
            diff = _first_difference(a[key], b[key], f"{prefix}{key}.")
            if diff is not None:
                return diff
        return None
    if a != b and not (a != a and b != b):  # NaN == NaN here
        return prefix.rstrip(".") or "(root)"
    return None


def _h5open(path: Path, mode: str, **kwargs: Any) -> h5py.File:
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


def _open_for_reading(path: Path) -> h5py.File:
    """Open read-only; files held open by a writer (or left by a killed one) need SWMR read."""
    if not path.exists():
        raise NoisysimError(f"{path}: no such file")
    if path.is_dir():
        raise NoisysimError(f"{path} is a directory, not a trajectory file")
    deadline = time.monotonic() + 0.5
    while True:
        try:
            return _h5open(path, "r")
        except (OSError, RuntimeError) as err:  # h5py raises either for damaged files
            first = _one_line(err)
        try:
            return _h5open(path, "r", swmr=True, libver=LIBVER)
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


def _check_format(path: Path, attrs: Mapping) -> int:
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


def _attr_str(attrs: Mapping, key: str, default: str = "") -> str:
    value = attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _group_length(group: h5py.Group) -> int:
    """Rows that every series of the group holds (a crash mid-flush may leave some longer)."""
    lengths = [ds.shape[0] for ds in group.values() if isinstance(ds, h5py.Dataset)]
    return min(lengths) if lengths else 0


def _series_groups(f: h5py.File) -> list[str]:
    return [
        name
        for name, obj in f.items()
        if isinstance(obj, h5py.Group) and name not in (CHECKPOINT, _CHECKPOINT_NEW)
    ]


# --------------------------------------------------------------------------------------
# nested checkpoint dicts <-> HDF5 groups
#
# /checkpoint holds two slots, /checkpoint/a and /checkpoint/b, each a whole checkpoint
# tree, and /checkpoint/current (S1: b"a", b"b", or b"" before the first checkpoint). A
# checkpoint is written into the slot that is not current, flushed, and only then is
# `current` flipped (one byte, flushed): a crash at any moment leaves the current slot whole.
# While the file is in SWMR mode only raw data of existing datasets may change, so every
# slot dataset has fixed-size, allocated, contiguous storage that is overwritten in place;
# a slot is (re)built, out of SWMR mode, only when a checkpoint's layout (keys, dtypes,
# shapes, string lengths) differs from the slot's.


class _Plan:
    """A checkpoint turned into what the file stores: groups, leaf arrays and a manifest."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        self.groups: list[str] = []  # slot-relative paths, parents first
        self.leaves: list[tuple[str, np.ndarray]] = []  # slot-relative path, stored array
        root = self._node(state, "", "")
        crc = 0
        for _, array in self.leaves:
            crc = zlib.crc32(_raw_bytes(array), crc)
        manifest = {"format_version": FORMAT_VERSION, "crc32": crc, "root": root}
        self.manifest = json.dumps(manifest, separators=(",", ":")).encode("utf-8")

    def layout(self) -> dict[str, Any]:
        """What a slot must hold to take this checkpoint in place (see _slot_layout)."""
        out: dict[str, Any] = {path: None for path in self.groups}
        out.update({path: (array.shape, array.dtype) for path, array in self.leaves})
        return out

    def _leaf(self, path: str, array: np.ndarray, kind: str, **extra: Any) -> dict:
        self.leaves.append((path, array))
        return {"kind": kind, **extra}

    def _node(self, value: Any, path: str, where: str) -> dict:
        child = (path + "/") if path else ""
        if isinstance(value, Mapping):
            if path:
                self.groups.append(path)
            items = {}
            for key, item in value.items():
                if not isinstance(key, str) or not key or "/" in key or key == ".":
                    raise NoisysimError(
                        f"checkpoint key {where}/{key!r} must be a non-empty str without '/'"
                    )
                if key == MANIFEST:
                    raise NoisysimError(f"checkpoint key {where}/{key} is reserved")
                items[key] = self._node(item, child + key, f"{where}/{key}")
            return {"kind": "dict", "items": items}
        if isinstance(value, (list, tuple)):
            self.groups.append(path)
            items = [
                self._node(item, f"{child}{i}", f"{where}/{i}") for i, item in enumerate(value)
            ]
            return {"kind": "tuple" if isinstance(value, tuple) else "list", "items": items}
        if value is None:
            return {"kind": "none"}
        # numpy first: np.float64 is also a float, and must come back as np.float64
        if isinstance(value, np.ndarray) or (
            isinstance(value, np.generic) and not isinstance(value, (str, bytes))
        ):
            array = np.asarray(value)
            if array.dtype.hasobject or array.dtype.kind in "UMm":
                raise NoisysimError(
                    f"checkpoint entry {where} has dtype {array.dtype}, which HDF5 cannot "
                    "store; store numbers, bytes or a list of str instead"
                )
            try:
                h5py.h5t.py_create(array.dtype, logical=True)
            except (TypeError, ValueError) as err:
                raise NoisysimError(
                    f"checkpoint entry {where} (dtype {array.dtype}) cannot be stored: "
                    f"{_one_line(err)}"
                ) from None
            kind = "npscalar" if isinstance(value, np.generic) else "ndarray"
            return self._leaf(path, array, kind)
        if isinstance(value, bool):
            return self._leaf(path, np.array(value, dtype=np.bool_), "bool")
        if isinstance(value, int):
            if -(2**63) <= value < 2**63:
                return self._leaf(path, np.array(value, dtype=np.int64), "int")
            if 0 <= value < 2**64:
                return self._leaf(path, np.array(value, dtype=np.uint64), "int")
            return self._leaf(path, _fixed_text(str(value)), "int")
        if isinstance(value, float):
            return self._leaf(path, np.array(value, dtype=np.float64), "float")
        if isinstance(value, str):
            try:
                text = _fixed_text(value)
            except UnicodeEncodeError as err:
                raise NoisysimError(
                    f"checkpoint entry {where} is a str that UTF-8 cannot encode: "
                    f"{_one_line(err)}"
                ) from None
            return self._leaf(path, text, "str", n=len(value.encode("utf-8")))
        if isinstance(value, (bytes, bytearray)):
            return self._leaf(path, np.frombuffer(bytes(value), dtype=np.uint8).copy(), "bytes")
        raise NoisysimError(
            f"checkpoint entry {where} is a {type(value).__name__}; checkpoints hold dicts, "
            "lists, numpy arrays, numbers, str, bytes and None"
        )


def _fixed_text(text: str) -> np.ndarray:
    """A str as a 0-d fixed-length UTF-8 string of exactly its bytes (HDF5 needs >= 1)."""
    data = text.encode("utf-8")
    return np.array(data, dtype=h5py.string_dtype("utf-8", max(1, len(data))))


def _raw_bytes(array: np.ndarray) -> np.ndarray:
    """The bytes of an array in its own dtype and byte order, for the checksum."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _early_dcpl() -> h5py.h5p.PropDCID:
    """Contiguous storage allocated at creation, so that writes never change metadata."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def _slot_layout(slot: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            if name != MANIFEST:
                out[name] = (obj.shape, obj.dtype)
        else:
            out[name] = None

    slot.visititems(visit)
    return out


def _slot_spec(f: h5py.File, slot: str) -> tuple[dict[str, Any], int] | None:
    """(layout, manifest capacity) of a slot, or None if there is no such slot."""
    cp = f.get(CHECKPOINT)
    group = cp.get(slot) if isinstance(cp, h5py.Group) else None
    if not isinstance(group, h5py.Group):
        return None
    manifest = group.get(MANIFEST)
    if not isinstance(manifest, h5py.Dataset) or manifest.ndim != 1:
        return None
    return _slot_layout(group), manifest.shape[0]


def _slot_fits(spec: tuple[dict[str, Any], int] | None, plan: _Plan) -> bool:
    """Whether ``plan`` can be written in place into a slot of ``spec`` (see _slot_spec)."""
    if spec is None or spec[1] < len(plan.manifest):
        return False
    have, want = spec[0], plan.layout()
    if have.keys() != want.keys():
        return False
    for path, spec in want.items():
        got = have[path]
        if spec is None or got is None:
            if spec is not got:
                return False
        elif got[0] != spec[0] or got[1] != spec[1]:
            return False
    return True


def _build_slot(cp: h5py.Group, slot: str, plan: _Plan) -> None:
    """(Re)create an empty slot laid out for ``plan``. Not allowed in SWMR mode."""
    if slot in cp:
        del cp[slot]
    group = cp.create_group(slot)
    for path in plan.groups:
        group.create_group(path)
    for path, array in plan.leaves:
        if array.ndim == 0:  # h5py ignores the dcpl of scalars: writing allocates them
            group.create_dataset(path, data=array, dtype=array.dtype)
        else:
            group.create_dataset(path, shape=array.shape, dtype=array.dtype, dcpl=_early_dcpl())
    capacity = len(plan.manifest) + max(1024, len(plan.manifest) // 2)
    # spaces: an unwritten slot has an empty (invalid) manifest
    group.create_dataset(MANIFEST, data=np.full(capacity, ord(" "), np.uint8))


def _fill_slot(slot: h5py.Group, plan: _Plan) -> None:
    """Overwrite a slot laid out for ``plan`` in place; manifest last, padded with spaces."""
    for path, array in plan.leaves:
        if array.size:  # low-level write: same dtype and shape, all of it
            dataset = h5py.h5d.open(slot.id, path.encode("utf-8"))
            dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(array))
    manifest = slot[MANIFEST]
    padded = np.full(manifest.shape[0], ord(" "), np.uint8)
    padded[: len(plan.manifest)] = np.frombuffer(plan.manifest, np.uint8)
    manifest[...] = padded


def _current_slot(f: h5py.File) -> str:
    """The slot holding the last complete checkpoint: "a", "b", or "" if none."""
    cp = f.get(CHECKPOINT)
    if not isinstance(cp, h5py.Group) or not isinstance(cp.get(CURRENT), h5py.Dataset):
        return ""
    value = cp[CURRENT][()]
    value = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return value if value in SLOTS else ""


def _set_current(f: h5py.File, slot: str) -> None:
    f[CHECKPOINT][CURRENT][()] = np.bytes_(slot.encode("ascii"))


def _is_legacy(f: h5py.File) -> bool:
    """A checkpoint of the first layout (one tree under /checkpoint, renamed into place)."""
    cp = f.get(CHECKPOINT)
    return _CHECKPOINT_NEW in f or (isinstance(cp, h5py.Group) and CURRENT not in cp)


class _Damaged(ValueError):
    pass


def _read_slot(slot: h5py.Group) -> dict:
    text = slot[MANIFEST][...].tobytes().decode("utf-8")
    if not text.strip():
        raise _Damaged("it was never written")
    manifest = json.loads(text)
    crc = [0]

    def leaf(group: h5py.Group, name: str) -> np.ndarray:
        array = group[name][...]
        crc[0] = zlib.crc32(_raw_bytes(array), crc[0])
        return array

    def read(group: h5py.Group, name: str, node: dict) -> Any:
        kind = node["kind"]
        if kind == "dict":
            sub = group[name] if name else group
            return {key: read(sub, key, item) for key, item in node["items"].items()}
        if kind in ("list", "tuple"):
            sub = group[name]
            items = [read(sub, str(i), item) for i, item in enumerate(node["items"])]
            return tuple(items) if kind == "tuple" else items
        if kind == "none":
            return None
        array = leaf(group, name)
        if kind == "bool":
            return bool(array[()])
        if kind == "int":
            raw = array[()]
            return int(raw.decode() if isinstance(raw, bytes) else raw)
        if kind == "float":
            return float(array[()])
        if kind == "str":
            return array.tobytes()[: node["n"]].decode("utf-8")
        if kind == "bytes":
            return array.tobytes()
        if kind == "npscalar":
            return array[()]
        if kind == "ndarray":
            return array
        raise _Damaged(f"entry {group.name}/{name} has unknown kind {kind!r}")

    state = read(slot, "", manifest["root"])
    if crc[0] != manifest["crc32"]:
        raise _Damaged("checksum mismatch (half written)")
    return state


def _read_legacy_tree(group: h5py.Group, name: str, node: dict) -> Any:
    """Reader of the first layout (variable-length strings, no checksum)."""
    kind = node["kind"]
    if kind == "dict":
        sub = group[name]
        return {key: _read_legacy_tree(sub, key, item) for key, item in node["items"].items()}
    if kind in ("list", "tuple"):
        sub = group[name]
        items = [_read_legacy_tree(sub, str(i), item) for i, item in enumerate(node["items"])]
        return tuple(items) if kind == "tuple" else items
    if kind == "none":
        return None
    ds = group[name]
    if kind == "bool":
        return bool(ds[()])
    if kind == "int":
        raw = ds[()]
        return int(raw.decode() if isinstance(raw, bytes) else raw)
    if kind == "float":
        return float(ds[()])
    if kind == "str":
        return ds.asstr()[()]
    if kind == "bytes":
        return ds[...].tobytes()
    if kind == "npscalar":
        return ds[...][()]
    if kind == "ndarray":
        return ds[...]
    raise NoisysimError(f"checkpoint entry {ds.name} has unknown kind {kind!r}")


def _read_checkpoint(path: Path, f: h5py.File) -> dict | None:
    """The last complete checkpoint, or None if none was ever completed."""
    cp = f.get(CHECKPOINT)
    if isinstance(cp, h5py.Group) and CURRENT in cp:
        current = _current_slot(f)
        if not current:
            return None
        problem = None
        # the other slot holds the previous checkpoint, unless a writer is overwriting it
        for slot in (current, SLOTS[1 - SLOTS.index(current)]):
            try:
                return _read_slot(cp[slot])
            except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
                problem = problem or f"{CHECKPOINT}/{slot}: {_one_line(err)}"
        raise NoisysimError(f"{path}: no complete checkpoint ({problem})")
    problem = None
    for name in (CHECKPOINT, _CHECKPOINT_NEW):  # the first layout
        try:
            group = f.get(name)
            if not isinstance(group, h5py.Group):
                continue
            if MANIFEST not in group:  # written last: without it the group is incomplete
                problem = problem or f"{name} has no manifest"
                continue
            manifest = json.loads(group[MANIFEST].asstr()[()])
            return _read_legacy_tree(f, name, manifest["root"])
        except (OSError, RuntimeError, KeyError, ValueError) as err:  # a crash mid-write
            problem = problem or f"{name}: {_one_line(err)}"
    if problem:
        raise NoisysimError(f"{path}: no complete checkpoint ({problem})")
    return None


# --------------------------------------------------------------------------------------
# writer


class _Table:
    """Rows of one group waiting to be appended, plus the layout of its series."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []


def _fill_value(dtype: np.dtype, key: str) -> Any:
    """What a series holds where a row has no value: NaN, -1 for step/epoch, else 0."""
    if dtype.kind in "fc":
        return np.nan
    return INT_FILL if key in INDEX_KEYS else 0


def _scalar(group: str, key: str, value: Any) -> float | int:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        value = int(value)
    if isinstance(value, (int, np.integer)):
        value = int(value)
        if key in INDEX_KEYS:
            return value
        return float(value)
    if isinstance(value, (float, np.floating)):
        if key in INDEX_KEYS:
            if not float(value).is_integer():
                raise NoisysimError(f"trajectory {group}/{key} must be an integer, got {value!r}")
            return int(value)
        return float(value)
    raise NoisysimError(
        f"trajectory {group}/{key} must be a scalar number, got {type(value).__name__}; "
        "log arrays with snapshot()"
    )


def _live_writer(path: Path) -> str | None:
    """Describe the process still writing ``path`` (same host only), or None."""
    try:
        f = _open_for_reading(path)
    except NoisysimError:
        return None
    with f:
        status = _attr_str(f.attrs, "status")
        pid = int(f.attrs.get("writer_pid", -1))
        host = _attr_str(f.attrs, "writer_host")
    if status != "running" or host != socket.gethostname() or pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return f"process {pid} on {host}"


class TrajectoryWriter:
    """Append-only writer of one run's trajectory file.

    mode "new" refuses an existing file; "overwrite" replaces it; "resume" opens it,
    keeps its config and seed (``config``/``seed`` may be None; when given they must match)
    and sets its status back to running. Rows reach the file every ``flush_every`` rows,
    every ``flush_seconds`` of wall time (a background thread checks), before a checkpoint,
    on a status change and on close. Methods hold an internal lock (the flushing thread
    shares the file). Close it (or use ``with``): rows still buffered are lost otherwise.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        config: Mapping | None,
        seed: int | None,
        *,
        mode: str = "new",
        flush_every: int = 1000,
        flush_seconds: float = 5.0,
    ) -> None:
        check_choice("mode", mode, MODES)
        if (
            isinstance(flush_every, bool)
            or not isinstance(flush_every, (int, np.integer))
            or flush_every < 1
        ):
            raise NoisysimError(f"flush_every must be an integer >= 1, got {flush_every!r}")
        if not isinstance(flush_seconds, (int, float)) or not flush_seconds > 0:
            raise NoisysimError(f"flush_seconds must be a number > 0, got {flush_seconds!r}")
        self.path = Path(path)
        self.flush_every = int(flush_every)
        self.flush_seconds = float(flush_seconds)
        self._lock = threading.RLock()
        self._tables: dict[str, _Table] = {}
        self._snapshot_shapes: dict[str, tuple[int, ...]] | None = None  # filled on first use
        self._pending = 0
        self._pending_bytes = 0
        self._last_flush = time.monotonic()
        self._file: h5py.File | None = None
        self._thread_error: BaseException | None = None
        self._restructures = 0  # times the file left SWMR mode (tests look at it)
        self._unlocked = False  # reopen without file locks (a reader held one too long)
        self._slot_specs: dict[str, Any] = {}  # checkpoint slot -> _slot_spec, read lazily
        if mode == "resume":
            self._file = self._resume(config, seed)
        else:
            if config is None or seed is None:
                raise NoisysimError(f"mode {mode!r} needs a config and a seed")
            self._file = self._create(config, seed, overwrite=(mode == "overwrite"))
        self.config: dict = json.loads(_attr_str(self._file.attrs, "config"))
        self.seed: int = int(self._file.attrs["seed"])
        self._status = _attr_str(self._file.attrs, "status")
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_flush_loop,
            args=(weakref.ref(self), self._stop, min(1.0, self.flush_seconds / 4)),
            name=f"noisysim-flush-{self.path.name}",
            daemon=True,
        )
        self._thread.start()

    # -- opening ------------------------------------------------------------------------

    def _create(self, config: Mapping, seed: int, overwrite: bool) -> h5py.File:
        from noisysim import __version__

        config_json = config_to_json(config)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise NoisysimError(f"seed must be an integer, got {seed!r}")
        if self.path.is_dir():
            raise NoisysimError(f"{self.path} is a directory; give a file name for the trajectory")
        if self.path.exists():
            if not overwrite:
                raise NoisysimError(
                    f"{self.path} already exists; pass --overwrite to replace it or --resume "
                    "to continue that run"
                )
            live = _live_writer(self.path)
            if live:
                raise NoisysimError(f"{self.path} is being written by {live}; stop that run first")
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            f = _h5open(self.path, "x", libver=LIBVER)
        except (OSError, FileExistsError) as err:
            raise NoisysimError(f"cannot create {self.path}: {_one_line(err)}") from None
        now = _now()
        attrs = {
            "format": FORMAT,
            "format_version": np.int64(FORMAT_VERSION),
            "config": config_json,
            "noisysim_version": __version__,
            "seed": np.int64(seed),
            "created": now,
            "resumes": np.int64(0),
            "writer_pid": np.int64(os.getpid()),
            "writer_host": socket.gethostname(),
        }
        for key, value in attrs.items():
            f.attrs[key] = value
        _set_text(f.attrs, "status", "running")
        _set_text(f.attrs, "message", "")
        _set_text(f.attrs, "updated", now)
        for name in STANDARD_GROUPS:
            f.create_group(name)
        f.flush()
        f.swmr_mode = True
        return f

    def _resume(self, config: Mapping | None, seed: int | None) -> h5py.File:
        path = self.path
        if not path.exists():
            raise NoisysimError(
                f"cannot resume: {path} does not exist; start the run without --resume"
            )
        live = _live_writer(path)
        if live:
            raise NoisysimError(f"{path} is being written by {live}; stop that run first")
        try:
            f = _h5open(path, "r+", libver=LIBVER)
        except (OSError, RuntimeError) as err:
            if "already open" not in str(err):
                raise NoisysimError(
                    f"cannot resume {path}: not a readable HDF5 file ({_one_line(err)})"
                ) from None
            _repair(path)  # its writer was killed: copy what it flushed into a clean file
            f = _h5open(path, "r+", libver=LIBVER)
        try:
            _check_format(path, f.attrs)
            stored = json.loads(_attr_str(f.attrs, "config"))
            if config is not None:
                diff = _first_difference(json.loads(config_to_json(config)), stored)
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
            for name in _series_groups(f):  # drop rows a crash left half-written
                group = f[name]
                n = _group_length(group)
                for ds in group.values():
                    if isinstance(ds, h5py.Dataset) and ds.shape[0] != n:
                        ds.resize(n, axis=0)
            _set_text(f.attrs, "status", "running")
            _set_text(f.attrs, "message", "")
            _set_text(f.attrs, "updated", _now())
            f.attrs["resumes"] = np.int64(int(f.attrs.get("resumes", 0)) + 1)
            f.attrs["writer_pid"] = np.int64(os.getpid())
            f.attrs["writer_host"] = socket.gethostname()
            if _is_legacy(f):
                _migrate_legacy(path, f)
            f.flush()
            f.swmr_mode = True
        except BaseException:
            f.close()
            raise
        return f

    def _reopen(self, swmr: bool) -> h5py.File:
        """Open the file for writing again (SWMR mode or not); waits out short reader locks."""
        deadline = time.monotonic() + 1.0
        while True:
            try:
                if self._unlocked:
                    f = h5py.File(self.path, "r+", libver=LIBVER, locking=False)
                else:
                    f = _h5open(self.path, "r+", libver=LIBVER)
                break
            except OSError as err:
                # a reader (another process: a lock; this one: "already open") is reading
                locked = "unable to lock" in str(err)
                if (locked or "already open" in str(err)) and time.monotonic() < deadline:
                    time.sleep(0.02)  # wait for a short read to end
                elif locked and not self._unlocked:
                    # a reader keeps the file open (SWMR readers hold a shared lock): go on
                    # without locks from now on; that reader may see a transient error
                    self._unlocked = True
                else:
                    raise NoisysimError(
                        f"cannot reopen {self.path} for writing: {_one_line(err)}"
                    ) from None
        if swmr:
            try:
                f.swmr_mode = True
            except BaseException:
                f.close()
                raise
        return f

    def _restructure(self, change: Callable[[h5py.File], None]) -> None:
        """Run ``change`` (creating, deleting or resizing objects) outside SWMR mode.

        An SWMR writer may only write raw data into existing datasets and extend them, so
        the file is flushed, closed, reopened normally for ``change``, flushed, closed and
        reopened in SWMR mode. Buffered rows and the writer's state live in memory and are
        kept. A writer killed inside this window (milliseconds) leaves a file that HDF5
        opens only after `h5clear -s` (resuming does that), so this serves only new series,
        new checkpoint layouts and cuts.
        """
        f = self._file
        assert f is not None
        f.flush()
        f.close()
        self._file = None
        self._restructures += 1
        self._slot_specs.clear()
        try:
            g = self._reopen(swmr=False)
            try:
                change(g)
                g.flush()
            finally:
                g.close()
        finally:
            self._file = self._reopen(swmr=True)

    # -- writing ------------------------------------------------------------------------

    def _check_open(self) -> h5py.File:
        if self._thread_error is not None:
            err, self._thread_error = self._thread_error, None
            raise NoisysimError(f"writing {self.path} failed in the background: {_one_line(err)}")
        if self._file is None:
            raise NoisysimError(f"trajectory writer for {self.path} is closed")
        return self._file

    def log(self, group: str, row: Mapping[str, Any]) -> None:
        """Append one row of scalars to ``group`` (train, eval, alignment or any other name).

        ``row["step"]`` is required. A key seen for the first time creates its series, with
        NaN for the earlier rows; a key missing from a row gets NaN (``epoch``: -1).
        """
        with self._lock:
            self._check_open()
            _check_name("trajectory group", group)
            if group in (SNAPSHOTS, CHECKPOINT, _CHECKPOINT_NEW):
                raise NoisysimError(
                    f"group {group!r} is reserved; use snapshot() / write_checkpoint()"
                )
            if "step" not in row:
                raise NoisysimError(f"trajectory rows need a 'step'; {group} row has {sorted(row)}")
            clean = {}
            for key, value in row.items():
                _check_name(f"trajectory series name in {group}", key)
                clean[key] = _scalar(group, key, value)
            table = self._tables.setdefault(group, _Table())
            table.rows.append(clean)
            self._after_append()

    def snapshot(self, step: int, params: Mapping[str, np.ndarray]) -> None:
        """Record copies of parameter arrays (e.g. W_0, b_0, R_0) at ``step``."""
        with self._lock:
            f = self._check_open()
            if self._snapshot_shapes is None:
                group = f.get(SNAPSHOTS)
                self._snapshot_shapes = {
                    k: v.shape[1:] for k, v in (group or {}).items() if isinstance(v, h5py.Dataset)
                }
            row: dict[str, Any] = {"step": _scalar(SNAPSHOTS, "step", step)}
            for name, value in params.items():
                _check_name("snapshot name", name)
                if name == "step":
                    raise NoisysimError("snapshot name 'step' is reserved")
                array = np.array(value, copy=True)
                if array.dtype.kind not in "biuf":
                    raise NoisysimError(f"snapshot {name} must be numeric, got dtype {array.dtype}")
                known = self._snapshot_shapes.setdefault(name, array.shape)
                if array.shape != known:
                    raise NoisysimError(
                        f"snapshot {name} has shape {array.shape}, earlier snapshots {known}"
                    )
                row[name] = array
                self._pending_bytes += array.nbytes
            self._tables.setdefault(SNAPSHOTS, _Table()).rows.append(row)
            self._after_append()

    def _after_append(self) -> None:
        self._pending += 1
        if (
            self._pending >= self.flush_every
            or self._pending_bytes >= MAX_BUFFER_BYTES
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self._flush_locked()

    def flush(self) -> None:
        """Write buffered rows and flush the file to the operating system."""
        with self._lock:
            self._check_open()
            self._flush_locked()

    def _flush_locked(self) -> h5py.File:
        """Write buffered rows and flush; returns the file (reopened if series were new)."""
        f = self._file
        assert f is not None
        missing = self._missing_series(f)
        if missing:
            self._restructure(lambda g: _create_series(g, missing))
            f = self._file
        for name, table in self._tables.items():
            if table.rows:
                self._append(f[name], name, table)
        _set_text(f.attrs, "updated", _now())
        f.flush()
        self._pending = 0
        self._pending_bytes = 0
        self._last_flush = time.monotonic()
        return f

    def _missing_series(self, f: h5py.File) -> dict[str, dict[str, tuple]]:
        """Series (and groups) that buffered rows need and the file lacks: name -> specs."""
        missing: dict[str, dict[str, tuple]] = {}
        for name, table in self._tables.items():
            if not table.rows:
                continue
            group = f.get(name)
            have = set(group.keys()) if isinstance(group, h5py.Group) else None
            specs: dict[str, tuple] = {}
            for row in table.rows:
                for key, value in row.items():
                    if (have is None or key not in have) and key not in specs:
                        specs[key] = _series_spec(name, key, value)
            if have is None or specs:
                missing[name] = specs
        return missing

    def _append(self, group: h5py.Group, name: str, table: _Table) -> None:
        """Append ``table.rows``; idempotent if interrupted (sizes derive from ``step``)."""
        rows = table.rows
        n_old = group["step"].shape[0] if "step" in group else 0
        n_new = n_old + len(rows)
        columns: dict[str, list] = {}
        for i, row in enumerate(rows):
            for key, value in row.items():
                columns.setdefault(key, [None] * len(rows))[i] = value
        # every series grows (missing values read as the fill value); `step` last, so
        # len(step) counts the rows that are complete
        names = [k for k, v in group.items() if isinstance(v, h5py.Dataset) and k != "step"]
        for key in names + ["step"]:
            ds = group[key]
            values = columns.get(key)
            if values is None:
                ds.resize(n_new, axis=0)
                continue
            fill = _fill_value(ds.dtype, key)
            block = np.full((len(rows),) + ds.shape[1:], fill, dtype=ds.dtype)
            for i, value in enumerate(values):
                if value is None:
                    continue
                if name == SNAPSHOTS and key != "step" and np.shape(value) != ds.shape[1:]:
                    raise NoisysimError(
                        f"snapshot {key} has shape {np.shape(value)}, earlier snapshots "
                        f"{ds.shape[1:]}"
                    )
                block[i] = value
            ds.resize(n_new, axis=0)
            ds[n_old:n_new] = block
        table.rows = []

    def truncate_after(self, step: int) -> None:
        """Drop every row (and snapshot) whose step is greater than ``step``."""
        with self._lock:
            self._check_open()
            f = self._flush_locked()
            cuts: dict[str, int] = {}
            for name in _series_groups(f):
                group = f[name]
                if "step" not in group:
                    continue
                steps = group["step"][: _group_length(group)]
                later = np.flatnonzero(steps > step)
                n = int(later[0]) if later.size else steps.shape[0]
                if any(isinstance(ds, h5py.Dataset) and ds.shape[0] != n for ds in group.values()):
                    cuts[name] = n
            if cuts:  # shrinking frees file space: not for an SWMR writer
                self._restructure(lambda g: _cut_series(g, cuts))

    def write_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Replace the checkpoint with ``state`` (nested dicts/lists of arrays, numbers, str).

        Buffered rows are flushed first. The checkpoint is written into the slot that does
        not hold the last one and becomes the last one only when complete, so a crash at any
        moment leaves one whole checkpoint. A checkpoint laid out like the previous ones
        (same keys, dtypes, shapes and string lengths) is written in place, in SWMR mode.
        """
        if not isinstance(state, Mapping):
            raise NoisysimError(f"checkpoint state must be a dict, got {type(state).__name__}")
        plan = _Plan(state)  # every refusal happens here, before the file is touched
        with self._lock:
            self._check_open()
            f = self._flush_locked()
            current = _current_slot(f)
            target = SLOTS[1] if current == SLOTS[0] else SLOTS[0]
            stale = [s for s in SLOTS if s != current and not self._slot_fits(f, s, plan)]
            if stale:
                self._restructure(lambda g: _build_slots(g, stale, plan))
                f = self._file
            _fill_slot(f[CHECKPOINT][target], plan)
            f.flush()  # the slot is on disk before it is named current
            _set_current(f, target)
            _set_text(f.attrs, "updated", _now())
            f.flush()

    def _slot_fits(self, f: h5py.File, slot: str, plan: _Plan) -> bool:
        if slot not in self._slot_specs:  # only this writer changes slots: read them once
            self._slot_specs[slot] = _slot_spec(f, slot)
        return _slot_fits(self._slot_specs[slot], plan)

    def read_checkpoint(self) -> dict | None:
        """The last checkpoint written to this file, or None."""
        with self._lock:
            return _read_checkpoint(self.path, self._check_open())

    @property
    def status(self) -> str:
        return self._status

    def set_status(self, status: str, message: str = "") -> None:
        """Record the run's status (running, completed, diverged, interrupted, failed)."""
        check_choice("status", status, STATUSES)
        with self._lock:
            self._check_open()
            f = self._flush_locked()
            _set_text(f.attrs, "status", status)
            _set_text(f.attrs, "message", message)
            _set_text(f.attrs, "updated", _now())
            f.flush()
            self._status = status

    def close(self) -> None:
        """Flush and close. A run still marked running is marked interrupted."""
        with self._lock:
            if self._file is None:
                return
            self._stop.set()
            try:
                if self._status == "running":
                    self.set_status("interrupted", "writer closed without a final status")
                else:
                    self._flush_locked()
            finally:
                if self._file is not None:  # None if reopening after a change failed
                    self._file.close()
                self._file = None
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> "TrajectoryWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._file is None:
            return
        try:
            if exc is not None and self._status == "running":
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    self.set_status("interrupted", type(exc).__name__)
                else:
                    self.set_status("failed", _one_line(f"{type(exc).__name__}: {exc}")[:1000])
        finally:
            self.close()


def _flush_loop(ref: "weakref.ref[TrajectoryWriter]", stop: threading.Event, tick: float) -> None:
    """Background thread: flush rows that have waited ``flush_seconds`` (no new log needed)."""
    while not stop.wait(tick):
        writer = ref()
        if writer is None:
            return
        with writer._lock:
            if (
                writer._file is not None
                and writer._pending
                and time.monotonic() - writer._last_flush >= writer.flush_seconds
            ):
                try:
                    writer._flush_locked()
                except BaseException as err:  # reported on the writer's next call
                    writer._thread_error = err
                    return
        del writer


def _series_spec(name: str, key: str, example: Any) -> tuple:
    """(dtype, row shape, chunk shape) of a new series ``name/key``."""
    if name == SNAPSHOTS and key != "step":
        dtype, shape = example.dtype, example.shape
        row_bytes = max(1, dtype.itemsize * int(np.prod(shape)))
        return dtype, shape, (max(1, SNAPSHOT_CHUNK_BYTES // row_bytes),) + shape
    return np.dtype(np.int64 if key in INDEX_KEYS else np.float64), (), (SCALAR_CHUNK,)


def _create_series(f: h5py.File, missing: Mapping[str, Mapping[str, tuple]]) -> None:
    """Create groups and series (as long as ``step``, fill values). Not in SWMR mode."""
    for name, specs in missing.items():
        group = f.require_group(name)
        n_old = group["step"].shape[0] if "step" in group else 0
        for key, (dtype, shape, chunk) in specs.items():
            if key in group:
                continue
            group.create_dataset(
                key,
                shape=(n_old,) + shape,
                maxshape=(None,) + shape,
                chunks=chunk,
                dtype=dtype,
                fillvalue=_fill_value(dtype, key),
                **COMPRESSION,
            )


def _cut_series(f: h5py.File, cuts: Mapping[str, int]) -> None:
    for name, n in cuts.items():
        for ds in f[name].values():
            if isinstance(ds, h5py.Dataset) and ds.shape[0] != n:
                ds.resize(n, axis=0)


def _build_slots(f: h5py.File, slots: Sequence[str], plan: _Plan) -> None:
    """Lay out ``slots`` for ``plan`` (creating /checkpoint if needed). Not in SWMR mode."""
    cp = f.require_group(CHECKPOINT)
    if CURRENT not in cp:
        cp.create_dataset(CURRENT, data=np.bytes_(b""), dtype="S1")
    for slot in slots:
        _build_slot(cp, slot, plan)


def _migrate_legacy(path: Path, f: h5py.File) -> None:
    """Rewrite a checkpoint of the first layout into slots (on resume, not in SWMR mode)."""
    try:
        state = _read_checkpoint(path, f)
    except NoisysimError:
        state = None  # no complete one: nothing to keep
    for name in (CHECKPOINT, _CHECKPOINT_NEW):
        if name in f:
            del f[name]
    if state is None:
        return
    plan = _Plan(state)
    _build_slots(f, SLOTS, plan)
    _fill_slot(f[CHECKPOINT][SLOTS[0]], plan)
    f.flush()
    _set_current(f, SLOTS[0])


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


def _repair(path: Path) -> None:
    """Rewrite a file whose writer was killed (flags still say 'open') into a clean copy."""
    tmp = path.with_name(path.name + ".repair-tmp")
    try:
        src = _h5open(path, "r", swmr=True, libver=LIBVER)
    except (OSError, RuntimeError) as err:
        # killed outside SWMR mode (inside a structural change): clear the flags, then the
        # copy below reads every group, so damage still shows up as an error
        if not ("already open" in str(err) and _clear_open_flags(path)):
            raise NoisysimError(
                f"cannot resume {path}: its writer did not close it and it cannot be read "
                f"({_one_line(err)}); try `h5clear -s {path}` (Debian package hdf5-tools)"
            ) from None
        try:
            src = _h5open(path, "r", libver=LIBVER)
        except (OSError, RuntimeError) as err2:
            raise NoisysimError(
                f"cannot resume {path}: its writer was killed while changing its structure "
                f"and it cannot be read ({_one_line(err2)})"
            ) from None
    try:
        with src, _h5open(tmp, "w", libver=LIBVER) as dst:
            for key, value in src.attrs.items():
                if key in MUTABLE_TEXT:  # keep them fixed-length
                    _set_text(dst.attrs, key, _attr_str(src.attrs, key))
                else:
                    dst.attrs[key] = value
            for name in src:
                try:
                    src.copy(src[name], dst, name=name)
                except (OSError, RuntimeError, KeyError) as err:
                    if name not in (CHECKPOINT, _CHECKPOINT_NEW):
                        raise NoisysimError(
                            f"cannot resume {path}: its group {name} is damaged "
                            f"({_one_line(err)})"
                        ) from None
                    if name in dst:  # a half-written checkpoint: leave it behind
                        del dst[name]
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------------------
# reader


class Trajectory:
    """Read-only view of a trajectory file; each call reopens the file (live files work)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with self._open() as f:
            self.format_version = _check_format(self.path, f.attrs)
            self.attrs = {
                key: (value.decode() if isinstance(value, bytes) else value)
                for key, value in f.attrs.items()
            }
        try:
            self.config: dict = json.loads(str(self.attrs["config"]))
        except (KeyError, ValueError) as err:
            raise NoisysimError(
                f"{self.path}: unreadable config attribute ({_one_line(err)})"
            ) from None
        self.status: str = str(self.attrs.get("status", ""))
        self.message: str = str(self.attrs.get("message", ""))
        self.seed: int = int(self.attrs.get("seed", -1))
        self.noisysim_version: str = str(self.attrs.get("noisysim_version", ""))
        self.created: str = str(self.attrs.get("created", ""))
        self.updated: str = str(self.attrs.get("updated", ""))

    def _open(self) -> h5py.File:
        return _open_for_reading(self.path)

    def __repr__(self) -> str:
        return f"Trajectory({str(self.path)!r}, status={self.status!r})"

    def groups(self) -> list[str]:
        """Series groups in the file (train, eval, alignment, snapshots, ...)."""
        with self._open() as f:
            return _series_groups(f)

    def _group(self, f: h5py.File, group: str) -> h5py.Group:
        obj = f.get(group)
        if not isinstance(obj, h5py.Group) or group in (CHECKPOINT, _CHECKPOINT_NEW):
            raise NoisysimError(
                f"{self.path} has no series group {group!r}; it has {', '.join(_series_groups(f))}"
            )
        return obj

    def names(self, group: str) -> list[str]:
        """Series names in ``group``: index keys first, then alphabetical."""
        with self._open() as f:
            g = self._group(f, group)
            names = [k for k, v in g.items() if isinstance(v, h5py.Dataset)]
        first = [k for k in INDEX_KEYS if k in names]
        return first + sorted(k for k in names if k not in INDEX_KEYS)

    def length(self, group: str) -> int:
        with self._open() as f:
            return _group_length(self._group(f, group))

    def series(self, group: str, name: str) -> np.ndarray:
        """One series (rows along axis 0), cut to the rows every series of the group holds."""
        return self.table(group, [name])[name]

    def table(self, group: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Series of ``group`` (all, or those in ``names``) as equally long arrays."""
        with self._open() as f:
            g = self._group(f, group)
            n = _group_length(g)
            have = [k for k, v in g.items() if isinstance(v, h5py.Dataset)]
            for name in names or ():
                if name not in have:
                    raise NoisysimError(
                        f"{self.path} has no series {group}/{name}; {group} has: "
                        f"{', '.join(sorted(have)) or 'nothing'}"
                    )
            return {k: g[k][:n] for k in (have if names is None else names)}

    def final(self, metric: str) -> float:
        """Last recorded value of ``metric`` ("group/name", e.g. "eval/test_accuracy")."""
        group, name = split_metric(metric)
        values = self.series(group, name)
        if values.shape[0] == 0:
            raise NoisysimError(f"{self.path} has no rows in {group} yet (status {self.status})")
        return float(values[-1]) if values.ndim == 1 else values[-1]

    def checkpoint(self) -> dict | None:
        with self._open() as f:
            return _read_checkpoint(self.path, f)

    def describe(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(dataset path, shape, dtype) of every dataset, in file order."""
        out: list[tuple[str, tuple[int, ...], str]] = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                shape = obj.shape if obj.shape is not None else ()
                dtype = "str" if h5py.check_string_dtype(obj.dtype) else str(obj.dtype)
                out.append(("/" + name, tuple(shape), dtype))

        with self._open() as f:
            f.visititems(visit)
        return out


def split_metric(metric: str) -> tuple[str, str]:
    """"eval/test_accuracy" -> ("eval", "test_accuracy")."""
    parts = metric.split("/") if isinstance(metric, str) else []
    if len(parts) != 2 or not all(parts):
        raise NoisysimError(
            f"metric must be 'group/name' such as 'eval/test_accuracy', got {metric!r}"
        )
    return parts[0], parts[1]
