"""Counter-based random numbers: every draw is a pure function of its key.

A draw is addressed by five non-negative integer counters::

    key     = key(seed, stream, step, layer)        # uint64, one per array / purpose
    bits    = random_bits(key, element)              # uint64, one per element

so a result never depends on how many threads ran, in which order elements were visited,
or which backend (CPU now, ``numba.cuda`` later) computed it.

Key layout and hash
-------------------
``mix64`` is the SplitMix64 finaliser (Stafford's "Mix13": xor-shift 30, multiply,
xor-shift 27, multiply, xor-shift 31), a bijection of uint64 with full avalanche. The
counters are absorbed one at a time, each multiplied by its own odd constant (a bijection)
and xor-ed into the running state before the next ``mix64``::

    h = mix64(seed ^ K_SEED)
    h = mix64(h ^ stream * K_STREAM)
    h = mix64(h ^ step * K_STEP)
    key = mix64(h ^ layer * K_LAYER)
    random_bits(key, element) = mix64(key ^ element * K_ELEMENT)

For a fixed prefix every stage is a bijection of its counter, so two different counters at
one stage never collide. The element is xor-ed in rather than added (as SplitMix64 does)
because with addition two keys whose difference happens to be a multiple of the increment
would produce the same sequence shifted by a few elements.

Uniforms
--------
``uniform(key, e) = (2 * (bits >> 12) + 1) * 2**-53``: the odd multiples of 2**-53, i.e. the
centres of 2**52 equal cells of (0, 1). Every value is exact, the interval is open at both
ends, the set is symmetric under u -> 1 - u and its mean is exactly 1/2. (The tempting
``((bits >> 11) + 0.5) * 2**-53`` rounds to 1.0 at the top of the range: 2**53 - 0.5 needs 54
significant bits.)

Normals
-------
Box-Muller on two uniforms drawn from a domain-separated key (``key ^ NORMAL_DOMAIN``), so
``normal_array`` and ``uniform_array`` with the same counters are independent::

    u1 = uniform(key ^ NORMAL_DOMAIN, 2 * pair), u2 = uniform(key ^ NORMAL_DOMAIN, 2 * pair + 1)
    r = sqrt(-2 ln u1);  (z0, z1) = (r cos 2 pi u2, r sin 2 pi u2)

``ln`` and ``sincos`` are written here in plain float64 ``+ - * /`` and ``math.sqrt`` (all
correctly rounded in IEEE 754, on CPUs and on GPUs) instead of calling libm, whose last bit
differs between platforms and from CUDA's libdevice:

* ln: exact range reduction u1 = m * 2**e with m in [sqrt(1/2), sqrt(2)) by six branch-free
  multiplications by powers of two, then fdlibm's ``e_log.c`` kernel (s = f / (2 + f),
  degree-14 minimax polynomial in s, ln 2 split in a high part with trailing zeros and a low
  part). Measured error < 1 ulp (0.81 over 2e5 draws and the edge cases).
* sincos(2 pi u2): u2's 52 random bits give the octant (top 3 bits) and an exact fraction of
  pi/4 inside it (the other 49 bits, reflected in odd octants), so the reduced argument lies
  in (0, pi/4) with no cancellation; then fdlibm's ``k_sin.c`` / ``k_cos.c`` polynomials.
  Measured error < 2 ulps, relative, also next to the zeros of sin and cos (where the
  textbook cos(2 * pi * u) loses all relative accuracy).

z0 and z1 are within 3 ulps of a long-double Box-Muller on the same uniforms. The smallest
u1 is 2**-53, so |z| <= sqrt(106 ln 2) = 8.57 (a 1e-17 tail is cut).

Calling from other kernels
--------------------------
Compute ``k = key(seed, stream, step, layer)`` once (in Python or njit), then per element
``uniform(k, i)`` / ``normal(k, i)``, per pair ``normal_pair(k, p)`` (twice as fast as two
``normal`` calls), or fill a 1-D buffer with ``fill_normal(out, k, offset)`` (threads) or
``fill_normal_serial`` (inside your own prange loop). The scalar functions are
``inline="always"`` so they vectorise in the caller's loop.

Portability contract
--------------------
The scalar functions use only integer/float arithmetic, ``math.sqrt``, comparisons and
ternaries on scalars, with explicit ``np.uint64`` casts of every counter, constant and shift
(numba types uint64 op int64 as float64). On the CPU, ``fastmath=False`` keeps LLVM from
contracting a*b+c into an FMA. NVVM contracts by default, and so does nvJitLink when a
kernel is linked through LTO, so a CUDA twin must compile the same ``.py_func`` with
``fastmath=False``, the NVVM option ``fma=False`` and no LTO
(``noisysim.kernels.cuda_compile.exact_kernel``): the PTX then holds only
``mul.rn``/``add.rn``/``div.rn``/``sqrt.rn`` and no libdevice calls, and ptxas assembles it
without contraction (tests/test_cuda_compile.py checks the sm_90a machine code). The
compiled results are also identical to running the same source as plain Python
(``NUMBA_DISABLE_JIT=1``), which the tests check bit for bit.

This is a statistical generator for simulation, NOT a cryptographic one: keys and outputs
are trivially predictable and invertible.
"""

