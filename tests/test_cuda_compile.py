"""How the CUDA kernels compile, checked without a GPU (noisysim.kernels.cuda_compile).

numba-cuda compiles and links on the host: NVVM (LLVM IR -> PTX or LTO-IR) and nvJitLink
(-> cubin, running ptxas) come as pip wheels with ``numba-cuda[cu12]``, and nvdisasm (its
own wheel) disassembles a cubin into SASS, the machine code the GPU runs. Only two questions
a compilation asks the driver need an answer without one: the device's compute capability
(here 9.0, an H100/H200, so kernels build for sm_90a exactly as a launch there does) and
"load this cubin" (we stop at the cubin). Each check runs in a subprocess (this file as a
script) so that the stand-ins never reach the pytest process, whose numba may be in
simulator mode.

- ``test_machine_code_has_no_contracted_fma``: every kernel the cuda wrappers launch (and
  every ``exact_kernel`` of noisysim.kernels.cuda, cuda_conv and cuda_hardware must be among
  them) is compiled through its dispatcher's ``compile`` (what a first launch calls) and
  linked as a launch links it. Its PTX holds no ``fma`` (libm kernels excepted: libdevice's own code
  uses FMA), it is not linked through LTO, and its cubin is byte for byte the reference: the
  same PTX linked with contraction switched off in ptxas (``-fmad=false``). (Where the bytes
  differ, the SASS of both must hold the same FMA instructions.) The FMA that the SASS does
  hold come from correctly rounded division and square root (Newton steps after
  ``MUFU.RCP64H``), integer division and libdevice's own code, never from a contracted a * b
  + c. Controls on a test kernel ``a * x + y`` show the check can fail: compiled the default
  way (NVVM -fma=1, LTO), and compiled with NVVM -fma=0 but linked through LTO (the H200
  failure of issue 10: nvJitLink contracts again), its SASS holds FMA, where
  ``exact_kernel``'s holds none (also through ``specialize``).
- ``test_numba_cuda_compiles_without_numpy_row_stack``: numpy >= 2.5 has no
  ``np.row_stack``, which numba-cuda 0.30.4 registers at its first compile. numpy 2.5
  needs Python >= 3.12, so the test removes the name (from the module and its ``__all__``,
  numpy 2.5's state) before numba starts, and compiles a kernel.
- ``test_cuda_toolchain_installed``: the test extras bring numba-cuda, nvJitLink and
  nvdisasm, so the checks above (and tests/test_cuda.py's simulator twins, which need a
  numba cuda target) can never turn into skips in CI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter

import numpy as np
import pytest

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
CC = (9, 0)  # H100 / H200: numba-cuda builds for sm_90a
# Kernels calling libm (tanh, exp, log): libdevice implements those with FMA on purpose.
LIBM_KERNELS = {"_activation", "_derivative", "_cross_entropy", "_cross_entropy_grad",
                "_softmax_mse", "_softmax_mse_grad"}
# (HFMA2 is left out: ptxas writes ``HFMA2.MMA R, -RZ, RZ, imm`` to set registers, and no
# kernel computes in half precision)
SASS_FMA = re.compile(r"\b(DFMA|FFMA|FFMA32I)\b")


# ================================================================ the pytest side


def _script(mode: str, timeout: float = 600) -> list[dict]:
    """Run this file as a script in MODE (never in the simulator) and return its JSON lines;
    skip where the script says the toolchain is missing."""
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, HERE, mode], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    rows = [json.loads(x[4:]) for x in proc.stdout.splitlines() if x.startswith("OUT ")]
    if rows and "skip" in rows[0]:
        pytest.skip(rows[0]["skip"])
    assert rows and proc.returncode == 0, (
        f"{mode}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return rows


def test_cuda_toolchain_installed():
    rows = _script("--toolchain")
    missing = [r["detail"] for r in rows if not r["ok"]]
    assert not missing, "; ".join(missing) + " (pip install '.[test]' installs them)"


def test_numba_cuda_compiles_without_numpy_row_stack():
    (row,) = _script("--row-stack")
    assert row["ok"], row["detail"]


def test_machine_code_has_no_contracted_fma():
    rows = _script("--machine-code")
    controls = {r["kernel"]: r for r in rows if r.get("control")}
    kernels = [r for r in rows if not r.get("control")]
    # the check can fail: the test kernel a * x + y (no division, no square root, so its
    # contraction-free machine code holds no FMA) holds FMA when mis-compiled either way,
    # and none when compiled by exact_kernel
    assert controls["default"]["fma"], controls
    bug = controls["no_fma_but_lto"]  # issue 10's H200 failure
    assert bug["fma"] and not bug["reference_fma"] and not bug["identical"], bug
    for name in ("exact_kernel", "exact_specialized"):
        exact = controls[name]
        assert exact["identical"] and not exact["fma"] and not exact["lto"], exact
    bad = [r for r in kernels if not r["ok"]]
    assert not bad, bad
    assert len(kernels) >= 25, [r["kernel"] for r in kernels]


# ================================================================ the script side


def _emit(**row) -> None:
    print("OUT " + json.dumps(row), flush=True)


def _toolchain() -> list[tuple[bool, str]]:
    """(present, what) for each tool the machine-code check needs."""
    out = []
    try:
        from numba.cuda.cudadrv import driver, nvvm

        nvvm.NVVM()
        out.append((True, "NVVM"))
        out.append((driver._have_nvjitlink(), "nvJitLink (wheel nvidia-nvjitlink-cu12)"))
    except Exception as exc:
        out.append((False, f"numba-cuda with NVVM ({type(exc).__name__}: {exc})"[:300]))
    try:
        import importlib.metadata as md

        md.version("numba-cuda")
        out.append((True, "numba-cuda"))
    except Exception:
        out.append((False, "numba-cuda (numba's built-in cuda target is deprecated)"))
    out.append((_nvdisasm() is not None, "nvdisasm (wheel nvidia-cuda-nvdisasm)"))
    return out


def _nvdisasm() -> str | None:
    try:
        from cuda import pathfinder

        return pathfinder.find_nvidia_binary_utility("nvdisasm")
    except Exception:
        return None


def _skip_unless_toolchain() -> bool:
    missing = [what for ok, what in _toolchain() if not ok]
    if missing:
        _emit(skip="CUDA toolchain wheels missing: " + ", ".join(missing))
        return False
    return True


def _device_stand_in(cc=CC) -> None:
    """Let numba-cuda compile and link for compute capability ``cc`` with no GPU: its two
    device queries answer ``cc``, and binding a kernel stops at the linked cubin (which
    numba-cuda caches on the code library) instead of loading it into a context."""
    from numba.cuda import codegen, dispatcher

    class Device:
        compute_capability = cc

    class Context:
        device = Device()

    dispatcher.get_current_device = lambda: Device()
    codegen.devices.get_context = lambda: Context()
    dispatcher._Kernel.bind = lambda self: self._codelibrary.get_cubin()


def _sass_fma(cubin: bytes) -> dict:
    """FMA instructions in the SASS of a cubin, by opcode."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([_nvdisasm(), "--print-code", "--no-dataflow", f.name],
                              check=True, capture_output=True, text=True).stdout
    assert ".text." in sass, sass[:500]
    return dict(Counter(SASS_FMA.findall(sass)))


