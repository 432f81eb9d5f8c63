"""Trajectory: the read-only view of a trajectory file (series, tables, checkpoint)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from noisysim.errors import NoisysimError, one_line
from noisysim.record.checkpoint import read_checkpoint
from noisysim.record.file import (
    INDEX_KEYS,
    NOT_SERIES,
    check_format,
    group_length,
    open_for_reading,
    series_groups,
)


class Trajectory:
    """Read-only view of a trajectory file; each call reopens the file (live files work)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with self._open() as f:
            self.format_version = check_format(self.path, f.attrs)
            self.attrs = {
                key: (value.decode() if isinstance(value, bytes) else value)
                for key, value in f.attrs.items()
            }
        try:
            self.config: dict = json.loads(str(self.attrs["config"]))
        except (KeyError, ValueError) as err:
            raise NoisysimError(
                f"{self.path}: unreadable config attribute ({one_line(err)})"
            ) from None
        self.status: str = str(self.attrs.get("status", ""))
        self.message: str = str(self.attrs.get("message", ""))
        self.seed: int = int(self.attrs.get("seed", -1))
        self.noisysim_version: str = str(self.attrs.get("noisysim_version", ""))
        self.created: str = str(self.attrs.get("created", ""))
        self.updated: str = str(self.attrs.get("updated", ""))

    def _open(self) -> h5py.File:
        return open_for_reading(self.path)

    def __repr__(self) -> str:
        return f"Trajectory({str(self.path)!r}, status={self.status!r})"

    def groups(self) -> list[str]:
        """Series groups in the file (train, eval, alignment, snapshots, ...)."""
        with self._open() as f:
            return series_groups(f)

    def _group(self, f: h5py.File, group: str) -> h5py.Group:
        obj = f.get(group)
        if not isinstance(obj, h5py.Group) or group in NOT_SERIES:
            raise NoisysimError(
                f"{self.path} has no series group {group!r}; it has {', '.join(series_groups(f))}"
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
            return group_length(self._group(f, group))

    def series(self, group: str, name: str) -> np.ndarray:
        """One series (rows along axis 0), cut to the rows every series of the group holds."""
        return self.table(group, [name])[name]

    def table(self, group: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Series of ``group`` (all, or those in ``names``) as equally long arrays."""
        with self._open() as f:
            g = self._group(f, group)
            n = group_length(g)
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
            return read_checkpoint(self.path, f)

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
