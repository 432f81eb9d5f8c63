"""The registry of datasets and ``load_dataset``: names, aliases, options and the checks of
the options every dataset shares. Loaders register themselves with ``register`` (the
modules generated, shipped, idx and cifar); adding a dataset is one such module."""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from noisysim.errors import NoisysimError, check_bool, check_choice, check_number

from .dataset import Dataset

_MAX_SEED = 2**63 - 1


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


def register(name: str, options: Iterable[str], defaults: Mapping[str, Any], description: str):
    def deco(fn):
        DATASETS[name] = _Entry(fn, tuple(options), dict(defaults), description)
        return fn

    return deco


def dataset_key(name: Any) -> Any:
    """The registry key of a dataset name: lower case, aliases resolved ("Fashion_MNIST" ->
    "fashion-mnist"); anything but a str is returned as it is (for the caller to refuse)."""
    if not isinstance(name, str):
        return name
    key = name.strip().lower()
    return _ALIASES.get(key, key)


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
    key = dataset_key(name)
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
    o["flatten"] = check_bool("flatten", o.get("flatten", True))
    o["validation"] = check_number("validation", o.get("validation", 0.0), 0.0, 1.0, hi_open=True)
    o["dtype"] = _check_dtype(o.get("dtype", "float32"))
    o["seed"] = check_number("seed", o.get("seed", 0), 0, _MAX_SEED, integer=True)
    for k in ("n_train", "n_test"):
        o.setdefault(k, None)
        if o[k] is not None:
            o[k] = check_number(k, o[k], 1, None, integer=True, hint="or None for all")
    if "download" in o:
        o["download"] = check_bool("download", o["download"])
    for k in ("mirror", "data_dir"):
        v = o.get(k)
        if v is not None and not isinstance(v, (str, os.PathLike)):
            raise NoisysimError(f"{k} must be a string (path or URL) or None, got {v!r}")
    return o


def _check_dtype(value: Any) -> np.dtype:
    try:
        dt = np.dtype(value)
    except TypeError:
        dt = None
    if dt is None or dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise NoisysimError(f"dtype must be one of 'float32', 'float64', got {value!r}")
    return dt
