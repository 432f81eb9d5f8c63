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

The modules:

    dataset.py     the Dataset object and the shared pipeline (steps 2-6 above)
    registry.py    names, aliases and options; ``load_dataset``; ``register`` for loaders
    generated.py   teacher (student-teacher problem)
    shipped.py     digits (noisysim/resources/digits.npz)
    downloaded.py  finding files, downloading them with checksum verification, the cache
    idx.py         MNIST and Fashion-MNIST (IDX files)
    cifar.py       CIFAR-10 and CIFAR-100 (python pickle tarballs)

A new dataset: a module with a loader that ends in ``dataset._finish``, registered with
``@register(name, options, defaults, description)``, imported below, and its input size
and classes in ``noisysim.config.DATASET_SHAPES`` (validation never loads data).
"""

from .dataset import (
    STEP_TARGET_NOISE,
    STEP_TEACHER_WEIGHTS,
    STEP_TEST_INPUTS,
    STEP_TRAIN_INPUTS,
    STEP_VALIDATION,
    Dataset,
)
from .registry import DATASETS, dataset_key, dataset_names, load_dataset, register

# Importing a loader module registers its datasets.
from .generated import teacher_forward  # noqa: E402  (after the registry it fills)
from .shipped import DIGITS_FILE, DIGITS_N_TEST  # noqa: E402
from .downloaded import cache_dir, download_file  # noqa: E402
from .idx import IDX_SOURCES, read_idx, write_idx  # noqa: E402
from .cifar import CIFAR_SOURCES  # noqa: E402

__all__ = [
    "Dataset",
    "load_dataset",
    "dataset_names",
    "dataset_key",
    "teacher_forward",
    "read_idx",
    "write_idx",
    "download_file",
    "cache_dir",
    "register",
    "DATASETS",
    "IDX_SOURCES",
    "CIFAR_SOURCES",
    "DIGITS_FILE",
    "DIGITS_N_TEST",
    "STEP_TEACHER_WEIGHTS",
    "STEP_TRAIN_INPUTS",
    "STEP_TEST_INPUTS",
    "STEP_TARGET_NOISE",
    "STEP_VALIDATION",
]