def _reference_cubin(ptx: str, arch: str) -> bytes:
    """``ptx`` linked by nvJitLink with ptxas' contraction switched off."""
    from cuda.core import Linker, LinkerOptions, ObjectCode

    options = LinkerOptions(arch=arch, ptxas_options=["-fmad=false"])
    return Linker(ObjectCode.from_ptx(ptx.encode(), name="reference"),
                  options=options).link("cubin").code


def _compiled(dispatcher, sig, count_fma=False) -> dict:
    """Compile ``dispatcher`` for ``sig`` as a first launch does, and compare the linked
    machine code with the reference link of the same PTX: identical bytes settle it;
    otherwise (and for ``count_fma``) the FMA instructions of both are counted."""
    kernel = dispatcher.compile(sig)
    lib = kernel.library
    cubin = lib.get_cubin().code  # cached by compile(): the cubin a launch would load
    ptx = lib.get_asm_str()  # the PTX NVVM wrote for it (cached too)
    reference = _reference_cubin(ptx, "sm_{}{}{}".format(*lib._ensure_cc(None)))
    row = {"identical": cubin == reference, "lto": bool(lib._lto),
           "ptx_fma": len(re.findall(r"\bfma\.", ptx)),
           "ptx_calls": "call" in ptx.split("{", 1)[1]}
    if count_fma or not row["identical"]:
        row["fma"], row["reference_fma"] = _sass_fma(cubin), _sass_fma(reference)
    return row


def _axpy(out, a, x, y):
    for i in range(out.shape[0]):
        out[i] = a * x[i] + y[i]