from __future__ import annotations

import math
import operator

import numpy as np
from numba import njit, prange

from ..errors import NoisysimError, check_choice, check_number
from . import PARALLEL_MIN_SIZE

__all__ = [
    "STREAM_NOISE",
    "STREAM_NOISE_INIT",
    "STREAM_PERTURB",
    "STREAM_ACTIVATION",
    "STREAM_INIT",
    "STREAM_SHUFFLE",
    "STREAM_DATA",
    "STREAM_USER",
    "STREAM_READOUT",
    "STREAM_WRITE",
    "STREAM_VARIABILITY",
    "mix64",
    "key",
    "random_bits",
    "uniform",
    "normal_pair",
    "normal",
    "fill_uniform",
    "fill_normal",
    "fill_uniform_serial",
    "fill_normal_serial",
    "uniform_array",
    "normal_array",
]

STREAM_NOISE = 1  # intrinsic device noise, per time step
STREAM_NOISE_INIT = 2  # initial states of stateful noise processes
STREAM_PERTURB = 3  # perturbations injected by learning rules
STREAM_ACTIVATION = 4  # stochastic activations (binary_stochastic)
STREAM_INIT = 5  # weight initialisation
STREAM_SHUFFLE = 6  # data order
STREAM_DATA = 7  # generated datasets (teacher)
STREAM_USER = 8  # anything else (tests, experiments)
# Hardware realism (noisysim.hardware): the read-out channel and the weight-update devices.
STREAM_READOUT = 9  # read-out noise of measured pre-activations (layer l) and losses (L)
STREAM_WRITE = 10  # weight writes: pulse rounding (layer 2l) and write noise (2l + 1)
STREAM_VARIABILITY = 11  # per-node fixed device parameters, drawn once (step 0, layer l)

# numba freezes module globals into the compiled code as constants; they are np.uint64 so
# that no expression ever mixes signed and unsigned 64-bit integers (which numba would
# silently promote to float64).
_MIX_M1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_M2 = np.uint64(0x94D049BB133111EB)
_SH30 = np.uint64(30)
_SH27 = np.uint64(27)
_SH31 = np.uint64(31)
_SH12 = np.uint64(12)
_SH49 = np.uint64(49)
_ONE_U = np.uint64(1)

# Distinct odd multipliers, one per counter (odd => multiplication is a bijection mod 2**64).
_K_SEED = np.uint64(0x9E3779B97F4A7C15)  # golden ratio
_K_STREAM = np.uint64(0xD1B54A32D192ED03)
_K_STEP = np.uint64(0xAEF17502108EF2D9)
_K_LAYER = np.uint64(0xDB4F0B9175AE2165)
_K_ELEMENT = np.uint64(0xC2B2AE3D27D4EB4F)
# Keeps normals independent of uniforms drawn with the same counters.
_NORMAL_DOMAIN = np.uint64(0x5851F42D4C957F2D)

