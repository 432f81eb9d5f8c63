"""The array module of the cuda backend: CuPy on a GPU, numpy under the numba simulator.

Matrix products go to cuBLAS through ``xp.matmul`` on CuPy arrays; the numba kernels of
``noisysim.kernels.cuda`` work on the same memory through the CUDA array interface. Under
``NUMBA_ENABLE_CUDASIM=1`` (tests on machines without a GPU) numpy stands in for CuPy, so the
kernels run in numba's simulator on host arrays and the products are numpy's.
"""

from __future__ import annotations

import numpy as np

from ..kernels.cuda import SIMULATED

if SIMULATED:
    xp = np
else:  # pragma: no cover - needs a GPU
    import cupy as xp

__all__ = ["xp", "SIMULATED", "to_device", "to_host", "synchronize", "empty", "zeros"]


def to_device(a, dtype=None):
    """A C-contiguous device copy of a host array (or a device array, converted if needed)."""
    if SIMULATED:
        return np.array(a, dtype=dtype, order="C", copy=True)
    return xp.ascontiguousarray(xp.asarray(a, dtype=dtype))


def to_host(a) -> np.ndarray:
    """A host (numpy) copy of a device array; waits for the work that writes it."""
    if SIMULATED:
        return np.array(a, copy=True)
    return xp.asnumpy(a)


def synchronize() -> None:
    """Wait until every queued kernel and product has finished (for timing)."""
    if not SIMULATED:
        xp.cuda.Device().synchronize()


def empty(shape, dtype):
    return xp.empty(shape, dtype=dtype)


def zeros(shape, dtype):
    return xp.zeros(shape, dtype=dtype)
