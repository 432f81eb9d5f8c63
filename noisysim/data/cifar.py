"""CIFAR-10 / CIFAR-100 (python pickle tarballs): the published checksums and the loader,
reading the batches from the tarball or an extracted folder with a restricted unpickler."""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from noisysim.errors import NoisysimError, check_choice

from .dataset import Dataset, _finish
from .downloaded import _locate
from .registry import _COMMON, _FILES, register


CIFAR_SOURCES: dict[str, dict] = {
    "cifar10": {
        "tarball": "cifar-10-python.tar.gz",
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        # Published md5 (https://www.cs.toronto.edu/~kriz/cifar.html).
        "checksums": ["md5:c58f30108f718f92721af3b95e74349a"],
    },
    "cifar100": {
        "tarball": "cifar-100-python.tar.gz",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "checksums": ["md5:eb9058c3a382ffc7106e4002c42a8d85"],
    },
}
_CIFAR_MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]
_CIFAR_SOURCE = ("Learning Multiple Layers of Features from Tiny Images, A. Krizhevsky, 2009; "
                 "https://www.cs.toronto.edu/~kriz/cifar.html")


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches contain: builtins and numpy arrays (the official
    files are Python 2 pickles; Python 3 re-pickles add ``_codecs.encode``)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct
        return super().find_class(module, name)


def _unpickle(data: bytes, label: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any failure means a corrupt batch
        raise NoisysimError(f"{label}: not a readable CIFAR batch ({exc}); delete it and "
                            "download it again") from None
    if not isinstance(obj, dict):
        raise NoisysimError(f"{label}: not a CIFAR batch (a {type(obj).__name__}, not a dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


class _CifarSource:
    """Reads members either from an extracted folder or straight from the tarball."""

    def __init__(self, path: Path, folder: str):
        self.path, self.folder = path, folder
        self._tar = None
        if path.is_file():
            try:
                self._tar = tarfile.open(path, "r:*")
            except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
                raise NoisysimError(f"{path}: corrupt or truncated tarball ({exc}); delete it "
                                    "and download it again") from None

    def read(self, member: str) -> dict:
        label = f"{self.path}:{self.folder}/{member}"
        if self._tar is None:
            p = self.path / member
            return _unpickle(p.read_bytes(), str(p))
        try:
            f = self._tar.extractfile(f"{self.folder}/{member}")
            data = f.read() if f is not None else None
        except KeyError:
            data = None
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise NoisysimError(f"{label}: corrupt or truncated tarball ({exc}); delete it "
                                "and download it again") from None
        if data is None:
            raise NoisysimError(f"{label}: member missing from the tarball; delete it and "
                                "download it again")
        return _unpickle(data, label)

    def close(self):
        if self._tar is not None:
            self._tar.close()


def _cifar_arrays(batches: list[dict], label_key: str, label: str, n_classes: int):
    xs, ys = [], []
    for b in batches:
        if "data" not in b or label_key not in b:
            raise NoisysimError(f"{label}: batch lacks 'data' or {label_key!r}")
        x = np.asarray(b["data"])
        y = np.asarray(b[label_key], dtype=np.int64)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(y) != len(x):
            raise NoisysimError(f"{label}: expected uint8 data of shape (n, 3072) and n labels, "
                                f"found {x.dtype} {x.shape} and {len(y)} labels")
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs).reshape(-1, 3, 32, 32)
    y = np.concatenate(ys)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise NoisysimError(f"{label}: labels outside 0..{n_classes - 1}")
    return x, y


#: row layouts: "chw" as the files store them (R plane, G plane, B plane), "hwc" NHWC-flat
#: (pixel by pixel, the layout conv layers read: ``noisysim.layers``)
LAYOUTS = ("chw", "hwc")


def _load_cifar(name, **o) -> Dataset:
    src = CIFAR_SOURCES[name]
    layout = check_choice("layout", o.get("layout", "chw"), LAYOUTS)
    mode = "fine"
    if name == "cifar100":
        mode = check_choice("label_mode", o.get("label_mode", "fine"), ("fine", "coarse"))
    n_classes = 10 if name == "cifar10" else (100 if mode == "fine" else 20)
    label_key = "labels" if name == "cifar10" else f"{mode}_labels"
    members = src["train"] + src["test"] + [src["meta"]]

    def accept(d: Path, f: str) -> Path | None:
        folder = d / src["folder"]
        if all((folder / m).is_file() for m in members):
            return folder
        return d / f if (d / f).is_file() else None

    paths = _locate(name, {src["tarball"]: src["checksums"]}, o, _CIFAR_MIRRORS, accept=accept)
    path = paths[src["tarball"]]
    reader = _CifarSource(path, src["folder"])
    try:
        label = str(path)
        x_train, y_train = _cifar_arrays([reader.read(m) for m in src["train"]], label_key,
                                         label, n_classes)
        x_test, y_test = _cifar_arrays([reader.read(m) for m in src["test"]], label_key,
                                       label, n_classes)
        meta_b = reader.read(src["meta"])
    finally:
        reader.close()
    if layout == "hwc":  # (n, 3, 32, 32) -> (n, 32, 32, 3)
        x_train, x_test = (np.ascontiguousarray(x.transpose(0, 2, 3, 1))
                           for x in (x_train, x_test))
    names_key = "label_names" if name == "cifar10" else f"{mode}_label_names"
    class_names = [n.decode() if isinstance(n, bytes) else str(n)
                   for n in meta_b.get(names_key, [])]
    meta = {
        "source": _CIFAR_SOURCE,
        "license": "no license stated by the authors; cite the technical report",
        "files": {src["tarball"]: str(path)},
        "split": "official train/test split",
        "layout": ("channel-first (3, 32, 32), flattened as R plane, G plane, B plane"
                   if layout == "chw" else
                   "channel-last (32, 32, 3), flattened pixel by pixel (NHWC rows)"),
        "label_mode": mode,
        "class_names": class_names,
    }
    return _finish(name, x_train, y_train, x_test, y_test, opts=o, n_classes=n_classes,
                   unit_scale=255.0, meta=meta)


register("cifar10", _COMMON + _FILES + ("layout",),
         dict(normalize="unit", download=True, layout="chw"),
         "CIFAR-10 32x32x3, 10 classes (python pickle tarball)")(_load_cifar)
register("cifar100", _COMMON + _FILES + ("label_mode", "layout"),
         dict(normalize="unit", download=True, label_mode="fine", layout="chw"),
         "CIFAR-100 32x32x3, 100 fine / 20 coarse classes (python pickle tarball)")(_load_cifar)