_MASK49 = np.uint64((1 << 49) - 1)
_TWO_POW_50_U = np.uint64(1 << 50)

_TWO_M50 = 2.0**-50
_TWO_M53 = 2.0**-53

# sqrt(2) * 2**-s: thresholds of the binary search that normalises u1 (rounded constants are
# fine: CPU and GPU compare against the same doubles, and the log kernel is accurate a few
# ulps beyond [sqrt(1/2), sqrt(2))).
_SQRT2_M32 = math.sqrt(2.0) * 2.0**-32
_SQRT2_M16 = math.sqrt(2.0) * 2.0**-16
_SQRT2_M8 = math.sqrt(2.0) * 2.0**-8
_SQRT2_M4 = math.sqrt(2.0) * 2.0**-4
_SQRT2_M2 = math.sqrt(2.0) * 2.0**-2
_SQRT2_M1 = math.sqrt(2.0) * 2.0**-1

# fdlibm e_log.c
_LN2_HI = 6.93147180369123816490e-01  # 32 trailing zero bits: e * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01

# pi/4 = _PI4_HI + _PI4_LO (the low word keeps the reduced argument within 0.5 ulp)
_PI4_HI = 7.85398163397448278999e-01
_PI4_LO = 3.06161699786838301793e-17

# fdlibm k_sin.c / k_cos.c (valid on |x| <= pi/4)
_S1 = -1.66666666666666324348e-01
_S2 = 8.33333333332248946124e-03
_S3 = -1.98412698298579493134e-04
_S4 = 2.75573137070700676789e-06
_S5 = -2.50507602534068634195e-08
_S6 = 1.58969099521155010221e-10
_C1 = 4.16666666666666019037e-02
_C2 = -1.38888888888741095749e-03
_C3 = 2.48015872894767294178e-05
_C4 = -2.75573143513906633035e-07
_C5 = 2.08757232129817482790e-09
_C6 = -1.13596475577881948265e-11

# fastmath=False: no FMA contraction, no reassociation (bit-exact reproducibility);
# error_model="numpy": no zero-division checks, so the array loops stay branch-free and
# vectorise (no divisor here can be zero).
_SCALAR = dict(cache=True, fastmath=False, error_model="numpy", nogil=True)
_PARALLEL = dict(_SCALAR, parallel=True)
# LLVM declines to inline the Box-Muller helpers (numba passes results and exception
# status through pointers), which blocks vectorisation of the array loops; numba-level
# inlining of the small scalar functions makes fill_normal several times faster.
_INLINE = dict(_SCALAR, inline="always")


# --------------------------------------------------------------------------- hashing


@njit(**_INLINE)
def mix64(z):
    """SplitMix64 / Stafford Mix13 finaliser: a uint64 -> uint64 bijection."""
    z = np.uint64(z)
    z = (z ^ (z >> _SH30)) * _MIX_M1
    z = (z ^ (z >> _SH27)) * _MIX_M2
    return z ^ (z >> _SH31)


@njit(**_SCALAR)
def key(seed, stream, step, layer):
    """uint64 key of the counters (seed, stream, step, layer); all must be >= 0.

    Negative counters wrap modulo 2**64 under numba (the Python wrappers refuse them).
    """
    h = mix64(np.uint64(seed) ^ _K_SEED)
    h = mix64(h ^ (np.uint64(stream) * _K_STREAM))
    h = mix64(h ^ (np.uint64(step) * _K_STEP))
    return mix64(h ^ (np.uint64(layer) * _K_LAYER))


@njit(**_INLINE)
def random_bits(key, element):
    """64 random bits (uint64) for ``element`` (>= 0) of ``key``."""
    return mix64(np.uint64(key) ^ (np.uint64(element) * _K_ELEMENT))


