"""Reading a recorded trace for fitting: .npy, .csv/.txt, or an HDF5 dataset.

``read_trace(spec, column=None)`` returns the samples as a (T, D) float64 array (T samples
of D devices, one column each) and a provenance dict (file, dataset, column, sha256 of the
file's bytes). Everything a fit cannot use is refused here with one line naming the
problem: a missing file, dataset or column, a wrong shape, non-finite or constant samples.
"""

from __future__ import annotations

import csv
import hashlib
import os

import numpy as np

from ..errors import NoisysimError

__all__ = ["read_trace", "check_samples", "file_sha256"]

_HDF5_EXT = (".h5", ".hdf5")


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes (identifies the recording a fit came from)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _split_spec(spec: str) -> tuple[str, str | None]:
    """``file.h5:/group/data`` -> (file.h5, /group/data); other paths have no dataset."""
    for ext in _HDF5_EXT:
        i = spec.lower().find(ext + ":")
        if i >= 0:
            return spec[:i + len(ext)], spec[i + len(ext) + 1:] or None
    return spec, None


def read_trace(spec, column: str | None = None) -> tuple[np.ndarray, dict]:
    """The samples of ``spec`` as (T, D) float64 and where they came from.

    spec: ``trace.npy`` (1-D: one device; 2-D: one column per device), ``trace.csv`` /
    ``trace.txt`` (comma, tab or space separated; a header row names the columns),
    ``file.h5:/dataset`` (1-D or 2-D). column: the name of one CSV column (header) to fit.
    """
    spec = os.fspath(spec)
    path, dataset = _split_spec(spec)
    if not os.path.isfile(path):
        raise NoisysimError(f"trace file {path!r} does not exist; give a .npy, .csv/.txt or "
                            "file.h5:/dataset")
    ext = os.path.splitext(path)[1].lower()
    if ext in _HDF5_EXT:
        data = _read_hdf5(path, dataset)
    elif dataset is not None:
        raise NoisysimError(f"trace {spec!r}: only HDF5 files (.h5/.hdf5) have datasets")
    elif ext == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise NoisysimError(f"trace file {path!r} is not a readable .npy: "
                                f"{' '.join(str(exc).split())}") from None
    elif ext in (".csv", ".txt", ".dat", ".tsv"):
        data = _read_text(path, column)
    else:
        raise NoisysimError(f"trace file {path!r}: unsupported format {ext!r}; use .npy, "
                            ".csv/.txt or file.h5:/dataset")
    if column is not None and ext not in (".csv", ".txt", ".dat", ".tsv"):
        raise NoisysimError(f"--column {column!r} applies to CSV/text traces with a header "
                            f"row; {path!r} is {ext}")
    where = spec if column is None else f"{spec} column {column!r}"
    samples = check_samples(data, where)
    info = {"file": os.path.abspath(path), "dataset": dataset, "column": column,
            "sha256": file_sha256(path)}
    return samples, info


def _read_hdf5(path: str, dataset: str | None) -> np.ndarray:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise NoisysimError(f"trace file {path!r} is not a readable HDF5 file: "
                            f"{' '.join(str(exc).split())}") from None
    with f:
        names: list[str] = []
        f.visititems(lambda n, o: names.append("/" + n) if isinstance(o, h5py.Dataset) else None)
        obj = f.get(dataset) if dataset else None
        if not isinstance(obj, h5py.Dataset):
            what = f"no dataset {dataset!r}" if dataset else "no dataset named"
            raise NoisysimError(
                f"trace file {path!r}: {what}; it has {', '.join(names[:10]) or 'none'}; "
                f"write {path}:/NAME")
        return obj[()]


def _read_text(path: str, column: str | None) -> np.ndarray:
    with open(path, newline="") as f:
        text = f.read()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise NoisysimError(f"trace file {path!r} holds no samples")
    delim = "," if "," in lines[0] else ("\t" if "\t" in lines[0] else None)
    rows = list(csv.reader(lines, delimiter=delim)) if delim else [ln.split() for ln in lines]
    header = None
    try:
        float(rows[0][0])
    except ValueError:
        header = [h.strip() for h in rows[0]]
        rows = rows[1:]
    if column is not None:
        if header is None or column not in header:
            have = ", ".join(map(repr, header)) if header else "no header row"
            raise NoisysimError(f"trace file {path!r} has no column {column!r} (columns: "
                                f"{have}); pass one of them to --column")
        idx = [header.index(column)]
    else:
        idx = list(range(len(rows[0]) if rows else 0))
    try:
        return np.array([[float(r[i]) for i in idx] for r in rows], dtype=np.float64)
    except (ValueError, IndexError):
        for n, r in enumerate(rows):
            try:
                [float(r[i]) for i in idx]
            except (ValueError, IndexError):
                raise NoisysimError(f"trace file {path!r}: row {n + 1 + (header is not None)} "
                                    f"is not {len(idx)} number(s): {','.join(r)[:60]!r}"
                                    ) from None
        raise  # pragma: no cover


def check_samples(data, where: str = "trace") -> np.ndarray:
    """``data`` as a (T, D) float64 array: numeric, 1-D or 2-D (time along axis 0), finite,
    and not constant in any column."""
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise NoisysimError(f"trace {where} must be numeric, got {np.asarray(data).dtype}") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise NoisysimError(f"trace {where} must be 1-D (one device) or 2-D (samples x "
                            f"devices), got shape {arr.shape}")
    if arr.shape[1] > arr.shape[0]:
        raise NoisysimError(f"trace {where} has shape {arr.shape}: more devices than samples; "
                            "time must run along the first axis (transpose it)")
    bad = np.argwhere(~np.isfinite(arr))
    if bad.size:
        t, d = bad[0]
        raise NoisysimError(f"trace {where} contains {float(arr[t, d])!r} at sample {t} (device {d}; "
                            f"{len(bad)} non-finite samples); clean the recording first")
    const = np.flatnonzero(np.ptp(arr, axis=0) == 0)
    if const.size:
        raise NoisysimError(f"trace {where}: device {int(const[0])} is constant "
                            f"({float(arr[0, const[0]])!r}); there is no noise to fit")
    return np.ascontiguousarray(arr)
