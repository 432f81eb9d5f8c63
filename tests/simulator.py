"""Running numba's CUDA simulator quickly and safely (the tests without a GPU).

The simulator runs a block's GPU threads as Python threads and waits for them at every
``__syncthreads()`` by polling them from the main thread, which keeps the GIL for a whole
switch interval (5 ms by default) before a GPU thread can move on. Kernels with block
reductions wait at many barriers: a 50 us interval makes the cuda engine tests about 5x
faster. Only the scheduling of Python threads changes, not what any thread computes - once
the simulator's shared arrays are allocated atomically (below), which its threads need under
any preemption.
"""

from __future__ import annotations

import sys
import threading
import traceback

import numpy as np

SWITCH_INTERVAL = 5e-5


def quick_and_safe() -> None:
    """Shorten the GIL's switch interval and lock the shared-array allocation. Call after
    NUMBA_ENABLE_CUDASIM=1 is set and before the first kernel runs."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    _lock_shared_arrays()


def _lock_shared_arrays() -> None:
    """numba's simulator allocates a block's shared array on the first thread that asks,
    with an unlocked check-then-insert: two threads preempted in between get different
    arrays and a block reduction silently mixes them. Make the allocation atomic."""
    from numba.cuda.simulator import kernelapi

    original = kernelapi.FakeCUDAShared.array
    if getattr(original, "locked", False):
        return
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:
            return original(self, shape, dtype, alignment)
        if not isinstance(dtype, np.dtype):
            from numba.np import numpy_support

            dtype = numpy_support.as_dtype(dtype) if not isinstance(dtype, type) else dtype
        # the simulator keys a shared array by the kernel line that asks for it
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    array.locked = True
    kernelapi.FakeCUDAShared.array = array
