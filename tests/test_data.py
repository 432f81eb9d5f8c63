"""Tests of noisysim.data: offline, on generated files and the shipped digits.

No test touches the internet: an autouse fixture makes urlopen refuse every URL that is not
file:// or 127.0.0.1, and every test gets empty private data/cache folders.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import math
import pickle
import struct
import tarfile
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noisysim import data
from noisysim.data import Dataset, load_dataset, read_idx, write_idx
from noisysim.errors import NoisysimError

IDX_NAMES = data.idx._IDX_FILES


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    real = urllib.request.urlopen

    def guarded(req, *args, **kwargs):
        url = req.full_url if isinstance(req, urllib.request.Request) else str(req)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "file" and parts.hostname not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"test tried to reach the network: {url}")
        return real(req, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Private NOISYSIM_DATA and NOISYSIM_CACHE; no Debian folder, no mirror."""
    d = {"data": tmp_path / "data", "cache": tmp_path / "cache", "tmp": tmp_path}
    d["data"].mkdir()
    monkeypatch.setenv("NOISYSIM_DATA", str(d["data"]))
    monkeypatch.setenv("NOISYSIM_CACHE", str(d["cache"]))
    monkeypatch.delenv("NOISYSIM_MIRROR", raising=False)
    monkeypatch.setattr(data.downloaded, "_DEBIAN_DATASETS", tmp_path / "no-debian")
    return d


@pytest.fixture
def server():
    """Serve folders over http on 127.0.0.1; yields a function folder -> base URL."""
    servers = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    def serve(folder: Path) -> str:
        httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/"

    yield serve
    for s in servers:
        s.shutdown()
        s.server_close()


# ----------------------------------------------------------------------------- helpers


def fake_images(n: int, shape=(28, 28), offset: int = 0) -> np.ndarray:
    """uint8 images whose first two pixels encode their index (rows are all distinct)."""
    g = np.random.default_rng(n + offset)  # test data only; the library never uses np.random
    x = g.integers(0, 256, size=(n,) + shape, dtype=np.uint8)
    idx = np.arange(offset, offset + n)
    flat = x.reshape(n, -1)
    flat[:, 0] = idx % 256
    flat[:, 1] = idx // 256
    return x


def make_idx_set(folder: Path, n_train=60, n_test=20, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": fake_images(n_train),
        "train-labels-idx1-ubyte.gz": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": fake_images(n_test, offset=1000),
        "t10k-labels-idx1-ubyte.gz": ((np.arange(n_test) * 3) % 10).astype(np.uint8),
    }
    for name, a in arrays.items():
        write_idx(folder / (name if gz else name[:-3]), a)
    return arrays


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _py2_pickle(obj: dict) -> bytes:
    """Pickle a dict the way Python 2's cPickle (protocol 2) wrote the official CIFAR batches:
    str as BINSTRING (bytes under encoding="bytes"), arrays via numpy.core.multiarray."""

    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else (
            b"T" + struct.pack("<I", len(b)) + b)

    def value(v) -> bytes:
        if isinstance(v, bytes):
            return s(v)
        if isinstance(v, int):
            return b"J" + struct.pack("<i", v)
        if isinstance(v, list):
            return b"](" + b"".join(value(e) for e in v) + b"e"
        assert isinstance(v, np.ndarray) and v.dtype == np.uint8
        shape = b"".join(b"J" + struct.pack("<i", d) for d in v.shape)
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b")
                + b"\x87R(K\x01(" + shape + b"t"
                + b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R(K\x03" + s(b"|")
                + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
                + b"\x89" + s(np.ascontiguousarray(v).tobytes()) + b"tb")

    body = b"".join(s(k) + value(v) for k, v in obj.items())
    return b"\x80\x02}(" + body + b"u."


def _pickled(obj) -> bytes:
    blob = _py2_pickle(obj)
    back = pickle.loads(blob, encoding="bytes")  # the helper itself must be right
    assert back.keys() == obj.keys()
    return blob


