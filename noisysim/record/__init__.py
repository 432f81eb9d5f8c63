"""Trajectory files: one HDF5 file per training run (format in docs/trajectory-format.md).

The writer buffers rows in memory and appends them in bulk; the file is in HDF5 SWMR mode
from right after its creation, so a writer killed at any moment (SIGKILL, power cut of the
process, out-of-memory killer) leaves a file that still opens and holds everything up to the
last flush. Readers of a file that is being written, or whose writer died, open it in SWMR
read mode; ``Trajectory`` does that by itself.

    TrajectoryWriter(path, config, seed, mode="new"|"overwrite"|"resume")
        .log(group, row)            one row of scalars, row["step"] required
        .snapshot(step, params)     parameter arrays, e.g. {"W_0": ..., "b_0": ...}
        .write_checkpoint(state)    nested dict of arrays / scalars / strings (replaces the last)
        .read_checkpoint()          -> the same nested dict, or None
        .truncate_after(step)       drop rows logged after ``step`` (resume from a checkpoint)
        .set_status(status, message)
        .flush(), .close()          (also a context manager)
    Trajectory(path)                read-only view: .config .status .series() .final() ...

The modules, one concern each:

    file.py        the format (names, attributes), creating, opening to read, opening to
                   resume, reopening for structural changes, repairing a killed writer's file
    writer.py      TrajectoryWriter: row buffering, the flush thread, series, status
    checkpoint.py  checkpoints: nested dicts <-> two slots overwritten in place
    reader.py      Trajectory
"""

from noisysim.record.checkpoint import CURRENT, MANIFEST, SLOTS
from noisysim.record.file import (
    CHECKPOINT,
    FORMAT,
    FORMAT_VERSION,
    INDEX_KEYS,
    INT_FILL,
    LIBVER,
    MUTABLE_TEXT,
    SNAPSHOTS,
    STANDARD_GROUPS,
    STATUSES,
    config_to_json,
)
from noisysim.record.reader import Trajectory, split_metric
from noisysim.record.writer import (
    COMPRESSION,
    MAX_BUFFER_BYTES,
    MODES,
    SCALAR_CHUNK,
    SNAPSHOT_CHUNK_BYTES,
    TrajectoryWriter,
)

__all__ = [
    "TrajectoryWriter",
    "Trajectory",
    "split_metric",
    "config_to_json",
    "FORMAT",
    "FORMAT_VERSION",
    "STATUSES",
    "MODES",
    "STANDARD_GROUPS",
    "SNAPSHOTS",
    "CHECKPOINT",
    "SLOTS",
    "CURRENT",
    "MANIFEST",
    "INDEX_KEYS",
    "INT_FILL",
    "LIBVER",
    "MUTABLE_TEXT",
    "COMPRESSION",
    "SCALAR_CHUNK",
    "SNAPSHOT_CHUNK_BYTES",
    "MAX_BUFFER_BYTES",
]