@njit(**_INLINE)
def _unit_from_bits(bits):
    # Odd multiples of 2**-53; the integer is < 2**53, so both conversions are exact (the
    # int64 detour avoids numba's slower unsigned -> float path).
    return float(np.int64(((bits >> _SH12) << _ONE_U) | _ONE_U)) * _TWO_M53


@njit(**_INLINE)
def uniform(key, element):
    """Uniform float64 in the open interval (0, 1): (2 * (bits >> 12) + 1) * 2**-53."""
    return _unit_from_bits(random_bits(key, element))


# --------------------------------------------------------------------------- libm-free math
# GPU twin: every polynomial below must be evaluated step by step exactly as written, each
# operation rounded to nearest (fastmath=False, no FMA contraction: __dmul_rn / __dadd_rn).


@njit(**_INLINE)
def _log_unit(u):
    """ln(u) for 2**-64 < u < sqrt(2), in plain arithmetic (fdlibm e_log.c kernel)."""
    # u = m * 2**e with m in [sqrt(1/2), sqrt(2)): greedy binary search over the exponent;
    # multiplying by a power of two is exact, and selects keep the code branch-free so the
    # array loops vectorise.
    m = u
    e = 0.0
    c = m < _SQRT2_M32
    m = m * 4294967296.0 if c else m
    e = e - 32.0 if c else e
    c = m < _SQRT2_M16
    m = m * 65536.0 if c else m
    e = e - 16.0 if c else e
    c = m < _SQRT2_M8
    m = m * 256.0 if c else m
    e = e - 8.0 if c else e
    c = m < _SQRT2_M4
    m = m * 16.0 if c else m
    e = e - 4.0 if c else e
    c = m < _SQRT2_M2
    m = m * 4.0 if c else m
    e = e - 2.0 if c else e
    c = m < _SQRT2_M1
    m = m * 2.0 if c else m
    e = e - 1.0 if c else e
    # ln(m) = ln(1 + f) = 2 atanh(s), s = f / (2 + f); f = m - 1 is exact (Sterbenz).
    f = m - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    # fdlibm splits the polynomial in z into even and odd parts in w = z**2 (shorter
    # dependency chains); each part is a Horner scheme.
    t1 = _LG6
    t1 = _LG4 + w * t1
    t1 = _LG2 + w * t1
    t1 = w * t1
    t2 = _LG7
    t2 = _LG5 + w * t2
    t2 = _LG3 + w * t2
    t2 = _LG1 + w * t2
    t2 = z * t2
    r = t2 + t1
    # e * ln2 in two parts keeps the result within 1 ulp for every exponent.
    return e * _LN2_HI - ((hfsq - (s * (hfsq + r) + e * _LN2_LO)) - f)


@njit(**_INLINE)
def _sin_kernel(x):
    """sin(x) for |x| <= pi/4 (fdlibm k_sin.c with no tail)."""
    z = x * x
    v = z * x
    r = _S6
    r = _S5 + z * r
    r = _S4 + z * r
    r = _S3 + z * r
    r = _S2 + z * r
    return x + v * (_S1 + z * r)


@njit(**_INLINE)
def _cos_kernel(x):
    """cos(x) for |x| <= pi/4 (FreeBSD k_cos.c with no tail)."""
    z = x * x
    w = z * z
    r1 = _C3
    r1 = _C2 + z * r1
    r1 = _C1 + z * r1
    r2 = _C6
    r2 = _C5 + z * r2
    r2 = _C4 + z * r2
    r = z * r1 + w * w * r2
    hz = 0.5 * z
    w = 1.0 - hz
    # 1 - hz loses the low bits of hz; ((1 - w) - hz) recovers them exactly.
    return w + (((1.0 - w) - hz) + z * r)