def _controls() -> None:
    import numba
    from numba import cuda

    from noisysim.kernels.cuda_compile import exact_fp, exact_kernel

    sig = (numba.float64[::1], numba.float64, numba.float64[::1], numba.float64[::1])
    _emit(control=True, kernel="default", **_compiled(cuda.jit(_axpy), sig, True))
    with exact_fp():
        _emit(control=True, kernel="no_fma_but_lto", **_compiled(cuda.jit(_axpy), sig, True))
    _emit(control=True, kernel="exact_kernel", **_compiled(exact_kernel(_axpy), sig, True))
    # specialize() compiles a new plain dispatcher: it must come out exact too
    x = np.zeros(4)
    special = exact_kernel(_axpy).specialize(x, 2.0, x, x)
    _emit(control=True, kernel="exact_specialized", **_compiled(special, sig, True))


def _launched_kernels() -> dict:
    """{(kernel name, numba signature): dispatcher} of every kernel the wrappers of
    noisysim.kernels.cuda, cuda_conv and cuda_hardware launch, recorded by calling
    each wrapper once with numpy stand-ins and a ``launch`` that only records."""
    import numba

    from noisysim.kernels import cuda as K
    from noisysim.kernels import cuda_conv as C
    from noisysim.kernels import cuda_hardware as H

    launched = {}

    def record(kernel, n, *args, blocks=None):
        sig = tuple(numba.typeof(K._nb(a)) for a in args)
        launched.setdefault((kernel.py_func.__name__, sig), kernel)

    K.launch = H.launch = C.launch = record
    f32, i64 = np.float32, np.int64
    a = np.zeros((2, 3, 5), f32)
    t = np.array([0, 1])
    flag = np.zeros(1, np.int32)
    K.fill_uniform(np.zeros(5), 7)
    K.fill_normal_rows(np.zeros((2, 5), f32), 1, 2, t, 0, 0.5)
    K.fill_normal_rows(np.zeros((2, 5)), 1, 2, t, 0, 0.5)  # float64: issue 10's case
    K.gaussian_apply(a, t, 1, 0, 0.0, 1.0, False)
    K.bernoulli_apply(a, t, 1, 0, 0.5, 1.0, 0.0, 2, False)
    K.telegraph_apply(a, t, np.zeros(3, i64), np.zeros((3, 5, 1), np.int8), 1, 0, 0.1, 1.0,
                      0.0, 0.0, 1.0, False)
    K.ou_apply(a, t, np.zeros(3, i64), np.zeros((3, 5, 1)), 1, 0, np.ones(1), np.ones(1),
               np.ones(1), 0.0)
    K.trace_apply(a, t, np.ones(4), True, 1, 0.0, 1.0)
    K.activation_forward(a, a.copy(), 9, 0.0, 0.0, 0.0, 1, 0, t)
    K.activation_derivative(a[0], a[0].copy(), 2, 0.01, 0, 0, 0, upstream=a[0].copy())
    K.add_bias_and_perturbation(a, np.zeros(5, f32), a.copy(), True, True)
    K.cross_entropy(a[0], np.zeros(3, i64), np.zeros(3))
    K.cross_entropy_grad(a[0], np.zeros(3, i64), a[0].copy())
    K.softmax_mse(a[0], np.zeros(3, i64), np.zeros(3))
    K.softmax_mse_grad(a[0], np.zeros(3, i64), a[0].copy())
    K.squared_error(a[0], np.zeros((3, 5)), np.zeros(3))
    K.squared_error_grad(a[0], np.zeros((3, 5)), a[0].copy())
    K.diff_squared_norm(a, 1, np.zeros((1, 3)))
    K.loss_scale(np.zeros((2, 3)), 1, np.zeros((1, 3), f32), sq=np.zeros((1, 3)), factor=3.0)
    K.node_coefficients(a, 1, True, np.zeros((1, 3), f32), f32(0.5), a[0].copy())
    stats, failure = np.zeros(11), np.zeros(3, i64)
    flat, starts, seg = a[0].reshape(-1), np.array([0, 10, 15], i64), np.zeros(2, i64)
    K.step_stats(np.zeros((2, 3)), a[0], np.zeros(3, i64), stats, True)
    K.arena_gradient_norms(flat, starts, seg, stats, failure, 1, 1.0, np.ones(1, f32), flag)
    table = np.ones(3, f32)
    K.arena_adam(flat, flat, flat, flat, starts, seg, 1, np.ones(1, f32), flag,
                 *(f32(1),) * 4, 1, 1, table, table, f32(1), stats)
    K.arena_sgd(flat, flat, flat, starts, seg, 1, np.ones(1, f32), flag, 0.0, 0.9, True, 1,
                1, table, stats)
    K.gather_batch(a[0], np.zeros(3, i64), np.arange(3), 0, a[0].copy(), np.zeros(3, i64))
    K.advance_clock(a, 2)
    K.decorrelation_delta(np.zeros((5, 5), f32), np.zeros(5, f32), np.zeros((5, 5), f32),
                          0.1, 0.1, 0.1, 0.1, stats, failure, 1, 0)
    K.apply_delta(np.zeros((5, 5), f32), np.zeros((5, 5), f32), stats, failure, 1, 0)
    K.record(stats, failure, 1, 3)
    xs, ys = np.linspace(-1.0, 1.0, 4), np.linspace(0.0, 1.0, 4)
    H.table_forward(a[0], a[0].copy(), xs, ys)
    H.table_derivative(a[0], a[0].copy(), xs, ys, False, upstream=a[0].copy())
    H.readout(a, a.copy(), 0.1, 255.0, -4.0, 8.0 / 255, 1, 0, t)
    args = (1, 0.1, -1.0, 1.0, 0.2, 0.01, 256.0, False)  # WeightDevice.kernel_args()
    H.weight_write(a[0], a[0].copy(), args, 1, 2, flag, stats, 9, 10)
    for dtype in (f32, np.float64):  # the conv kernels: images (2, 4 * 4 * 2), k = 3
        x, cols = np.zeros((2, 32), dtype), np.zeros((8, 18), dtype)
        C.im2col(x, (4, 4, 2), 3, 1, 0, cols)
        C.col2im(cols, (4, 4, 2), 3, 1, 0, x.copy())
        C.pool_forward(x, (4, 4, 2), "max", 2, 2, np.zeros((2, 8), dtype))
        C.pool_backward(np.zeros((2, 8), dtype), x, (4, 4, 2), "avg", 2, 2, x.copy())
    return launched


