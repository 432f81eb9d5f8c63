"""Compute backends: where the training step runs.

    cpu    numba kernels on the host's cores + numpy's BLAS (always available)
    cuda   numba.cuda kernels + cuBLAS through CuPy on an NVIDIA GPU
           (noisysim.kernels.cuda_backend; the engine is the same for both)
    auto   cuda when a GPU is usable and the run's step is large enough to gain from it
           (its matrix products reach AUTO_CUDA_MIN_GFLOP), else cpu; picking cuda is
           announced once per process

``resolve_backend(name)`` turns a configured name into "cpu" or "cuda" (or raises a one-line
``NoisysimError``); ``is_available(name)`` / ``cuda_status()`` say whether a backend can run
here and why not. Nothing here imports numba.cuda or CuPy until a question about cuda is
asked, and the answer is cached for the process.

The numba CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, used by the tests on machines without a
GPU) counts as a usable cuda backend only when "cuda" is asked for by name: "auto" never
picks the simulator, which is thousands of times slower than the CPU backend.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from .errors import NoisysimError, check_choice

BACKENDS = ("auto", "cpu", "cuda")

#: "auto" picks cuda for steps whose matrix products reach this many GFLOP (2 m k n each,
#: ``noisysim.bench.step_products``). Below it a step is bound by per-launch host costs on
#: the GPU, while the CPU does that much BLAS work in about 5-8 ms on 2 cores (the README's
#: benchmarks: 130-200 GFLOP/s): the H200 run of the previous cuda engine measured 10-14 ms
#: per step at such sizes. Provisional until experiments/gpu_check.sh, which times both
#: backends on the same runs, re-measures the crossover.
AUTO_CUDA_MIN_GFLOP = 1.0

_status: tuple[bool, str] | None = None
_announced = False


def simulated() -> bool:
    """Whether numba.cuda runs in its CPU simulator (NUMBA_ENABLE_CUDASIM=1)."""
    if "numba" in sys.modules:
        from numba.core import config

        return bool(config.ENABLE_CUDASIM)
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def cuda_status(refresh: bool = False) -> tuple[bool, str]:
    """(usable, detail): detail names the GPU when usable, else says what is missing.

    Usable means: numba.cuda imports and sees a GPU, and CuPy imports and sees one too
    (matrix products go to cuBLAS through CuPy). Under the simulator: numba.cuda imports
    (detail "numba CUDA simulator"; CuPy is not needed, numpy stands in for it).
    """
    global _status
    if _status is not None and not refresh:
        return _status
    _status = _probe()
    return _status


def _probe() -> tuple[bool, str]:
    try:
        from numba import cuda
    except Exception as exc:  # numba without its cuda target (or a broken install)
        return False, f"numba.cuda does not import ({_first_line(exc)}); pip install numba-cuda"
    if simulated():
        return True, "numba CUDA simulator"
    try:
        if not cuda.is_available():
            return False, "numba.cuda finds no usable GPU (no NVIDIA driver or device)"
    except Exception as exc:
        return False, f"numba.cuda cannot reach the GPU ({_first_line(exc)})"
    try:
        import cupy
    except Exception as exc:
        return False, (f"CuPy does not import ({_first_line(exc)}); install the CuPy wheel "
                       "matching the CUDA driver, e.g. pip install cupy-cuda12x")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            return False, "CuPy sees no GPU"
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:
        return False, f"CuPy cannot use the GPU ({_first_line(exc)})"
    return True, name


def is_available(name: str) -> bool:
    """Whether backend ``name`` ("cpu" or "cuda") can run in this process.

    The simulator counts (this is the explicit question; ``resolve_backend("auto")`` is the
    one that ignores it).
    """
    check_choice("backend", name, ("cpu", "cuda"))
    return True if name == "cpu" else cuda_status()[0]


def resolve_backend(name: str = "auto", announce: Callable[[str], None] | None = None,
                    step_gflop: float | None = None) -> str:
    """The backend to use for a configured ``name``: "cpu" or "cuda".

    "cpu" is always "cpu". "cuda" is "cuda" when usable (the simulator included), else a
    ``NoisysimError`` saying why. "auto" is "cuda" when a real GPU is usable and the step's
    matrix products (``step_gflop``, None: unknown) reach ``AUTO_CUDA_MIN_GFLOP``, else
    "cpu"; picking cuda is announced once per process through ``announce`` (default: one
    line on stderr).
    """
    global _announced
    name = check_choice("backend", name, BACKENDS)
    if name == "cpu":
        return "cpu"
    ok, detail = cuda_status()
    if name == "cuda":
        if not ok:
            raise NoisysimError(f"backend 'cuda' is not usable here: {detail}; use backend "
                                "'cpu' (or 'auto', which falls back to cpu)")
        return "cuda"
    if not ok or simulated():
        return "cpu"
    if step_gflop is not None and step_gflop < AUTO_CUDA_MIN_GFLOP:
        return "cpu"
    if not _announced:
        _announced = True
        (announce or _stderr)(f"noisysim: backend auto: using cuda on {detail}")
    return "cuda"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
