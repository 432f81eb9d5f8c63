"""Datasets: generated (teacher), shipped (digits) and downloaded with checksums (MNIST,
Fashion-MNIST, CIFAR-10/100).

Entry point::

    ds = load_dataset("fashion-mnist", normalize="unit", validation=0.1, seed=0)
    ds.x_train  # (n, 784) float32 in [0, 1], read-only
    ds.y_train  # (n,) int64

Every dataset goes through the same pipeline (in this order):

1. load the raw train/test arrays (uint8 images, or generated float64 inputs);
2. ``n_train`` / ``n_test``: keep the *first* n examples of each split (deterministic,
   seed-independent; for quick runs);
3. ``validation``: a fraction of the (subset) training set is split off as a validation set.
   The split is a permutation drawn from the counter-based generator
   (``rng.uniform_array(seed, STREAM_DATA, STEP_VALIDATION, 0, (n,))``, argsorted); both
   parts keep their original order. ``n_val = round(validation * n)``, at least 1;
4. ``normalize``: an affine map ``x -> (x - offset) / scale`` whose parameters come from the
   final training set only and are recorded in ``meta["normalization"]``:
   ``"unit"`` divides images by their largest possible value (255, or 16 for digits) as the
   paper does (for generated inputs: per-feature min-max of the training set);
   ``"standard"``: per-feature mean and standard deviation (features with zero variance keep
   scale 1); ``"none"``: raw values (cast);
5. ``flatten`` (default True): one row per example; otherwise images keep their shape
   ((28, 28), (8, 8), CIFAR (3, 32, 32) channel-first as stored by its authors);
6. cast to ``dtype`` (float32 default, or float64). Labels are int64; regression targets
   use ``dtype``. All arrays are C-contiguous and read-only (copy before modifying).

Where files come from (MNIST, Fashion-MNIST, CIFAR): the first folder that holds all files of
the set among ``data_dir=`` (option), ``$NOISYSIM_DATA/<name>/`` (``os.pathsep``-separated
list allowed), ``/usr/share/datasets/<name>/`` (Debian: ``apt-get install
dataset-fashion-mnist``) and the cache ``$NOISYSIM_CACHE/<name>/`` (default
``$XDG_CACHE_HOME/noisysim/<name>/`` or ``~/.cache/noisysim/<name>/``). Otherwise the missing
files are downloaded into the cache: to a temporary file in the cache folder, verified against
the published checksum, then atomically renamed; a mismatch deletes the temporary file.
The download location is the ``mirror=`` option (a URL of the folder holding this set's
files, ``file://`` allowed), else ``$NOISYSIM_MIRROR/<name>/``, else the official sites.
``download=False`` never touches the network.

Files read from local folders are not re-hashed (the Debian package re-gzipped the
Fashion-MNIST files, and users may bring uncompressed copies); they are checked for
structure instead (IDX header and sizes, consistent counts, labels in range).
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import hashlib
import http.client
import io
import logging
import math
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .errors import NoisysimError, check_choice, check_number
from .kernels import rng

__all__ = [
    "Dataset",
    "load_dataset",
    "dataset_names",
    "teacher_forward",
    "read_idx",
    "write_idx",
    "download_file",
    "cache_dir",
    "DATASETS",
]

log = logging.getLogger(__name__)

# Sub-streams of rng.STREAM_DATA ("step" counter); "layer" picks the array within a step.
STEP_TEACHER_WEIGHTS = 0  # layer l: teacher weight matrix l
STEP_TRAIN_INPUTS = 1  # layer 0: independent part z (n, d); layer 1: shared factor s (n,)
STEP_TEST_INPUTS = 2  # same layout for the test inputs
STEP_TARGET_NOISE = 3  # layer 0: train targets, layer 1: test targets
STEP_VALIDATION = 4  # layer 0: uniform keys whose argsort is the validation permutation

_RESOURCES = Path(__file__).resolve().parent / "resources"
_DEBIAN_DATASETS = Path("/usr/share/datasets")
_CHUNK = 1 << 20
_MAX_SEED = 2**63 - 1


# --------------------------------------------------------------------------------------
# The dataset object
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: train/test (and optional validation) arrays plus metadata.

    ``n_classes`` is 0 for regression (then ``y_*`` are float targets of shape (n, outputs)).
    ``input_shape`` is the shape of one example as stored in ``x_*`` (``(784,)`` when
    flattened). ``meta`` holds provenance, license, normalisation parameters and, for the
    teacher, the teacher weights (``meta["teacher"]``: list of (out, in) float64 arrays).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    n_classes: int = 0
    input_shape: tuple[int, ...] = ()
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def task(self) -> str:
        return "classification" if self.n_classes > 0 else "regression"

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def n_val(self) -> int:
        return 0 if self.x_val is None else int(self.x_val.shape[0])

    @property
    def n_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def n_outputs(self) -> int:
        """Width of the output layer a network needs for this dataset."""
        return self.n_classes if self.n_classes > 0 else int(self.y_train.shape[1])

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of ``"train"``, ``"val"`` or ``"test"``."""
        check_choice("split", which, ("train", "val", "test"))
        if which == "val":
            if self.x_val is None:
                raise NoisysimError(
                    f"dataset {self.name!r} has no validation split; "
                    "load it with validation=0.1 (a fraction of the training set)"
                )
            return self.x_val, self.y_val
        return getattr(self, f"x_{which}"), getattr(self, f"y_{which}")

    def __repr__(self) -> str:
        val = f", n_val={self.n_val}" if self.x_val is not None else ""
        return (
            f"Dataset({self.name!r}, n_train={self.n_train}{val}, n_test={self.n_test}, "
            f"input_shape={self.input_shape}, n_classes={self.n_classes}, "
            f"dtype={self.x_train.dtype})"
        )