@njit(**_INLINE)
def _sincos_turn(bits):
    """(sin 2 pi u, cos 2 pi u) for u = _unit_from_bits(bits), reduced exactly.

    u = (2k + 1) 2**-53 with k = bits >> 12 (52 bits): the top 3 bits of k are the octant,
    the low 49 bits give the position inside it as the odd integer j, x = j 2**-50 in (0, 1),
    angle = (octant + x) pi/4. In odd octants we use the distance to the next multiple of
    pi/4 (2**50 - j, exact) so the kernel argument always lies in (0, pi/4).
    """
    k = bits >> _SH12
    octant = np.int64(k >> _SH49)
    j = ((k & _MASK49) << _ONE_U) | _ONE_U
    odd = (octant & 1) == 1
    j = _TWO_POW_50_U - j if odd else j
    x = float(np.int64(j)) * _TWO_M50
    theta = x * _PI4_HI + x * _PI4_LO
    s = _sin_kernel(theta)
    c = _cos_kernel(theta)
    # sin uses the sine kernel in octants 0, 3, 4, 7 and the cosine kernel otherwise;
    # sin < 0 in octants 4..7, cos < 0 in octants 2..5.
    use_s = ((octant + 1) & 2) == 0
    sin_abs = s if use_s else c
    cos_abs = c if use_s else s
    sin_v = -sin_abs if octant >= 4 else sin_abs
    cos_v = -cos_abs if (octant >= 2 and octant <= 5) else cos_abs
    return sin_v, cos_v


# --------------------------------------------------------------------------- normals


@njit(**_INLINE)
def _box_muller(bits1, bits2):
    u1 = _unit_from_bits(bits1)
    r = math.sqrt(-2.0 * _log_unit(u1))
    sin_v, cos_v = _sincos_turn(bits2)
    return r * cos_v, r * sin_v


@njit(**_INLINE)
def normal_pair(key, pair):
    """Two independent N(0, 1) float64 draws: elements 2*pair and 2*pair + 1 of ``key``."""
    kn = np.uint64(key) ^ _NORMAL_DOMAIN
    e = np.uint64(pair) << _ONE_U
    return _box_muller(random_bits(kn, e), random_bits(kn, e | _ONE_U))


@njit(**_INLINE)
def normal(key, element):
    """N(0, 1) float64 draw for ``element``: normal_pair(key, element // 2)[element % 2].

    Computes the whole pair; array code should call ``normal_pair`` or ``fill_normal``.
    """
    e = np.uint64(element)
    z0, z1 = normal_pair(key, e >> _ONE_U)
    return z1 if (e & _ONE_U) == _ONE_U else z0


# --------------------------------------------------------------------------- array kernels
# fill_*_serial: the vectorised loops, no threads - call them from any njit code, including
#   inside another kernel's prange loop (numba's default workqueue threading layer refuses
#   nested parallel launches).
# fill_*: the same values computed by threads over blocks of _BLOCK elements; call them from
#   Python or from serial njit code.
# Each block runs the serial kernel because the loop numba generates for a prange body does
# not vectorise (its index is not known to be non-negative): blocks are ~6x faster.

_BLOCK = 16384  # even, so that blocks of an even-offset array split no Box-Muller pair


@njit(**_SCALAR)
def _normal_outlined(key, element):
    # A call, not an inlined copy, for the odd ends of a buffer: each inlined Box-Muller
    # adds about a second of compile time per array dtype.
    return normal(key, element)


@njit(**_SCALAR)
def fill_uniform_serial(out, key, element_offset):
    """out[i] = uniform(key, element_offset + i) for a 1-D float32/float64 array."""
    k = np.uint64(key)
    off = np.int64(element_offset)
    for i in range(out.shape[0]):
        out[i] = uniform(k, off + i)


