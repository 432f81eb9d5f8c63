"""The Dataset object and the pipeline every loader ends with (steps 2-6 of the package
docstring): subset, validation split, normalisation, flatten, cast, freeze."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from noisysim.errors import NoisysimError, check_choice
from noisysim.kernels import rng


# Sub-streams of rng.STREAM_DATA ("step" counter); "layer" picks the array within a step.
STEP_TEACHER_WEIGHTS = 0  # layer l: teacher weight matrix l
STEP_TRAIN_INPUTS = 1  # layer 0: independent part z (n, d); layer 1: shared factor s (n,)
STEP_TEST_INPUTS = 2  # same layout for the test inputs
STEP_TARGET_NOISE = 3  # layer 0: train targets, layer 1: test targets
STEP_VALIDATION = 4  # layer 0: uniform keys whose argsort is the validation permutation


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
