"""How noisysim's CUDA kernels are compiled: the numba-cuda compatibility shim and exact
floating point.

Exact floating point. The cuda twins must give the CPU kernels' results bit for bit wherever
the CPU is exact (draws, noise, + - * / sqrt on them; see ``noisysim.kernels.cuda``). The CPU
kernels (``fastmath=False``) round every product and every sum, so the GPU code must never
contract a * b + c into one fused multiply-add (FMA rounds once). Two compilers can contract
on the way from Python to machine code, and ``exact_kernel`` switches both off:

1. NVVM (LLVM IR -> PTX) contracts by default (``-fma=1``) and numba-cuda has no switch for
   it, so ``nvvm.compile_ir`` is wrapped to add ``fma=False`` while an exact kernel compiles
   (``exact_fp``). NVVM then writes ``mul.rn`` / ``add.rn``, which ptxas never contracts: PTX
   arithmetic with an explicit rounding modifier is not a candidate for FMA contraction.
2. nvJitLink. numba-cuda (0.30.4 at least) links a kernel through link-time optimisation
   whenever nvJitLink is installed (``cuda.jit(lto=None)``: "LTO if nvJitLink is available").
   With LTO, NVVM writes LTO-IR (no PTX), and nvJitLink generates the code itself with its
   own default ``-fma=1``: the -fma=0 of step 1 is lost, and on an H200 (numba-cuda 0.30.4)
   ``_scaled_normal_rows`` held 52 DFMA. ``exact_kernel`` compiles with ``lto=False``: the
   PTX of step 1 is what the linker assembles. NVVM compiles a kernel together with its
   device functions (one call, all their IR), and noisysim's kernels link no other code, so
   LTO had nothing left to optimise across.
   (nvJitLink's own ``-fma=0`` also works, but numba-cuda does not pass linker options, and
   cuda.core 1.2's ``LinkerOptions(fma=False)`` writes ``-fma=false``, which nvJitLink
   rejects.)

Division and square root stay correctly rounded (``prec_div`` / ``prec_sqrt`` are on when
``fastmath=False``); ptxas implements them with FMA-based Newton steps (``MUFU.RCP64H`` then
``DFMA``), so the machine code of an exact kernel may hold FMA instructions that round exactly
as IEEE division does. tests/test_cuda_compile.py tells them apart by linking the same PTX
once more with ptxas' ``-fmad=false``.

numpy >= 2.5 removed ``np.row_stack``, which numba-cuda 0.30.4 still registers an overload
for (``numba/cuda/np/arrayobj.py``, at the first kernel compile): ``_import_numba_cuda_arrays``
imports that module once with ``np.row_stack`` aliased to ``np.vstack`` (what the name meant)
and removes the alias again, so no other code sees it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import threading

import numpy as np
from numba.core import config as _numba_config

SIMULATED = bool(_numba_config.ENABLE_CUDASIM)


def _import_numba_cuda_arrays() -> None:
    """Import numba-cuda's array implementations, under a temporary ``np.row_stack`` alias
    where numpy no longer has the name (numpy >= 2.5); a no-op elsewhere."""
    if SIMULATED or hasattr(np, "row_stack"):
        return
    try:
        found = importlib.util.find_spec("numba.cuda.np.arrayobj") is not None
    except ModuleNotFoundError:  # numba's built-in cuda target has no numba.cuda.np
        found = False
    if not found:
        return
    np.row_stack = np.vstack
    try:
        importlib.import_module("numba.cuda.np.arrayobj")
    finally:
        del np.row_stack


_import_numba_cuda_arrays()

from numba import cuda  # noqa: E402  (after the shim: numba.cuda may import arrayobj)

_compile_state = threading.local()


def _install_no_fma() -> None:
    """Wrap ``nvvm.compile_ir`` (once) so that it compiles with -fma=0 inside ``exact_fp``."""
    if SIMULATED:
        return
    from numba.cuda.cudadrv import nvvm

    if getattr(nvvm.compile_ir, "_noisysim_no_fma", False):
        return
    original = nvvm.compile_ir

    def compile_ir(llvmir, **options):
        if getattr(_compile_state, "depth", 0):
            options["fastmath"] = False
            options["fma"] = False
        return original(llvmir, **options)

    compile_ir._noisysim_no_fma = True
    compile_ir.__wrapped__ = original
    nvvm.compile_ir = compile_ir


@contextlib.contextmanager
def exact_fp():
    """NVVM compilations started inside (in this thread) use -fma=0. ``exact_kernel``
    dispatchers enter it themselves; ``cuda.compile_ptx`` callers (tests) may too."""
    _install_no_fma()
    _compile_state.depth = getattr(_compile_state, "depth", 0) + 1
    try:
        yield
    finally:
        _compile_state.depth -= 1


if not SIMULATED:
    from numba.cuda.dispatcher import CUDADispatcher

    class ExactDispatcher(CUDADispatcher):
        """A CUDA kernel dispatcher that compiles every overload inside ``exact_fp``.

        ``compile`` is what a launch with new argument types calls (through
        ``_compile_for_args``), and what explicit compilation calls; ``specialize`` makes a
        plain dispatcher and compiles it, so it is wrapped too. A launch of an overload
        that exists never reaches Python code here."""

        def compile(self, sig):
            with exact_fp():
                return super().compile(sig)

        def specialize(self, *args):
            with exact_fp():
                return super().specialize(*args)


def exact_kernel(func):
    """``cuda.jit`` for a kernel whose floating-point arithmetic must round as the CPU
    twin's does: no FMA contraction by NVVM (-fma=0) nor by nvJitLink (no LTO), precise
    division and square root (``fastmath=False``). Use as a decorator in place of
    ``@cuda.jit``. Under the simulator it is plain ``cuda.jit``."""
    if SIMULATED:
        return cuda.jit(func)
    # numba's deprecated built-in cuda target (numba without numba-cuda) has no lto option
    # and never links through LTO
    no_lto = {"lto": False} if "lto" in inspect.signature(cuda.jit).parameters else {}
    plain = cuda.jit(func, fastmath=False, **no_lto)
    return ExactDispatcher(plain.py_func, targetoptions=plain.targetoptions)