def _run_machine_code() -> int:
    if not _skip_unless_toolchain():
        return 0
    _device_stand_in()
    _controls()
    from noisysim.kernels import cuda as K
    from noisysim.kernels import cuda_conv as C
    from noisysim.kernels import cuda_hardware as H
    from noisysim.kernels.cuda_compile import ExactDispatcher

    launched = _launched_kernels()
    kernels = {name for module in (K, C, H) for name, v in vars(module).items()
               if isinstance(v, ExactDispatcher)}
    missing = sorted(kernels - {name for name, _ in launched})
    _emit(kernel="(every exact kernel of noisysim.kernels.cuda, cuda_conv, cuda_hardware)",
          ok=not missing,
          detail=f"no wrapper call in _launched_kernels launches {missing}")
    for (name, sig), dispatcher in launched.items():
        try:
            row = _compiled(dispatcher, sig)
            libm = name in LIBM_KERNELS
            problems = []
            if not libm and (row["ptx_fma"] or row["ptx_calls"]):
                problems.append("fma or a call in the PTX")
            if not row["identical"] and row["fma"] != row["reference_fma"]:
                problems.append("contracted FMA in the SASS")
            if row["lto"]:
                problems.append("linked through LTO")
            _emit(kernel=name, sig=str(sig), ok=not problems, detail="; ".join(problems),
                  **row)
        except Exception as exc:
            _emit(kernel=name, sig=str(sig), ok=False,
                  detail=f"{type(exc).__name__}: {str(exc)[-800:]}")
    return 0


def _run_row_stack() -> int:
    """Compile a kernel with numba-cuda as numpy >= 2.5 would leave it: no np.row_stack."""
    if hasattr(np, "row_stack"):  # numpy < 2.5: remove the name as numpy 2.5 did
        del np.row_stack
        np.__all__.remove("row_stack")
    if not _skip_unless_toolchain():
        return 0
    _device_stand_in()
    import numba

    try:
        from noisysim.kernels.cuda_compile import exact_kernel

        sig = (numba.float64[::1], numba.float64, numba.float64[::1], numba.float64[::1])
        exact_kernel(_axpy).compile(sig)
    except Exception as exc:
        _emit(ok=False, detail=f"{type(exc).__name__}: {str(exc)[-800:]}")
        return 0
    # the compatibility alias does not outlive the import that needed it
    _emit(ok=not hasattr(np, "row_stack"), detail="np.row_stack left behind")
    return 0


def _run_toolchain() -> int:
    for ok, what in _toolchain():
        _emit(ok=ok, detail=f"{what} not installed")
    return 0


if __name__ == "__main__":
    modes = {"--machine-code": _run_machine_code, "--row-stack": _run_row_stack,
             "--toolchain": _run_toolchain}
    sys.exit(modes[sys.argv[1]]())
