"""Numba kernels: pure functions over arrays and scalars (no configuration, no I/O).

rng.py holds the counter-based generator, noise.py the device-noise kernels, cpu.py the
network's elementwise kernels. Matrix products go to BLAS through numpy in the callers.
"""

from __future__ import annotations

import types

from numba import njit

# Below this many elements (~0.2 ms of elementwise work) a parallel launch costs more than
# it saves, and much more when other processes share the cores. Kernels give the
# same values on either path: every draw depends only on its key, never on the thread.
PARALLEL_MIN_SIZE = 1 << 18


def serial_twin(kernel, **options):
    """A serial compilation of a ``parallel=True`` kernel (its ``prange`` runs as ``range``).

    The twin is a copy of the Python function under its own qualified name, so that
    numba's on-disk cache keeps the two compilations apart.
    """
    f = kernel.py_func
    g = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__,
                           f.__closure__)
    g.__qualname__ = f.__qualname__ + "_serial"
    g.__doc__ = f.__doc__
    return njit(**options)(g)
