"""IDX files (MNIST, Fashion-MNIST): the format, the published checksums, the loader."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from noisysim.errors import NoisysimError

from .dataset import Dataset, _finish
from .downloaded import _locate
from .registry import _COMMON, _FILES, register


_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=f) as g:
                    return g.read()
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise NoisysimError(
            f"{path}: corrupt or truncated gzip file ({exc}); delete it and download it "
            "again, or replace it with the official file"
        ) from None


def read_idx(source: str | os.PathLike | bytes) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0x00 0x00 <type> <ndim>, then ndim
    big-endian uint32 sizes, then the big-endian data. Returns a native-endian array."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        label, raw = "IDX data", bytes(source)
        if raw[:2] == b"\x1f\x8b":
            try:
                raw = gzip.decompress(raw)
            except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
                raise NoisysimError(f"IDX data: corrupt or truncated gzip data ({exc})") from None
    else:
        label = str(source)
        raw = _read_maybe_gzip(Path(source))
    if len(raw) < 4:
        raise NoisysimError(f"{label}: truncated IDX file ({len(raw)} bytes, no header)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise NoisysimError(
            f"{label}: not an IDX file (magic bytes {raw[:4].hex()}, expected 0000 followed by "
            f"a type code in {{{', '.join(f'{t:02x}' for t in _IDX_TYPES)}}} and the rank)"
        )
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise NoisysimError(
            f"{label}: truncated IDX header (rank {ndim} needs {header} bytes, found {len(raw)})"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - header
    if have < need:
        raise NoisysimError(
            f"{label}: truncated IDX file: header declares shape {dims} ({need} data bytes), "
            f"found {have}; delete it and download it again"
        )
    if have > need:
        raise NoisysimError(
            f"{label}: corrupt IDX file: {have - need} bytes after the {need} data bytes that "
            f"shape {dims} declares"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=need // dtype.itemsize, offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzipped when the name ends in .gz or ``compress``)."""
    path = Path(path)
    a = np.asarray(array)
    codes = {np.dtype(v.newbyteorder("=")): k for k, v in _IDX_TYPES.items()}
    code = codes.get(np.dtype(a.dtype.newbyteorder("=")))
    if code is None:
        raise NoisysimError(f"write_idx: dtype {a.dtype} has no IDX type code")
    if a.ndim > 255:
        raise NoisysimError(f"write_idx: rank {a.ndim} exceeds 255")
    data = (bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
            + np.ascontiguousarray(a, dtype=_IDX_TYPES[code]).tobytes())
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

# Per set: default mirrors, accepted checksums per file ("algo:hex", any may match),
# provenance and class names.
IDX_SOURCES: dict[str, dict] = {
    "mnist": {
        "mirrors": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ],
        # Published md5 of the official gzipped files (yann.lecun.com/exdb/mnist).
        "checksums": {
            "train-images-idx3-ubyte.gz": ["md5:f68b3c2dcbeaaa9fbdd348bbdeb94873"],
            "train-labels-idx1-ubyte.gz": ["md5:d53e105ee54ea40749a09fcbcd1e9432"],
            "t10k-images-idx3-ubyte.gz": ["md5:9fb629c4189551a2d022fa330f9573f3"],
            "t10k-labels-idx1-ubyte.gz": ["md5:ec29112dd5afa0611ce80d1b7f02629c"],
        },
        "source": "MNIST database, Y. LeCun, C. Cortes, C. J. C. Burges, "
        "http://yann.lecun.com/exdb/mnist/",
        "license": "CC BY-SA 3.0 (as stated by the authors)",
        "class_names": [str(i) for i in range(10)],
    },
    "fashion-mnist": {
        "mirrors": [
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ],
        # md5: published by Zalando Research (github.com/zalandoresearch/fashion-mnist README).
        # sha256: the files of Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1, which
        # were re-gzipped (same IDX payload, different .gz bytes), so a mirror of the Debian
        # files is accepted too.
        "checksums": {
            "train-images-idx3-ubyte.gz": [
                "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "sha256:b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"],
            "train-labels-idx1-ubyte.gz": [
                "md5:25c81989df183df01b3e8a0aad5dffbe",
                "sha256:0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"],
            "t10k-images-idx3-ubyte.gz": [
                "md5:bef4ecab320f06d8554ea6380940ec79",
                "sha256:cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"],
            "t10k-labels-idx1-ubyte.gz": [
                "md5:bb300cfdad3c16e7a12a480ee83cd310",
                "sha256:8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"],
        },
        "source": "Fashion-MNIST, H. Xiao, K. Rasul, R. Vollgraf (Zalando Research), 2017, "
        "arXiv:1708.07747, https://github.com/zalandoresearch/fashion-mnist",
        "license": "MIT (Copyright (c) 2017 Zalando SE)",
        "class_names": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                        "Shirt", "Sneaker", "Bag", "Ankle boot"],
    },
}


def _accept_idx(d: Path, f: str) -> Path | None:
    """The gzipped file, or an uncompressed copy without the .gz suffix."""
    for p in (d / f, d / f.removesuffix(".gz")):
        if p.is_file():
            return p
    return None


def _idx_pair(img_path: Path, lab_path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(img_path), read_idx(lab_path)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise NoisysimError(f"{img_path}: expected uint8 images of rank 3, found {x.dtype} "
                            f"with shape {x.shape}")
    if y.ndim != 1 or y.dtype != np.uint8:
        raise NoisysimError(f"{lab_path}: expected uint8 labels of rank 1, found {y.dtype} "
                            f"with shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise NoisysimError(f"{img_path} holds {x.shape[0]} images but {lab_path} holds "
                            f"{y.shape[0]} labels; the files do not belong together")
    if y.size and int(y.max()) >= n_classes:
        raise NoisysimError(f"{lab_path}: label {int(y.max())} out of range 0..{n_classes - 1}")
    return x, y


def _load_idx_set(name, **o) -> Dataset:
    src = IDX_SOURCES[name]
    paths = _locate(name, src["checksums"], o, src["mirrors"], accept=_accept_idx)
    tr_img, tr_lab, te_img, te_lab = (paths[f] for f in _IDX_FILES)
    x_train, y_train = _idx_pair(tr_img, tr_lab, 10)
    x_test, y_test = _idx_pair(te_img, te_lab, 10)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise NoisysimError(f"{name}: train images are {x_train.shape[1:]}, test images "
                            f"{x_test.shape[1:]}; the files do not belong together")
    meta = {
        "source": src["source"],
        "license": src["license"],
        "files": {f: str(p) for f, p in paths.items()},
        "split": "official train/test split",
        "class_names": list(src["class_names"]),
    }
    return _finish(name, x_train, y_train, x_test, y_test, opts=o, n_classes=10,
                   unit_scale=255.0, meta=meta)


for _name, _desc in (("mnist", "MNIST handwritten digits 28x28 (IDX files)"),
                     ("fashion-mnist", "Fashion-MNIST 28x28 (IDX files; Debian package)")):
    register(_name, _COMMON + _FILES, dict(normalize="unit", download=True), _desc)(
        _load_idx_set)