def make_cifar_tarball(path: Path, kind="cifar10", per_batch=8, n_test=6, extract_to=None):
    """A CIFAR-style python tarball: bytes keys, uint8 (n, 3072) data, list labels."""
    src = data.CIFAR_SOURCES[kind]
    members, truth = {}, {"train_x": [], "train_y": [], "train_c": []}
    g = np.random.default_rng(7)
    for m in src["train"]:
        x = g.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        if kind == "cifar10":
            y = [int(v) for v in g.integers(0, 10, per_batch)]
            members[m] = {b"batch_label": b"training batch", b"labels": y, b"data": x}
        else:
            y = [int(v) for v in g.integers(0, 100, per_batch)]
            c = [v // 5 for v in y]
            members[m] = {b"fine_labels": y, b"coarse_labels": c, b"data": x}
            truth["train_c"].append(c)
        truth["train_x"].append(x)
        truth["train_y"].append(y)
    xt = g.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    if kind == "cifar10":
        yt = [int(v) for v in g.integers(0, 10, n_test)]
        members["test_batch"] = {b"labels": yt, b"data": xt}
        members["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    else:
        yt = [int(v) for v in g.integers(0, 100, n_test)]
        members["test"] = {b"fine_labels": yt, b"coarse_labels": [v // 5 for v in yt],
                           b"data": xt}
        members["meta"] = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                           b"coarse_label_names": [f"k{i}".encode() for i in range(20)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for m, obj in members.items():
            blob = _pickled(obj)
            info = tarfile.TarInfo(f"{src['folder']}/{m}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    if extract_to is not None:
        folder = extract_to / src["folder"]
        folder.mkdir(parents=True)
        for m, obj in members.items():
            (folder / m).write_bytes(_pickled(obj))
    truth = {
        "x_train": np.concatenate(truth["train_x"]), "y_train": np.concatenate(truth["train_y"]),
        "x_test": xt, "y_test": np.asarray(yt),
        "c_train": np.concatenate(truth["train_c"]) if truth["train_c"] else None,
    }
    return truth


# ----------------------------------------------------------------------------- IDX format


_IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(_IDX_DTYPES),
       shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
       gz=st.booleans(), data_=st.data())
def test_idx_roundtrip(tmp_path_factory, dtype, shape, gz, data_):
    n = int(np.prod(shape))
    vals = data_.draw(st.lists(st.integers(-100, 100), min_size=n, max_size=n))
    a = np.asarray(vals).astype(dtype).reshape(shape)
    p = tmp_path_factory.mktemp("idx") / ("a.idx.gz" if gz else "a.idx")
    write_idx(p, a)
    b = read_idx(p)
    assert b.dtype == np.dtype(dtype) and b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(read_idx(p.read_bytes()), a)


def test_idx_header_is_big_endian(tmp_path):
    p = write_idx(tmp_path / "x.idx", np.array([[1, 2, 3]], dtype=np.int32))
    raw = p.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0C, 2])
    assert raw[4:12] == (1).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert raw[12:16] == (1).to_bytes(4, "big")


def test_idx_errors(tmp_path):
    good = gzip.decompress(gzip.compress(
        bytes([0, 0, 8, 2]) + (3).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes(6)))
    assert read_idx(good).shape == (3, 2)
    cases = {
        "truncated.idx": (good[:-1], "truncated IDX file"),
        "trailing.idx": (good + b"\x00", "corrupt IDX file"),
        "magic.idx": (b"\x01\x02" + good[2:], "not an IDX file"),
        "header.idx": (good[:6], "truncated IDX header"),
        "tiny.idx": (b"\x00", "no header"),
        "cut.gz": (gzip.compress(good)[:-12], "truncated gzip"),
    }
    for fname, (blob, words) in cases.items():
        p = tmp_path / fname
        p.write_bytes(blob)
        with pytest.raises(NoisysimError, match=words) as err:
            read_idx(p)
        assert fname in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- MNIST-style


def test_idx_dataset_from_noisysim_data(dirs):
    arrays = make_idx_set(dirs["data"] / "mnist")
    ds = load_dataset("mnist")
    assert isinstance(ds, Dataset) and ds.name == "mnist"
    assert ds.x_train.shape == (60, 784) and ds.x_train.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.n_classes == 10 and ds.input_shape == (784,)
    np.testing.assert_array_equal(ds.x_train * np.float32(255),
                                  arrays["train-images-idx3-ubyte.gz"].reshape(60, -1))
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte.gz"])
    assert ds.meta["files"]["t10k-images-idx3-ubyte.gz"].startswith(str(dirs["data"]))
    assert not ds.x_train.flags.writeable
    with pytest.raises(ValueError):
        ds.x_train[0, 0] = 1.0

    img = load_dataset("mnist", flatten=False, normalize="none", dtype="float64", n_train=10,
                       n_test=5)
    assert img.x_train.shape == (10, 28, 28) and img.input_shape == (28, 28)
    assert img.x_train.dtype == np.float64 and img.x_test.shape == (5, 28, 28)
    np.testing.assert_array_equal(img.x_train, arrays["train-images-idx3-ubyte.gz"][:10])


def test_uncompressed_idx_and_data_dir(dirs):
    arrays = make_idx_set(dirs["tmp"] / "elsewhere", n_train=12, n_test=4, gz=False)
    ds = load_dataset("fashion-mnist", data_dir=dirs["tmp"] / "elsewhere", normalize="none")
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte.gz"])
    assert ds.meta["class_names"][9] == "Ankle boot"


def test_idx_inconsistent_files(dirs):
    folder = dirs["data"] / "mnist"
    make_idx_set(folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    with pytest.raises(NoisysimError, match="do not belong together"):
        load_dataset("mnist")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(60, 10, np.uint8))
    with pytest.raises(NoisysimError, match="out of range"):
        load_dataset("mnist")


def test_missing_data_error(dirs):
    with pytest.raises(NoisysimError) as err:
        load_dataset("mnist", download=False)
    msg = str(err.value)
    assert "NOISYSIM_DATA" in msg and str(dirs["cache"] / "mnist") in msg and "\n" not in msg
    assert "train-images-idx3-ubyte.gz" in msg
    # Download allowed but the mirror has nothing: tells where to place the files.
    empty = dirs["tmp"] / "empty-mirror"
    empty.mkdir()
    with pytest.raises(NoisysimError, match="place the files") as err:
        load_dataset("mnist", mirror=str(empty))  # a plain folder works as a mirror
    assert str(dirs["cache"] / "mnist") in str(err.value)
    assert not list((dirs["cache"] / "mnist").iterdir())


def test_download_from_local_server_then_cache(dirs, server, monkeypatch):
    served = dirs["tmp"] / "served"
    arrays = make_idx_set(served, n_train=30, n_test=10)
    sums = {f: [f"md5:{md5(served / f)}"] for f in IDX_NAMES}
    monkeypatch.setitem(data.IDX_SOURCES["mnist"], "checksums", sums)
    base = server(served)
    ds = load_dataset("mnist", mirror=base, normalize="none")
    cache = dirs["cache"] / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(IDX_NAMES)
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte.gz"])
    # Second load: from the cache, with no network allowed.
    ds2 = load_dataset("mnist", normalize="none", download=False)
    assert ds2.meta["files"]["train-images-idx3-ubyte.gz"] == str(cache / IDX_NAMES[0])
    np.testing.assert_array_equal(ds2.x_test, ds.x_test)


def test_download_checksum_mismatch_leaves_nothing(dirs, server):
    served = dirs["tmp"] / "served"
    make_idx_set(served)  # not the official files: the published md5s cannot match
    base = server(served)
    with pytest.raises(NoisysimError) as err:
        load_dataset("mnist", mirror=base)
    msg = str(err.value)
    assert "checksum mismatch" in msg and "train-images-idx3-ubyte.gz" in msg
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg  # expected (published)
    assert md5(served / "train-images-idx3-ubyte.gz") in msg  # found
    assert "\n" not in msg
    assert list((dirs["cache"] / "mnist").iterdir()) == []


def test_download_file_direct(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"noisysim" * 1000)
    dest = tmp_path / "out" / "file.bin"
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert data.download_file(src.as_uri(), dest, ["md5:" + "0" * 32, "sha256:" + sha]) == dest
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(NoisysimError, match="checksum mismatch"):
        data.download_file(src.as_uri(), tmp_path / "out" / "bad.bin", ["md5:" + "0" * 32])
    with pytest.raises(OSError):
        data.download_file((tmp_path / "absent").as_uri(), tmp_path / "out" / "x.bin",
                           ["md5:" + "0" * 32])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file.bin"]
    with pytest.raises(NoisysimError, match="checksum must look like"):
        data.download_file(src.as_uri(), dest, ["crc:1234"])


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_tarball_in_cache(dirs):
    truth = make_cifar_tarball(dirs["cache"] / "cifar10" / "cifar-10-python.tar.gz")
    ds = load_dataset("cifar10")
    assert ds.x_train.shape == (40, 3072) and ds.n_classes == 10 and ds.n_test == 6
    np.testing.assert_array_equal(ds.x_train * np.float32(255), truth["x_train"])
    np.testing.assert_array_equal(ds.y_train, truth["y_train"])
    np.testing.assert_array_equal(ds.y_test, truth["y_test"])
    assert ds.meta["class_names"][3] == "c3"
    img = load_dataset("cifar10", flatten=False, normalize="none")
    assert img.x_train.shape == (40, 3, 32, 32) and img.input_shape == (3, 32, 32)
    # channel-first: the first 1024 values of a row are the red plane
    np.testing.assert_array_equal(img.x_train[1, 0].ravel(), truth["x_train"][1, :1024])


def test_cifar_hwc_layout_is_the_pixel_by_pixel_transpose(dirs):
    make_cifar_tarball(dirs["cache"] / "cifar10" / "cifar-10-python.tar.gz")
    chw = load_dataset("cifar10", normalize="none")
    hwc = load_dataset("cifar10", normalize="none", layout="hwc")
    for a, b in ((chw.x_train, hwc.x_train), (chw.x_test, hwc.x_test)):
        np.testing.assert_array_equal(b.reshape(-1, 32, 32, 3),
                                      a.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    # row element (i W + j) C + c is channel c of pixel (i, j): pixel (0, 1)'s green value
    assert hwc.x_train[2, (0 * 32 + 1) * 3 + 1] == chw.x_train[2, 1 * 1024 + 0 * 32 + 1]
    assert "NHWC" in hwc.meta["layout"] and "plane" in chw.meta["layout"]
    with pytest.raises(NoisysimError, match="layout must be one of 'chw', 'hwc', got 'nchw'"):
        load_dataset("cifar10", layout="nchw")


def test_a_conv_net_on_cifar_reads_hwc_rows_and_trains(dirs, tmp_path):
    """models/cifar_convnet.toml on a CIFAR-format file: the config picks data.layout =
    "hwc" (an MLP keeps "chw"), and one epoch of anp runs to the end."""
    from noisysim.config import load_config
    from noisysim.experiment import run
    from noisysim.layers import build as build_layers
    from noisysim.record import Trajectory

    make_cifar_tarball(dirs["cache"] / "cifar10" / "cifar-10-python.tar.gz")
    mlp = load_config(None, ["data.name=cifar10", "model.layers=[3072, 10]"]).to_dict()
    assert mlp["data"]["layout"] == "chw"
    sets = ["model=cifar_convnet", "data.name=cifar10", "rule.name=anp", "train.epochs=1",
            "train.batch_size=20", "backend.name=cpu", "name=cifar-conv",
            'model.layers=[{conv = 4, kernel = 3, padding = 1}, {pool = "max", size = 2}, '
            '{dense = 10}]']
    config = load_config(None, sets).to_dict()
    assert config["data"]["layout"] == "hwc" and config["model"]["input_shape"] == [32, 32, 3]
    result, path = run(config, tmp_path / "runs")
    assert result.status == "completed"
    assert len(Trajectory(path).series("eval", "test_accuracy")) >= 1
    shipped = load_config(None, sets[:2]).to_dict()["model"]
    widths, _ = build_layers(shipped["layers"], shipped["input_shape"])
    assert list(widths) == [3072, 32768, 16384, 256, 10]
    with pytest.raises(NoisysimError, match="a conv net reads pixel by pixel"):
        load_config(None, sets + ["data.layout=chw"])


def test_cifar100_extracted_folder_and_label_modes(dirs):
    truth = make_cifar_tarball(dirs["tmp"] / "unused.tar.gz", kind="cifar100", per_batch=12,
                               extract_to=dirs["data"] / "cifar100")
    fine = load_dataset("cifar100")
    assert fine.n_classes == 100 and fine.meta["class_names"][99] == "f99"
    np.testing.assert_array_equal(fine.y_train, truth["y_train"])
    coarse = load_dataset("cifar100", label_mode="coarse")
    assert coarse.n_classes == 20 and coarse.meta["label_mode"] == "coarse"
    np.testing.assert_array_equal(coarse.y_train, truth["c_train"])
    with pytest.raises(NoisysimError, match="label_mode"):
        load_dataset("cifar100", label_mode="medium")
    # A Python 3 re-pickle of a batch (str keys, protocol 4) reads the same.
    folder = dirs["data"] / "cifar100" / "cifar-100-python"
    batch = pickle.loads((folder / "train").read_bytes(), encoding="bytes")
    (folder / "train").write_bytes(pickle.dumps({k.decode(): v for k, v in batch.items()}))
    np.testing.assert_array_equal(load_dataset("cifar100").x_train, fine.x_train)


def test_cifar_download_via_env_mirror(dirs, monkeypatch):
    mirror = dirs["tmp"] / "mirror"
    tarball = mirror / "cifar10" / "cifar-10-python.tar.gz"
    truth = make_cifar_tarball(tarball)
    monkeypatch.setitem(data.CIFAR_SOURCES["cifar10"], "checksums", [f"md5:{md5(tarball)}"])
    monkeypatch.setenv("NOISYSIM_MIRROR", mirror.as_uri())
    ds = load_dataset("cifar10", n_train=10)
    assert (dirs["cache"] / "cifar10" / "cifar-10-python.tar.gz").is_file()
    np.testing.assert_array_equal(ds.y_train, truth["y_train"][:10])


def test_cifar_corrupt_and_malicious(dirs):
    path = dirs["cache"] / "cifar10" / "cifar-10-python.tar.gz"
    make_cifar_tarball(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(NoisysimError, match="corrupt or truncated"):
        load_dataset("cifar10")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    src = data.CIFAR_SOURCES["cifar10"]
    with tarfile.open(path, "w:gz") as tar:
        for m in src["train"] + src["test"] + [src["meta"]]:
            blob = pickle.dumps(Evil())
            info = tarfile.TarInfo(f"{src['folder']}/{m}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(NoisysimError, match="refusing to unpickle"):
        load_dataset("cifar10")


# ----------------------------------------------------------------------------- digits


def test_digits_shipped():
    ds = load_dataset("digits")
    assert ds.n_train + ds.n_test == 1797 and ds.n_test == 297
    assert ds.n_classes == 10 and ds.input_shape == (64,)
    assert set(np.unique(ds.y_train)) == set(range(10))
    for x in (ds.x_train, ds.x_test):
        assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    raw = load_dataset("digits", normalize="none", flatten=False)
    assert raw.x_train.shape == (1500, 8, 8)
    vals = np.unique(np.concatenate([raw.x_train.ravel(), raw.x_test.ravel()]))
    np.testing.assert_array_equal(vals, np.arange(17))
    np.testing.assert_array_equal(ds.x_train, (raw.x_train / 16).reshape(1500, 64))
    assert "CC BY 4.0" in ds.meta["license"] and "10.24432/C50P49" in ds.meta["citation"]
    st_ = load_dataset("digits", normalize="standard")
    np.testing.assert_allclose(st_.x_train.mean(axis=0), 0, atol=1e-5)
    std = st_.x_train.std(axis=0)
    assert np.all((np.abs(std - 1) < 1e-4) | (std == 0))


# ----------------------------------------------------------------------------- teacher


def offdiag_mean(x: np.ndarray) -> float:
    c = np.corrcoef(np.asarray(x, np.float64), rowvar=False)
    return float(c[~np.eye(c.shape[0], dtype=bool)].mean())


@pytest.mark.parametrize("c", [0.0, 0.3, 0.8])
def test_teacher_correlation(c):
    n = 20000
    ds = load_dataset("teacher", correlation=c, n_train=n, n_test=10, n_inputs=16)
    # Each sample correlation r_ij has standard deviation ~ (1 - c^2) / sqrt(n); the mean of
    # (correlated) r_ij cannot vary more than one of them, so 5 sigma bounds it safely.
    tol = 5 * (1 - c * c) / math.sqrt(n) + 1e-6
    assert abs(offdiag_mean(ds.x_train) - c) < tol
    np.testing.assert_allclose(ds.x_train.var(axis=0), 1.0, atol=5 * math.sqrt(2 / n))
    assert ds.meta["correlation"] == c and "11^T" in ds.meta["covariance"]


def test_teacher_deterministic():
    a = load_dataset("teacher", seed=5, n_train=500, n_test=50, hidden=[8])
    b = load_dataset("teacher", seed=5, n_train=500, n_test=50, hidden=[8])
    c = load_dataset("teacher", seed=6, n_train=500, n_test=50, hidden=[8])
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert getattr(a, k).tobytes() == getattr(b, k).tobytes()
    assert a.x_train.tobytes() != c.x_train.tobytes()
    for w1, w2 in zip(a.meta["teacher"], b.meta["teacher"], strict=True):
        assert w1.tobytes() == w2.tobytes()
    # Counter-based: more samples extend, never change, the first ones.
    longer = load_dataset("teacher", seed=5, n_train=800, n_test=50, hidden=[8])
    np.testing.assert_array_equal(longer.x_train[:500], a.x_train)


def test_teacher_targets_equal_teacher_output():
    ds = load_dataset("teacher", n_train=300, n_test=40, n_inputs=7, n_outputs=3, seed=2)
    (w,) = ds.meta["teacher"]
    assert w.shape == (3, 7) and ds.n_classes == 0 and ds.y_train.shape == (300, 3)
    assert ds.y_train.dtype == np.float32 and ds.n_outputs == 3
    np.testing.assert_allclose(ds.y_train, ds.x_train.astype(np.float64) @ w.T, rtol=1e-5,
                               atol=1e-6)
    deep = load_dataset("teacher", n_train=300, n_test=40, n_inputs=7, n_outputs=3,
                        hidden=(9, 5), slope=0.1, dtype="float64", normalize="standard")
    w1, w2, w3 = deep.meta["teacher"]
    assert (w1.shape, w2.shape, w3.shape) == ((9, 7), (5, 9), (3, 5))

    def leaky(a):
        return np.where(a > 0, a, 0.1 * a)

    expect = leaky(leaky(deep.x_test @ w1.T) @ w2.T) @ w3.T
    np.testing.assert_allclose(deep.y_test, expect, rtol=1e-12, atol=1e-12)
    cls = load_dataset("teacher", task="classification", n_train=300, n_test=40, n_outputs=4,
                       validation=0.25)
    (wc,) = cls.meta["teacher"]
    assert cls.n_classes == 4 and cls.y_train.dtype == np.int64
    for x, y in ((cls.x_train, cls.y_train), (cls.x_val, cls.y_val), (cls.x_test, cls.y_test)):
        np.testing.assert_array_equal(y, np.argmax(x.astype(np.float64) @ wc.T, axis=1))


def test_teacher_target_noise():
    clean = load_dataset("teacher", n_train=4000, n_test=10, n_outputs=2, dtype="float64")
    noisy = load_dataset("teacher", n_train=4000, n_test=10, n_outputs=2, dtype="float64",
                         target_noise=0.5)
    np.testing.assert_array_equal(clean.x_train, noisy.x_train)
    resid = noisy.y_train - clean.y_train
    assert abs(resid.std() - 0.5) < 5 * 0.5 / math.sqrt(2 * resid.size)


# ----------------------------------------------------------------------------- validation


def test_validation_split(dirs):
    make_idx_set(dirs["data"] / "mnist", n_train=101)
    full = load_dataset("mnist", normalize="none")
    ds = load_dataset("mnist", normalize="none", validation=0.2, seed=3)
    assert ds.n_val == 20 and ds.n_train == 81 and ds.n_test == full.n_test
    ident = lambda x: x[:, 0] + 256 * x[:, 1]  # noqa: E731 - index encoded in the pixels
    tr, va = ident(ds.x_train), ident(ds.x_val)
    assert not set(tr) & set(va)
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(101))
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)  # original order kept
    np.testing.assert_array_equal(ds.y_val, full.y_train[va.astype(int)])
    again = load_dataset("mnist", normalize="none", validation=0.2, seed=3)
    other = load_dataset("mnist", normalize="none", validation=0.2, seed=4)
    np.testing.assert_array_equal(ident(again.x_val), va)
    assert not np.array_equal(ident(other.x_val), va)
    assert ds.split("val")[0] is ds.x_val
    with pytest.raises(NoisysimError, match="no validation split"):
        full.split("val")
    # standard normalisation uses the statistics of the final training part only
    sd = load_dataset("mnist", normalize="standard", validation=0.2, seed=3)
    np.testing.assert_allclose(sd.x_train.mean(axis=0), 0, atol=1e-5)
    assert sd.meta["normalization"]["mode"] == "standard"
    # n_train takes the first examples, then validation splits that pool
    sub = load_dataset("mnist", normalize="none", n_train=50, validation=0.1)
    assert sub.n_train == 45 and sub.n_val == 5
    assert set(ident(sub.x_train)) | set(ident(sub.x_val)) == set(range(50))


# ----------------------------------------------------------------------------- bad options


@pytest.mark.parametrize("name, options, words", [
    ("mnsit", {}, "did you mean 'mnist'"),
    ("digits", {"normalise": "unit"}, "did you mean 'normalize'"),
    ("digits", {"label_mode": "fine"}, "unknown option 'label_mode'"),
    ("digits", {"normalize": "minmax"}, "normalize must be one of"),
    ("digits", {"validation": 1.0}, r"validation must be in \[0, 1\)"),
    ("digits", {"validation": -0.1}, "validation"),
    ("digits", {"dtype": "int32"}, "dtype must be one of"),
    ("digits", {"flatten": "yes"}, "flatten must be true or false"),
    ("digits", {"seed": -1}, "seed"),
    ("digits", {"n_train": 5000}, "exceeds the 1500"),
    ("digits", {"n_test": 0}, "n_test"),
    ("teacher", {"correlation": 1.0}, "correlation"),
    ("teacher", {"hidden": "10"}, "hidden"),
    ("teacher", {"hidden": [0]}, "hidden width"),
    ("teacher", {"task": "classify"}, "did you mean 'classification'"),
    ("teacher", {"task": "classification", "n_outputs": 1}, "n_outputs"),
    ("cifar10", {"mirror": 3}, "mirror"),
    ("cifar10", {"download": "no"}, "download"),
])
def test_bad_options(name, options, words):
    with pytest.raises(NoisysimError, match=words) as err:
        load_dataset(name, **options)
    assert "\n" not in str(err.value)


def test_registry_and_aliases(dirs):
    assert data.dataset_names() == ["cifar10", "cifar100", "digits", "fashion-mnist", "mnist",
                                    "teacher"]
    with pytest.raises(NoisysimError) as err:
        load_dataset("imagenet")
    assert all(n in str(err.value) for n in data.dataset_names())
    make_idx_set(dirs["data"] / "fashion-mnist", n_train=5, n_test=2)
    assert load_dataset("Fashion_MNIST").name == "fashion-mnist"


# ----------------------------------------------------------------------------- real data


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (DEBIAN_FASHION / IDX_NAMES[0]).is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist(monkeypatch, tmp_path):
    monkeypatch.delenv("NOISYSIM_DATA", raising=False)
    monkeypatch.setenv("NOISYSIM_CACHE", str(tmp_path))
    ds = load_dataset("fashion-mnist", download=False, n_test=2000)
    assert ds.n_train == 60000 and ds.x_train.shape == (60000, 784)
    np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 6000))
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert ds.meta["files"][IDX_NAMES[0]].startswith(str(DEBIAN_FASHION))
