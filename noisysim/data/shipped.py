"""Shipped data: the UCI optical handwritten digits (noisysim/resources/digits.npz),
verified against the sha256 of its arrays on every load."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import numpy as np

from noisysim.errors import NoisysimError

from .dataset import Dataset, _finish
from .registry import _COMMON, register

_RESOURCES = Path(__file__).resolve().parent.parent / "resources"


DIGITS_FILE = "digits.npz"
DIGITS_N_TEST = 297
# sha256 of the raw array bytes (images uint8 (1797, 8, 8) C-order, labels uint8 (1797,)).
_DIGITS_SHA256 = {
    "images": "8f26b2bd9d135c256808f68f14fdabddde6d9c7f869ae419704b051f0f14b3b3",
    "labels": "8ba4f891220f5e4c9c819638d1602d74b83618f167043c6da52a2a247841ddf0",
}


@register("digits", _COMMON, dict(normalize="unit"),
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