# --------------------------------------------------------------------------------------
# Registry and option handling
# --------------------------------------------------------------------------------------

_COMMON = ("normalize", "flatten", "validation", "dtype", "seed", "n_train", "n_test")
_FILES = ("data_dir", "mirror", "download")


@dataclasses.dataclass(frozen=True)
class _Entry:
    loader: Callable[..., Dataset]
    options: tuple[str, ...]
    defaults: Mapping[str, Any]
    description: str


DATASETS: dict[str, _Entry] = {}
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar-100": "cifar100",
    "cifar_100": "cifar100",
}


def _register(name: str, options: Iterable[str], defaults: Mapping[str, Any], description: str):
    def deco(fn):
        DATASETS[name] = _Entry(fn, tuple(options), dict(defaults), description)
        return fn

    return deco


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(DATASETS)


def load_dataset(name: str, **options: Any) -> Dataset:
    """Load dataset ``name`` (see :func:`dataset_names`) with the given options.

    Common options: ``normalize`` ("unit" | "standard" | "none"), ``flatten`` (bool),
    ``validation`` (fraction in [0, 1)), ``dtype`` ("float32" | "float64"), ``seed``
    (int >= 0; validation split and generated data), ``n_train`` / ``n_test`` (keep the first
    n). File-based sets also take ``data_dir``, ``mirror`` and ``download``; ``cifar100``
    takes ``label_mode`` ("fine" | "coarse"); ``teacher`` takes ``n_inputs``, ``n_outputs``,
    ``hidden``, ``correlation``, ``task``, ``target_noise``, ``slope``.
    Unknown names or options raise :class:`NoisysimError` listing the valid ones.
    """
    if not isinstance(name, str):
        raise NoisysimError(f"dataset name must be a string, got {name!r}")
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    check_choice("dataset", key, dataset_names())
    entry = DATASETS[key]
    for opt in options:
        if opt not in entry.options:
            close = difflib.get_close_matches(opt, entry.options, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise NoisysimError(
                f"load_dataset({key!r}): unknown option {opt!r}{guess}; valid options: "
                f"{', '.join(entry.options)}"
            )
    opts = dict(entry.defaults)
    opts.update(options)
    return entry.loader(key, **_validate_common(opts))


def _validate_common(opts: dict) -> dict:
    o = dict(opts)
    norm = "none" if o.get("normalize") is None else o.get("normalize")
    o["normalize"] = check_choice("normalize", norm, ("unit", "standard", "none"))
    o["flatten"] = _check_bool("flatten", o.get("flatten", True))
    o["validation"] = check_number("validation", o.get("validation", 0.0), 0.0, 1.0, hi_open=True)
    o["dtype"] = _check_dtype(o.get("dtype", "float32"))
    o["seed"] = check_number("seed", o.get("seed", 0), 0, _MAX_SEED, integer=True)
    for k in ("n_train", "n_test"):
        o.setdefault(k, None)
        if o[k] is not None:
            o[k] = check_number(k, o[k], 1, None, integer=True, hint="or None for all")
    if "download" in o:
        o["download"] = _check_bool("download", o["download"])
    for k in ("mirror", "data_dir"):
        v = o.get(k)
        if v is not None and not isinstance(v, (str, os.PathLike)):
            raise NoisysimError(f"{k} must be a string (path or URL) or None, got {v!r}")
    return o


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise NoisysimError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_dtype(value: Any) -> np.dtype:
    try:
        dt = np.dtype(value)
    except TypeError:
        dt = None
    if dt is None or dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise NoisysimError(f"dtype must be one of 'float32', 'float64', got {value!r}")
    return dt


# --------------------------------------------------------------------------------------
# Shared pipeline: subset, validation split, normalisation, flatten, cast, freeze
# --------------------------------------------------------------------------------------


def _subset(x, y, n, what, name):
    if n is None:
        return x, y
    if n > x.shape[0]:
        raise NoisysimError(
            f"{what}={n} exceeds the {x.shape[0]} examples available in {name!r}; "
            f"use {what} <= {x.shape[0]} or None"
        )
    return x[:n], (None if y is None else y[:n])


def _validation_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), both sorted, from a seeded permutation of range(n)."""
    if n < 2:
        raise NoisysimError(
            f"validation={fraction!r} needs at least 2 training examples, the set has {n}"
        )
    n_val = min(max(int(math.floor(fraction * n + 0.5)), 1), n - 1)
    u = rng.uniform_array(seed, rng.STREAM_DATA, STEP_VALIDATION, 0, (n,))
    perm = np.argsort(u, kind="stable")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _affine_params(x: np.ndarray, mode: str, unit_scale: float | None):
    """offset, scale (float64 scalars or per-feature arrays) so that x_n = (x - offset)/scale."""
    if mode == "none":
        return 0.0, 1.0
    if mode == "unit" and unit_scale is not None:
        return 0.0, float(unit_scale)
    flat = x.reshape(x.shape[0], -1)
    n = flat.shape[0]
    if mode == "unit":  # generated data: per-feature min-max of the training set
        lo = flat.min(axis=0).astype(np.float64)
        span = flat.max(axis=0).astype(np.float64) - lo
        span[span <= 0] = 1.0
        return lo.reshape(x.shape[1:]), span.reshape(x.shape[1:])
    # standard: chunked two-pass mean/variance in float64 (no full float64 copy)
    step = max(1, (1 << 22) // max(1, flat.shape[1]))
    total = np.zeros(flat.shape[1])
    for i in range(0, n, step):
        total += flat[i : i + step].sum(axis=0, dtype=np.float64)
    mean = total / n
    ss = np.zeros(flat.shape[1])
    for i in range(0, n, step):
        d = flat[i : i + step].astype(np.float64) - mean
        ss += np.einsum("ij,ij->j", d, d)
    std = np.sqrt(ss / n)
    std[~(std > 1e-12 * np.maximum(1.0, np.abs(mean)))] = 1.0
    return mean.reshape(x.shape[1:]), std.reshape(x.shape[1:])


def _apply(x: np.ndarray, offset, scale, dtype: np.dtype, flatten: bool) -> np.ndarray:
    out = np.array(x, dtype=dtype, order="C", copy=True)
    if not (np.isscalar(offset) and offset == 0.0):
        out -= np.asarray(offset, dtype=dtype)
    if not (np.isscalar(scale) and scale == 1.0):
        out /= np.asarray(scale, dtype=dtype)
    if flatten:
        out = out.reshape(out.shape[0], -1)
    return out


def _freeze(a):
    if a is None:
        return None
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _finish(
    name: str,
    x_train,
    y_train,
    x_test,
    y_test,
    *,
    opts: dict,
    n_classes: int,
    unit_scale: float | None,
    meta: dict,
    targets: Callable[[np.ndarray, str], np.ndarray] | None = None,
    subset: bool = True,
) -> Dataset:
    """Run steps 2-6 of the pipeline (see the module docstring).

    ``targets``, when given, computes y from the final (normalised, cast) inputs of a split
    (``targets(x, "train"|"val"|"test")``): generated datasets use it so that y == f(x).
    """
    if subset:
        x_train, y_train = _subset(x_train, y_train, opts["n_train"], "n_train", name)
        x_test, y_test = _subset(x_test, y_test, opts["n_test"], "n_test", name)
    x_val = y_val = None
    if opts["validation"] > 0:
        tr, va = _validation_indices(x_train.shape[0], opts["validation"], opts["seed"])
        x_val = x_train[va]
        x_train = x_train[tr]
        if y_train is not None:
            y_val, y_train = y_train[va], y_train[tr]
        meta["validation"] = {
            "fraction": opts["validation"],
            "seed": opts["seed"],
            "rule": "rng.uniform_array(seed, STREAM_DATA, 4, 0, (n,)) argsorted; the first "
            "round(fraction*n) indices form the validation set",
        }
    sample_shape = tuple(int(s) for s in x_train.shape[1:])
    offset, scale = _affine_params(x_train, opts["normalize"], unit_scale)
    meta["normalization"] = {"mode": opts["normalize"], "offset": offset, "scale": scale}
    meta["sample_shape"] = sample_shape
    dt, fl = opts["dtype"], opts["flatten"]
    xs = {k: (None if v is None else _apply(v, offset, scale, dt, fl))
          for k, v in (("train", x_train), ("val", x_val), ("test", x_test))}
    if targets is not None:
        ys = {k: (None if xs[k] is None else targets(xs[k], k)) for k in xs}
    else:
        ys = {"train": y_train, "val": y_val, "test": y_test}
        ys = {k: (None if v is None else np.asarray(v, dtype=np.int64)) for k, v in ys.items()}
    input_shape = (int(np.prod(sample_shape)),) if fl else sample_shape
    for v in meta["normalization"].values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    return Dataset(
        name=name,
        x_train=_freeze(xs["train"]),
        y_train=_freeze(ys["train"]),
        x_test=_freeze(xs["test"]),
        y_test=_freeze(ys["test"]),
        x_val=_freeze(xs["val"]),
        y_val=_freeze(ys["val"]),
        n_classes=int(n_classes),
        input_shape=input_shape,
        meta=meta,
    )


# --------------------------------------------------------------------------------------
# Teacher: correlated Gaussian inputs, fixed random teacher network
# --------------------------------------------------------------------------------------


def teacher_forward(weights: Sequence[np.ndarray], x: np.ndarray,
                    slope: float = 0.01) -> np.ndarray:
    """Output of a teacher network (float64): leaky ReLU (``slope``) after every layer but
    the last, no biases: ``h_l = f(h_{l-1} @ W_l.T)``."""
    h = np.asarray(x, dtype=np.float64)
    for i, w in enumerate(weights):
        h = h @ np.asarray(w, dtype=np.float64).T
        if i < len(weights) - 1:
            h = np.where(h > 0, h, slope * h)
    return h


def _correlated_inputs(seed: int, step: int, n: int, d: int, c: float) -> np.ndarray:
    z = rng.normal_array(seed, rng.STREAM_DATA, step, 0, (n, d))
    s = rng.normal_array(seed, rng.STREAM_DATA, step, 1, (n,))
    return math.sqrt(1.0 - c) * z + math.sqrt(c) * s[:, None]


@_register(
    "teacher",
    _COMMON + ("n_inputs", "n_outputs", "hidden", "correlation", "task", "target_noise", "slope"),
    dict(normalize="none", n_train=10000, n_test=2000, n_inputs=20, n_outputs=10, hidden=(),
         correlation=0.5, task="regression", target_noise=0.0, slope=0.01),
    "student-teacher problem: correlated Gaussian inputs, fixed random teacher network",
)
def _load_teacher(name, **o) -> Dataset:
    """Generated student-teacher data.

    Inputs x ~ N(0, Sigma) with the equicorrelated covariance
    ``Sigma = (1 - c) I + c 1 1^T`` (unit variances, every off-diagonal correlation equal to
    ``c = correlation`` in [0, 1)), built as ``x = sqrt(1-c) z + sqrt(c) s 1`` with
    z ~ N(0, I_d) and one shared s ~ N(0, 1) per example.
    Teacher: widths n_inputs -> *hidden -> n_outputs, no biases, W_l ~ N(0, g / fan_in) with
    g = 2 (He) for layers followed by leaky ReLU and g = 1 for the last (linear) layer.
    ``task="regression"``: y = teacher(x) + target_noise * N(0, 1) (float, (n, n_outputs));
    ``task="classification"``: y = argmax teacher(x) (int64, n_classes = n_outputs).
    Targets are computed from the returned (normalised, cast) inputs, so y == teacher(x_ds).
    All randomness: rng stream STREAM_DATA (see the STEP_* constants of this module).
    """
    n_in = check_number("n_inputs", o["n_inputs"], 1, None, integer=True)
    n_out = check_number("n_outputs", o["n_outputs"], 1, None, integer=True)
    hidden = o["hidden"]
    if hidden is None:
        hidden = ()
    if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool):
        hidden = (hidden,)
    if not isinstance(hidden, (list, tuple)):
        raise NoisysimError(f"hidden must be a list of layer widths, got {hidden!r}")
    hidden = tuple(check_number("hidden width", h, 1, None, integer=True) for h in hidden)
    c = check_number("correlation", o["correlation"], 0.0, 1.0, hi_open=True)
    task = check_choice("task", o["task"], ("regression", "classification"))
    noise = check_number("target_noise", o["target_noise"], 0.0, None)
    slope = check_number("slope", o["slope"], None, None)
    if task == "classification" and n_out < 2:
        raise NoisysimError(f"n_outputs must be >= 2 for task='classification', got {n_out}")
    if task == "classification" and noise > 0:
        raise NoisysimError("target_noise applies to task='regression' only; set it to 0")
    seed = o["seed"]
    n_train = o["n_train"] if o["n_train"] is not None else 10000
    n_test = o["n_test"] if o["n_test"] is not None else 2000
    widths = (n_in,) + hidden + (n_out,)
    weights = []
    for layer in range(len(widths) - 1):
        gain = 2.0 if layer < len(widths) - 2 else 1.0
        w = rng.normal_array(seed, rng.STREAM_DATA, STEP_TEACHER_WEIGHTS, layer,
                             (widths[layer + 1], widths[layer]))
        w *= math.sqrt(gain / widths[layer])
        w.flags.writeable = False
        weights.append(w)
    x_train = _correlated_inputs(seed, STEP_TRAIN_INPUTS, n_train, n_in, c)
    x_test = _correlated_inputs(seed, STEP_TEST_INPUTS, n_test, n_in, c)
    # Target noise is drawn per original row, so the split does not change its values.
    noise_rows = {}
    if noise > 0:
        noise_rows["train"] = rng.normal_array(seed, rng.STREAM_DATA, STEP_TARGET_NOISE, 0,
                                               (n_train, n_out))
        noise_rows["test"] = rng.normal_array(seed, rng.STREAM_DATA, STEP_TARGET_NOISE, 1,
                                              (n_test, n_out))
        if o["validation"] > 0:
            tr, va = _validation_indices(n_train, o["validation"], seed)
            noise_rows["val"] = noise_rows["train"][va]
            noise_rows["train"] = noise_rows["train"][tr]
    dt = o["dtype"]

    def targets(x, split):
        out = teacher_forward(weights, x, slope)
        if task == "classification":
            return np.argmax(out, axis=1).astype(np.int64)
        if noise > 0:
            out = out + noise * noise_rows[split]
        return out.astype(dt)

    meta = {
        "source": "generated by noisysim.data (teacher)",
        "license": "generated data, no restrictions",
        "teacher": weights,
        "teacher_widths": widths,
        "teacher_activation": f"leaky_relu(slope={slope}) after hidden layers, identity output",
        "teacher_bias": False,
        "task": task,
        "correlation": c,
        "covariance": "equicorrelated (1 - c) I + c 11^T: unit variances, off-diagonal c",
        "target_noise": noise,
        "seed": seed,
        "rng": "noisysim.kernels.rng, stream STREAM_DATA",
    }
    opts = dict(o, n_train=None, n_test=None)
    return _finish(name, x_train, None, x_test, None, opts=opts,
                   n_classes=n_out if task == "classification" else 0, unit_scale=None,
                   meta=meta, targets=targets, subset=False)


# --------------------------------------------------------------------------------------
# digits (shipped)
# --------------------------------------------------------------------------------------

DIGITS_FILE = "digits.npz"
DIGITS_N_TEST = 297
# sha256 of the raw array bytes (images uint8 (1797, 8, 8) C-order, labels uint8 (1797,)).
_DIGITS_SHA256 = {
    "images": "8f26b2bd9d135c256808f68f14fdabddde6d9c7f869ae419704b051f0f14b3b3",
    "labels": "8ba4f891220f5e4c9c819638d1602d74b83618f167043c6da52a2a247841ddf0",
}


@_register("digits", _COMMON, dict(normalize="unit"),
           "UCI optical handwritten digits 8x8 (1,797 images, shipped with noisysim)")
def _load_digits(name, **o) -> Dataset:
    """UCI optdigits (the 1,797-image set known from scikit-learn), 8x8 counts 0..16.

    Split: the first 1,500 images are the training set, the last 297 the test set (file
    order; no shuffling). ``normalize="unit"`` divides by 16.
    """
    path = _RESOURCES / DIGITS_FILE
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, KeyError, ValueError, zlib.error) as exc:
        raise NoisysimError(
            f"cannot read the shipped digits data {path} ({exc}); reinstall noisysim"
        ) from None
    for k, a in (("images", images), ("labels", labels)):
        if hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() != _DIGITS_SHA256[k]:
            raise NoisysimError(f"shipped digits data {path} is corrupt ({k}); reinstall noisysim")
    meta = {
        "source": "UCI Machine Learning Repository, Optical Recognition of Handwritten Digits "
        "(optdigits.tes, 1,797 images), E. Alpaydin and C. Kaynak, 1998; "
        "https://doi.org/10.24432/C50P49; copied from scikit-learn 1.9.1 "
        "(sklearn/datasets/data/digits.csv.gz, sha256 "
        "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22)",
        "license": "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)",
        "citation": "Alpaydin, E. & Kaynak, C. (1998). Optical Recognition of Handwritten "
        "Digits [Dataset]. UCI Machine Learning Repository. https://doi.org/10.24432/C50P49",
        "changes": "converted from CSV to uint8 arrays in an npz file; values unchanged",
        "split": f"train = first {len(labels) - DIGITS_N_TEST}, test = last {DIGITS_N_TEST} "
        "rows in file order",
        "files": {"digits": str(path)},
        "class_names": [str(i) for i in range(10)],
    }
    n = len(labels) - DIGITS_N_TEST
    return _finish(name, images[:n], labels[:n], images[n:], labels[n:], opts=o,
                   n_classes=10, unit_scale=16.0, meta=meta)


# --------------------------------------------------------------------------------------
# Locating, downloading and verifying files
# --------------------------------------------------------------------------------------


def cache_dir(name: str | None = None) -> Path:
    """The download cache: ``$NOISYSIM_CACHE``, else ``$XDG_CACHE_HOME/noisysim``, else
    ``~/.cache/noisysim``; with ``name``, that dataset's sub-folder."""
    env = os.environ.get("NOISYSIM_CACHE")
    if env:
        root = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "noisysim"
    return root / name if name else root


