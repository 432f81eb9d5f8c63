"""Per-sample losses on the network's outputs (the logits) and their gradients.

- ``cross_entropy``: ell_n = -log softmax(z_n)[y_n], targets are int class labels (B,).
- ``softmax_mse``: ell_n = (1/C) sum_c (softmax(z_n)_c - t_{n,c})^2 with t_n = onehot(y_n),
  targets are int class labels (B,): the DANP authors' squared error (their TF code).
- ``squared_error``: ell_n = 1/2 ||z_n - t_n||^2, targets are floats (B, N_L).

Outputs may hold P stacked passes of the same batch, shape (P * B, N_L): the B targets are
broadcast over the passes.
"""

from __future__ import annotations

import numpy as np

from .errors import NoisysimError, check_choice
from .kernels.backend import CPU

LOSSES = ("cross_entropy", "softmax_mse", "squared_error")
#: losses whose targets are integer class labels
CLASS_LOSSES = ("cross_entropy", "softmax_mse")


def check_targets(name: str, targets: np.ndarray, n_outputs: int) -> np.ndarray:
    """Return targets in the form the loss kernels take, or explain what is wrong."""
    check_choice("loss", name, LOSSES)
    targets = np.asarray(targets)
    if name in CLASS_LOSSES:
        if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
            raise NoisysimError(
                f"{name} targets must be a 1-D array of integer class labels, got "
                f"{targets.dtype} array of shape {targets.shape}"
            )
        if targets.size and (targets.min() < 0 or targets.max() >= n_outputs):
            raise NoisysimError(
                f"class labels must be in [0, {n_outputs - 1}] for {n_outputs} outputs, found "
                f"{int(targets.min())}..{int(targets.max())}; widen the output layer"
            )
        return np.ascontiguousarray(targets, dtype=np.int64)
    if targets.ndim != 2 or targets.shape[1] != n_outputs:
        raise NoisysimError(
            f"squared_error targets must have shape (B, {n_outputs}), got {targets.shape}"
        )
    return np.ascontiguousarray(targets, dtype=np.float64)


def loss(name: str, outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-row loss of outputs (R, N_L) against B targets (R a multiple of B); float64."""
    return CPU.loss(name, outputs, targets)


def loss_grad(name: str, outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """d ell_r / d outputs_r for every row (not divided by the batch size)."""
    return CPU.loss_grad(name, outputs, targets)
