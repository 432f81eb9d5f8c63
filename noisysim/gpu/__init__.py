"""The cuda backend: the training step on an NVIDIA GPU.

numba.cuda kernels (``noisysim.kernels.cuda``) for everything that is not a matrix product,
cuBLAS through CuPy for the products; parameters, optimiser state, noise state and data stay
on the GPU across steps. Under ``NUMBA_ENABLE_CUDASIM=1`` the same code runs in numba's
simulator with numpy arrays (tests on machines without a GPU).

The names below import numba.cuda (and CuPy on real hardware) on first use; check
``noisysim.backends.resolve_backend("cuda")`` first.

    session = CudaSession(trainer)                     # after Trainer(...) is built
    failure = session.train_rows(order, start, stop)   # or session.train_step(x, y)
    outputs = session.infer(x, noisy)                  # host array
    session.pull()                                     # before trainer.state_dict()
    session.push()                                     # after trainer.load_state_dict()
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CudaDevice": "device", "GpuMeasurement": "device", "GpuLayer": "device",
    "CudaSession": "engine", "check_supported": "engine",
    "DeviceNoise": "noise",
    "CudaOptimizer": "optim", "CudaDecorrelator": "optim",
    "FAMILIES": "rules", "estimate": "rules", "supports": "rules",
    "bench_cuda": "bench",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
