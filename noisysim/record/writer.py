"""TrajectoryWriter: rows buffered in memory and appended in bulk, a flush thread, status.

An SWMR writer may only write into existing datasets and extend them: creating, deleting,
moving or shrinking objects is not supported (deleting crashed HDF5). So the rare
structural changes (a new series or group, a checkpoint with a new layout, truncate_after)
close the file, make the change with the file opened normally and reopen it in SWMR mode
(``TrajectoryWriter._restructure``).
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping

import h5py
import numpy as np

from noisysim.errors import NoisysimError, check_choice, one_line
from noisysim.record import checkpoint as _cp
from noisysim.record.file import (
    CHECKPOINT,
    INDEX_KEYS,
    INT_FILL,
    NOT_SERIES,
    SNAPSHOTS,
    STATUSES,
    attr_str,
    check_name,
    create,
    group_length,
    now,
    open_for_resume,
    reopen,
    series_groups,
    set_text,
)

MODES = ("new", "overwrite", "resume")
COMPRESSION = dict(compression="gzip", compression_opts=4, shuffle=True)
SCALAR_CHUNK = 4096  # rows per chunk of a scalar series (32 KiB of float64)
SNAPSHOT_CHUNK_BYTES = 1 << 18  # aim for chunks of about 256 KiB of snapshots
MAX_BUFFER_BYTES = 1 << 26  # buffered snapshots beyond 64 MiB are written at once


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
        self._slot_specs: dict[str, Any] = {}  # checkpoint slot -> slot_spec, read lazily
        if mode == "resume":
            self._file = open_for_resume(self.path, config, seed)
        else:
            if config is None or seed is None:
                raise NoisysimError(f"mode {mode!r} needs a config and a seed")
            self._file = create(self.path, config, seed, overwrite=(mode == "overwrite"))
        self.config: dict = json.loads(attr_str(self._file.attrs, "config"))
        self.seed: int = int(self._file.attrs["seed"])
        self._status = attr_str(self._file.attrs, "status")
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_flush_loop,
            args=(weakref.ref(self), self._stop, min(1.0, self.flush_seconds / 4)),
            name=f"noisysim-flush-{self.path.name}",
            daemon=True,
        )
        self._thread.start()

    def _reopen(self, swmr: bool) -> h5py.File:
        f, self._unlocked = reopen(self.path, swmr, self._unlocked)
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
            raise NoisysimError(f"writing {self.path} failed in the background: {one_line(err)}")
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
            check_name("trajectory group", group)
            if group == SNAPSHOTS or group in NOT_SERIES:
                raise NoisysimError(
                    f"group {group!r} is reserved; use snapshot() / write_checkpoint()"
                )
            if "step" not in row:
                raise NoisysimError(f"trajectory rows need a 'step'; {group} row has {sorted(row)}")
            clean = {}
            for key, value in row.items():
                check_name(f"trajectory series name in {group}", key)
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
                check_name("snapshot name", name)
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
        set_text(f.attrs, "updated", now())
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
            for name in series_groups(f):
                group = f[name]
                if "step" not in group:
                    continue
                steps = group["step"][: group_length(group)]
                later = np.flatnonzero(steps > step)
                n = int(later[0]) if later.size else steps.shape[0]
                if any(isinstance(ds, h5py.Dataset) and ds.shape[0] != n for ds in group.values()):
                    cuts[name] = n
            if cuts:  # shrinking frees file space: not for an SWMR writer
                self._restructure(lambda g: _cut_series(g, cuts))

    # -- checkpoints --------------------------------------------------------------------

    def write_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Replace the checkpoint with ``state`` (nested dicts/lists of arrays, numbers, str).

        Buffered rows are flushed first. The checkpoint is written into the slot that does
        not hold the last one and becomes the last one only when complete, so a crash at any
        moment leaves one whole checkpoint. A checkpoint laid out like the previous ones
        (same keys, dtypes, shapes and string lengths) is written in place, in SWMR mode.
        """
        if not isinstance(state, Mapping):
            raise NoisysimError(f"checkpoint state must be a dict, got {type(state).__name__}")
        plan = _cp.Plan(state)  # every refusal happens here, before the file is touched
        with self._lock:
            self._check_open()
            f = self._flush_locked()
            current = _cp.current_slot(f)
            target = _cp.SLOTS[1] if current == _cp.SLOTS[0] else _cp.SLOTS[0]
            stale = [s for s in _cp.SLOTS if s != current and not self._slot_fits(f, s, plan)]
            if stale:
                self._restructure(lambda g: _cp.build_slots(g, stale, plan))
                f = self._file
            _cp.fill_slot(f[CHECKPOINT][target], plan)
            f.flush()  # the slot is on disk before it is named current
            _cp.set_current(f, target)
            set_text(f.attrs, "updated", now())
            f.flush()

    def _slot_fits(self, f: h5py.File, slot: str, plan: _cp.Plan) -> bool:
        if slot not in self._slot_specs:  # only this writer changes slots: read them once
            self._slot_specs[slot] = _cp.slot_spec(f, slot)
        return _cp.slot_fits(self._slot_specs[slot], plan)

    def read_checkpoint(self) -> dict | None:
        """The last checkpoint written to this file, or None."""
        with self._lock:
            return _cp.read_checkpoint(self.path, self._check_open())

    # -- status and closing -------------------------------------------------------------

    @property
    def status(self) -> str:
        return self._status

    def set_status(self, status: str, message: str = "") -> None:
        """Record the run's status (running, completed, diverged, interrupted, failed)."""
        check_choice("status", status, STATUSES)
        with self._lock:
            self._check_open()
            f = self._flush_locked()
            set_text(f.attrs, "status", status)
            set_text(f.attrs, "message", message)
            set_text(f.attrs, "updated", now())
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
                    self.set_status("failed", one_line(f"{type(exc).__name__}: {exc}")[:1000])
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
