"""The statistics of one training step, and the verdict on it: one layout for both backends.

A training step accumulates everything the engine must know about it into one float64
array, ``stats`` (length ``size(L)`` for L layers), on the backend that runs the step:

    LOSS           mean over the batch of the reference pass's losses
    DL_MEAN        mean of the loss changes ell~ - ell over perturbed passes and samples
    DL_STD         their (population) standard deviation
    ACCURACY       fraction of correct argmax predictions of the reference pass
    BAD_LOSSES     non-finite reference losses
    grad_sq(l)     ||g_W_l||^2 + ||g_b_l||^2 of the rule's estimate
    grad_bad(l)    non-finite elements in that estimate
    update_sq(l)   ||Delta W_l||^2 + ||Delta b_l||^2 of the optimiser update
    param_bad(l)   non-finite parameters of layer l after the update
    decor_sq(l)    ||Delta R_l||^2 of the decorrelation step
    decor_bad(l)   non-finite elements of R_l - Delta R_l (then R_l is left as it was)
    writes         weights a non-ideal weight device wrote (noisysim.hardware.WeightDevice)
    clipped        sum of |requested - bounded| change the device's bounds cut off

``verdict`` turns them into a failure kind and layer, in the order the step's stages run:
a non-finite loss stops the step before anything changes, then a non-finite gradient, then
a gradient norm that overflows (finite elements, infinite norm), then a parameter made
non-finite by the update, then a decorrelation step that would make R non-finite.

The *guards* (``blocked``) say whether a stage may still change state: the optimiser runs
only when the loss and the gradients are sound; layer l's R changes only when, in addition,
no parameter and no R of layers <= l failed. On the GPU the kernels evaluate the guards
themselves, so a failure needs no host read to stop the updates; a ``failure`` record
(step, kind, layer) keeps the first failure of a run until the host reads it (on logged
steps), and every later update is blocked by it. On the CPU the same functions run on the
host after each stage. Pure numba: compiled for the CPU here and as device functions by
``noisysim.kernels.cuda``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

LOSS, DL_MEAN, DL_STD, ACCURACY, BAD_LOSSES = 0, 1, 2, 3, 4
HEAD = 5

# failure kinds (the record's second entry)
KIND_NONE, KIND_LOSS, KIND_GRADIENT, KIND_OVERFLOW, KIND_PARAMETER, KIND_DECORRELATION = range(6)
KINDS = ("none", "loss", "gradient", "overflow", "parameter", "decorrelation")

# stages, for ``blocked``: before the optimiser update; before R_l changes (l >= 0)
BEFORE_UPDATE = -1


def size(n_layers: int) -> int:
    return HEAD + 6 * n_layers + 2


def writes(n_layers: int) -> int:
    """Index of the weight device's write count (after the per-layer entries)."""
    return HEAD + 6 * n_layers


def clipped(n_layers: int) -> int:
    """Index of the weight device's clipped amount."""
    return HEAD + 6 * n_layers + 1


@njit(cache=True)
def grad_sq(n_layers, l):
    return HEAD + l


@njit(cache=True)
def grad_bad(n_layers, l):
    return HEAD + n_layers + l


@njit(cache=True)
def update_sq(n_layers, l):
    return HEAD + 2 * n_layers + l


@njit(cache=True)
def param_bad(n_layers, l):
    return HEAD + 3 * n_layers + l


@njit(cache=True)
def decor_sq(n_layers, l):
    return HEAD + 4 * n_layers + l


@njit(cache=True)
def decor_bad(n_layers, l):
    return HEAD + 5 * n_layers + l


@njit(cache=True)
def grad_norm_sq(stats, n_layers):
    """The global squared gradient norm, sum over layers of grad_sq(l)."""
    total = 0.0
    for l in range(n_layers):
        total += stats[grad_sq(n_layers, l)]
    return total


@njit(cache=True)
def verdict(stats, n_layers, upto):
    """(kind, layer) of the first failure among the stages before ``upto``: BEFORE_UPDATE
    looks at the loss and the gradients only; l >= 0 also at the parameters and at the R
    steps of layers 0..l-1 (the stages before R_l changes). (KIND_NONE, -1) when the step is
    sound so far."""
    L = n_layers
    if stats[BAD_LOSSES] > 0.0:
        return KIND_LOSS, -1
    for l in range(L):
        if stats[grad_bad(L, l)] > 0.0:
            return KIND_GRADIENT, l
    if not math.isfinite(grad_norm_sq(stats, L)):
        for l in range(L):
            if not math.isfinite(stats[grad_sq(L, l)]):
                return KIND_OVERFLOW, l
        return KIND_OVERFLOW, -1
    if upto < 0:
        return KIND_NONE, -1
    for l in range(L):
        if stats[param_bad(L, l)] > 0.0:
            return KIND_PARAMETER, l
    for l in range(min(upto, L)):
        if stats[decor_bad(L, l)] > 0.0:
            return KIND_DECORRELATION, l
    return KIND_NONE, -1


@njit(cache=True)
def blocked(stats, failure, n_layers, upto):
    """Whether a stage must leave the state alone: an earlier step of the run failed
    (``failure[1] != KIND_NONE``) or ``verdict(stats, n_layers, upto)`` found a failure."""
    if failure[1] != KIND_NONE:
        return True
    return verdict(stats, n_layers, upto)[0] != KIND_NONE


@njit(cache=True)
def record(stats, failure, n_layers, step):
    """Keep the step's failure in ``failure`` = (step, kind, layer) unless one is kept."""
    if failure[1] != KIND_NONE:
        return
    kind, layer = verdict(stats, n_layers, n_layers)
    if kind != KIND_NONE:
        failure[0] = step
        failure[1] = kind
        failure[2] = layer


def new_failure() -> np.ndarray:
    """An empty failure record: (step, kind, layer) = (0, KIND_NONE, -1)."""
    return np.array([0, KIND_NONE, -1], dtype=np.int64)
