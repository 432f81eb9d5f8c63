"""Numba kernels: pure functions over arrays and scalars (no configuration, no I/O).

rng.py holds the counter-based generator, noise.py the device-noise kernels, cpu.py the
network's elementwise kernels. Matrix products go to BLAS through numpy in the callers.
"""

from __future__ import annotations

import os
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


def _quiet_idle_workers() -> None:
    """Make numba's OpenMP workers sleep, not spin, between parallel kernels.

    A training step alternates numba kernels with BLAS matrix products, and the two use
    separate thread pools on the same cores. GNU OpenMP's default lets idle workers spin
    after each kernel, taking the cycles the next product's BLAS threads need (the README's
    design notes give the command that measures it). libgomp reads its wait policy once, when it is loaded, so the variable is set
    only while numba's OpenMP layer (and with it libgomp) is loaded here, without starting
    any thread (a process whose OpenMP threads run may not fork: the sweep's forkserver
    imports this module). It never leaks to other OpenMP runtimes loaded later (PyTorch's,
    MKL's) or to child processes. A policy the user set (OMP_WAIT_POLICY or
    GOMP_SPINCOUNT) is kept, and nothing changes when libgomp was already loaded by
    another library.
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        from numba.np.ufunc import omppool  # noqa: F401  (loads libgomp; starts nothing)
    except ImportError:  # no OpenMP layer here: numba uses another one, nothing to do
        pass
    finally:
        del os.environ["OMP_WAIT_POLICY"]


_quiet_idle_workers()