def _search_dirs(name: str, data_dir) -> list[Path]:
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    for p in os.environ.get("NOISYSIM_DATA", "").split(os.pathsep):
        if p:
            dirs.append(Path(p).expanduser() / name)
    dirs.append(_DEBIAN_DATASETS / name)
    dirs.append(cache_dir(name))
    return dirs


def download_file(url: str, dest: str | os.PathLike, checksums: Sequence[str],
                  *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically, accepting it only if it matches one of
    ``checksums`` (strings ``"md5:<hex>"`` or ``"sha256:<hex>"``).

    The data go to a temporary file next to ``dest`` which is renamed onto ``dest`` only
    after verification; on any failure the temporary file is removed. Network failures raise
    ``OSError`` (``urllib.error.URLError``); a checksum mismatch raises ``NoisysimError``.
    """
    dest = Path(dest)
    wanted = []
    for c in checksums:
        algo, _, hexd = str(c).partition(":")
        if algo not in ("md5", "sha256") or not hexd:
            raise NoisysimError(f"checksum must look like 'md5:<hex>' or 'sha256:<hex>', got {c!r}")
        wanted.append((algo, hexd.lower()))
    if not wanted:
        raise NoisysimError(f"refusing to download {url} without a checksum to verify")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            req = urllib.request.Request(url, headers={"User-Agent": "noisysim"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    sha.update(chunk)
        found = {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}
        if not any(found[a] == h for a, h in wanted):
            algo, exp = wanted[0]
            raise NoisysimError(
                f"checksum mismatch for {dest.name} downloaded from {url}: expected {algo} "
                f"{exp}, found {found[algo]}; the download was deleted - retry, use another "
                f"mirror, or place a verified copy in {dest.parent}"
            )
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache may be shared
        os.replace(tmp, dest)
        return dest
    finally:
        if tmp.exists():
            tmp.unlink()


def _mirrors(name: str, mirror, defaults: Sequence[str]) -> list[str]:
    if mirror is not None:
        return [_as_url_dir(str(mirror))]
    env = os.environ.get("NOISYSIM_MIRROR")
    if env:
        return [_as_url_dir(env) + urllib.parse.quote(name) + "/"]
    return list(defaults)


def _as_url_dir(base: str) -> str:
    if "://" not in base:  # a plain path: turn it into a file:// URL
        base = Path(base).expanduser().resolve().as_uri()
    return base if base.endswith("/") else base + "/"


def _locate(name: str, files: Mapping[str, Sequence[str]], opts: dict,
            mirrors: Sequence[str], accept: Callable[[Path, str], Path | None] | None = None,
            ) -> dict[str, Path]:
    """Paths of all ``files`` (name -> accepted checksums) of dataset ``name``.

    The first search folder that holds every file wins (``accept(folder, file)`` may return
    an alternative path, e.g. an uncompressed copy); otherwise missing files are downloaded
    into the cache.
    """
    accept = accept or (lambda d, f: d / f if (d / f).is_file() else None)
    dirs = _search_dirs(name, opts.get("data_dir"))
    partial = []
    for d in dirs:
        found = {f: accept(d, f) for f in files}
        if all(found.values()):
            return found
        if any(found.values()):
            partial.append(str(d))
    cache = cache_dir(name)
    found = {f: accept(cache, f) for f in files}
    missing = [f for f, p in found.items() if p is None]
    where = f"$NOISYSIM_DATA/{name}/ or {cache}/"
    if not opts.get("download", True):
        raise NoisysimError(
            f"{name}: files not found ({', '.join(missing)}); searched "
            f"{', '.join(map(str, dirs))}; download=False, so place the files in {where}"
            + (f" (incomplete: {', '.join(partial)})" if partial else "")
        )
    mirrors = _mirrors(name, opts.get("mirror"), mirrors)
    for f in missing:
        errors = []
        for base in mirrors:
            url = base + urllib.parse.quote(f)
            log.info("downloading %s", url)
            try:
                found[f] = download_file(url, cache / f, files[f])
                break
            except (OSError, ValueError, http.client.HTTPException) as exc:
                if isinstance(exc, NoisysimError):
                    raise
                errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
        else:
            raise NoisysimError(
                f"{name}: cannot find or download {f} ({'; '.join(errors)}); place the files "
                f"{', '.join(files)} in {where} (or set NOISYSIM_MIRROR / mirror=)"
            )
    return found


# --------------------------------------------------------------------------------------
# IDX format (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------

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
    _register(_name, _COMMON + _FILES, dict(normalize="unit", download=True), _desc)(
        _load_idx_set)


# --------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickle tarballs)
# --------------------------------------------------------------------------------------

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


def _load_cifar(name, **o) -> Dataset:
    src = CIFAR_SOURCES[name]
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
    names_key = "label_names" if name == "cifar10" else f"{mode}_label_names"
    class_names = [n.decode() if isinstance(n, bytes) else str(n)
                   for n in meta_b.get(names_key, [])]
    meta = {
        "source": _CIFAR_SOURCE,
        "license": "no license stated by the authors; cite the technical report",
        "files": {src["tarball"]: str(path)},
        "split": "official train/test split",
        "layout": "channel-first (3, 32, 32), flattened as R plane, G plane, B plane",
        "label_mode": mode,
        "class_names": class_names,
    }
    return _finish(name, x_train, y_train, x_test, y_test, opts=o, n_classes=n_classes,
                   unit_scale=255.0, meta=meta)


_register("cifar10", _COMMON + _FILES, dict(normalize="unit", download=True),
          "CIFAR-10 32x32x3, 10 classes (python pickle tarball)")(_load_cifar)
_register("cifar100", _COMMON + _FILES + ("label_mode",),
          dict(normalize="unit", download=True, label_mode="fine"),
          "CIFAR-100 32x32x3, 100 fine / 20 coarse classes (python pickle tarball)")(_load_cifar)