@njit(**_SCALAR)
def fill_normal_serial(out, key, element_offset):
    """out[i] = normal(key, element_offset + i) for a 1-D float32/float64 array.

    Uses both outputs of every Box-Muller pair; odd offsets and lengths are handled.
    """
    k = np.uint64(key)
    off = np.int64(element_offset)
    n = out.shape[0]
    head = min(off & 1, n)  # out[0] is the second half of a pair
    if head:
        out[0] = _normal_outlined(k, off)
    first_pair = (off + head) >> 1
    n_pairs = (n - head) >> 1
    # Index a view: with out[head + 2 * p] LLVM cannot prove the index non-negative, keeps
    # numba's negative-index wraparound and refuses to vectorise (6x slower).
    body = out[head:]
    for p in range(n_pairs):
        z0, z1 = normal_pair(k, first_pair + p)
        body[2 * p] = z0
        body[2 * p + 1] = z1
    if head + 2 * n_pairs < n:  # the last element is the first half of a pair
        out[n - 1] = _normal_outlined(k, off + n - 1)


@njit(**_PARALLEL)
def fill_uniform(out, key, element_offset):
    """Parallel ``fill_uniform_serial`` (identical values for any thread count)."""
    n = out.shape[0]
    for b in prange((n + _BLOCK - 1) // _BLOCK):
        start = b * _BLOCK
        stop = min(start + _BLOCK, n)
        fill_uniform_serial(out[start:stop], key, element_offset + start)


@njit(**_PARALLEL)
def fill_normal(out, key, element_offset):
    """Parallel ``fill_normal_serial`` (identical values for any thread count)."""
    n = out.shape[0]
    for b in prange((n + _BLOCK - 1) // _BLOCK):
        start = b * _BLOCK
        stop = min(start + _BLOCK, n)
        fill_normal_serial(out[start:stop], key, element_offset + start)


# --------------------------------------------------------------------------- Python API

_COUNTER_MAX = 2**63 - 1


def _check_counter(name: str, value) -> int:
    if isinstance(value, (float, np.floating)):
        raise NoisysimError(f"{name} must be an integer, got {value!r}")
    return check_number(name, value, 0, _COUNTER_MAX, integer=True)


def _check_shape(shape) -> tuple[int, ...]:
    try:
        dims = (operator.index(shape),)
    except TypeError:
        try:
            dims = tuple(operator.index(d) for d in shape)
        except TypeError:
            raise NoisysimError(
                f"shape must be an int or a tuple of ints, got {shape!r}"
            ) from None
    if any(d < 0 for d in dims):
        raise NoisysimError(f"shape must have non-negative dimensions, got {shape!r}")
    return dims


def _check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise NoisysimError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
    check_choice("dtype", dt.name, ("float32", "float64"))
    return dt


def _prepare(seed, stream, step, layer, shape, dtype):
    counters = [
        _check_counter(name, value)
        for name, value in (("seed", seed), ("stream", stream), ("step", step), ("layer", layer))
    ]
    dims = _check_shape(shape)
    out = np.empty(dims, dtype=_check_dtype(dtype))
    return np.uint64(key(*counters)), out



def uniform_array(seed, stream, step, layer, shape, dtype=np.float64) -> np.ndarray:
    """Array of uniform(key(seed, stream, step, layer), flat C-order index) in (0, 1).

    Counters are integers in [0, 2**63 - 1]; dtype float32 or float64 (float32 values are
    the float64 draws rounded, so they may equal 1.0 for u > 1 - 2**-25).
    """
    k, out = _prepare(seed, stream, step, layer, shape, dtype)
    (fill_uniform if out.size >= PARALLEL_MIN_SIZE else fill_uniform_serial)(out.reshape(-1), k, 0)
    return out


def normal_array(seed, stream, step, layer, shape, dtype=np.float64) -> np.ndarray:
    """Array of normal(key(seed, stream, step, layer), flat C-order index), N(0, 1)."""
    k, out = _prepare(seed, stream, step, layer, shape, dtype)
    (fill_normal if out.size >= PARALLEL_MIN_SIZE else fill_normal_serial)(out.reshape(-1), k, 0)
    return out
