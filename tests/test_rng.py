"""Tests of the counter-based generator noisysim.kernels.rng.

Statistical tolerances are derived from standard errors (5 se), never tuned: every test uses
fixed keys, so each one is deterministic, and a 5-se miss of a correct generator has
probability ~6e-7.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

import naive_rng as naive
from noisysim.errors import NoisysimError
from noisysim.kernels import rng

REPO = Path(__file__).resolve().parents[1]
U64 = st.integers(0, 2**64 - 1)
COUNTER = st.integers(0, 2**63 - 1)
N_STAT = 1_000_000


def _bits_edge_cases() -> list[int]:
    """Bits that hit the ends of (0, 1), octant boundaries and the log's binary search."""
    edges = [0, 1, 2**12 - 1, 2**12, 2**64 - 1, 2**64 - 2**12, 2**63, 2**63 - 1]
    for octant in range(8):
        base = octant << 61  # top 3 of the 52 used bits
        edges += [base, base + (1 << 12), base + ((1 << 61) - 1), base + ((1 << 61) - (1 << 12))]
    for s in range(1, 53):  # u1 around 2**-s (exponent boundaries of the reduction)
        k = 1 << (52 - s)
        edges += [(k << 12) - (1 << 12), k << 12]
    return sorted({e & naive.MASK64 for e in edges})


def _ulps(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|x - ref| in units of the float64 spacing at ref."""
    ref64 = np.asarray(ref, dtype=np.float64)
    diff = np.abs(np.asarray(x, dtype=np.longdouble) - np.asarray(ref, dtype=np.longdouble))
    return (diff / np.spacing(np.abs(ref64)).astype(np.longdouble)).astype(np.float64)


@njit(cache=True)
def _log_many(u):
    out = np.empty_like(u)
    for i in range(u.shape[0]):
        out[i] = rng._log_unit(u[i])
    return out


@njit(cache=True)
def _sincos_many(bits):
    s = np.empty(bits.shape[0])
    c = np.empty(bits.shape[0])
    for i in range(bits.shape[0]):
        s[i], c[i] = rng._sincos_turn(bits[i])
    return s, c


@njit(cache=True)
def _box_muller_many(bits1, bits2):
    z = np.empty((bits1.shape[0], 2))
    for i in range(bits1.shape[0]):
        z[i, 0], z[i, 1] = rng._box_muller(bits1[i], bits2[i])
    return z


@njit(cache=True)
def _scalar_normals(k, offset, n):
    out = np.empty(n)
    for i in range(n):
        out[i] = rng.normal(k, offset + i)
    return out


@njit(cache=True)
def _scalar_uniforms(k, offset, n):
    out = np.empty(n)
    for i in range(n):
        out[i] = rng.uniform(k, offset + i)
    return out


@njit(cache=True)
def _bits_many(k, n):
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        out[i] = rng.random_bits(k, i)
    return out


@njit(parallel=True, cache=True)
def _rows_in_own_prange(out, seed, step):
    """The pattern other kernels use: key inside njit, serial fill inside a prange."""
    k = rng.key(seed, rng.STREAM_NOISE, step, 1)
    for r in numba.prange(out.shape[0]):
        rng.fill_normal_serial(out[r], k, r * out.shape[1])


@njit(cache=True)
def _parallel_fill_from_serial_njit(out, seed, step):
    rng.fill_normal(out.reshape(-1), rng.key(seed, rng.STREAM_NOISE, step, 1), 0)


def _random_bits_array(n: int, seed: int = 0) -> np.ndarray:
    return _bits_many(np.uint64(rng.key(seed, rng.STREAM_USER, 99, 0)), n)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# ------------------------------------------------------------------------------ hash


@settings(max_examples=300, deadline=None)
@given(seed=COUNTER, stream=COUNTER, step=COUNTER, layer=COUNTER)
def test_key_matches_python_integer_reference(seed, stream, step, layer):
    assert rng.key(seed, stream, step, layer) == naive.key(seed, stream, step, layer)


@settings(max_examples=300, deadline=None)
@given(k=U64, element=COUNTER)
def test_random_bits_and_uniform_match_python_reference(k, element):
    assert rng.random_bits(np.uint64(k), element) == naive.random_bits(k, element)
    assert rng.uniform(np.uint64(k), element) == naive.uniform(k, element)


@pytest.mark.parametrize("z", [0, 1, 2**63, 2**64 - 1, 0x0123456789ABCDEF])
def test_mix64_matches_python_reference(z):
    assert rng.mix64(np.uint64(z)) == naive.mix64(z)


def test_counters_are_not_interchangeable():
    keys = {rng.key(*c) for c in [(0, 1, 2, 3), (0, 1, 3, 2), (0, 2, 1, 3), (1, 0, 2, 3),
                                  (3, 2, 1, 0), (0, 0, 0, 0), (0, 0, 0, 1), (1, 0, 0, 0)]}
    assert len(keys) == 8


def test_every_output_bit_is_balanced():
    n = 200_000
    bits = _random_bits_array(n)
    freq = np.array([np.count_nonzero((bits >> np.uint64(b)) & np.uint64(1)) for b in range(64)])
    assert np.all(np.abs(freq / n - 0.5) < 5 * math.sqrt(0.25 / n))


@pytest.mark.parametrize("which", ["seed", "step", "element"])
def test_single_bit_flip_avalanches(which):
    """Flipping one input bit flips each output bit with probability 1/2: the mean Hamming
    distance over m trials has standard error sqrt(64 / 4 / m)."""
    bases = np.random.default_rng(1).integers(0, 2**62, size=64)
    dist = []
    for base in bases:
        base = int(base)
        for b in range(62):
            flipped = base ^ (1 << b)
            if which == "seed":
                x, y = rng.key(base, 1, 2, 3), rng.key(flipped, 1, 2, 3)
            elif which == "step":
                x, y = rng.key(5, 1, base, 3), rng.key(5, 1, flipped, 3)
            else:
                k = np.uint64(rng.key(5, 1, 2, 3))
                x, y = rng.random_bits(k, base), rng.random_bits(k, flipped)
            dist.append(bin(int(x) ^ int(y)).count("1"))
    m = len(dist)
    assert abs(np.mean(dist) - 32.0) < 5 * math.sqrt(16.0 / m)


# ------------------------------------------------------------------------------ uniforms


def test_uniform_is_open_interval_at_the_extreme_bits():
    lo = rng._unit_from_bits(np.uint64(0))
    hi = rng._unit_from_bits(np.uint64(2**64 - 1))
    assert lo == 2.0**-53
    assert hi == 1.0 - 2.0**-53 < 1.0
    assert lo == 1.0 - hi  # symmetric grid


def test_uniform_array_equals_scalar_and_reference_at_every_element():
    shape = (37, 55)
    a = rng.uniform_array(3, rng.STREAM_USER, 11, 2, shape)
    k = rng.key(3, rng.STREAM_USER, 11, 2)
    scalar = np.array([rng.uniform(np.uint64(k), i) for i in range(a.size)]).reshape(shape)
    assert a.shape == shape and a.dtype == np.float64
    np.testing.assert_array_equal(a, scalar)
    np.testing.assert_array_equal(a, naive.uniform_array(3, rng.STREAM_USER, 11, 2, shape))


def test_uniform_moments_and_range():
    u = rng.uniform_array(0, rng.STREAM_USER, 0, 0, N_STAT)
    assert u.min() > 0.0 and u.max() < 1.0
    # Var(U) = 1/12; Var((U - 1/2)**2) = E(U - 1/2)**4 - (1/12)**2 = 1/80 - 1/144 = 1/180
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / N_STAT)
    assert abs(u.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / N_STAT)
    assert scipy.stats.kstest(u, "uniform").pvalue > 1e-3


# ------------------------------------------------------------------------------ normals


def test_normal_array_equals_scalar_and_pair_at_every_element():
    shape = (13, 17)  # odd size: the last element is the first half of a pair
    z = rng.normal_array(4, rng.STREAM_NOISE, 5, 1, shape)
    k = np.uint64(rng.key(4, rng.STREAM_NOISE, 5, 1))
    flat = z.ravel()
    for i in range(z.size):
        assert flat[i] == rng.normal(k, i)
        assert flat[i] == rng.normal_pair(k, i // 2)[i % 2]


def test_normal_matches_textbook_box_muller_with_numpy_libm():
    """Same uniforms, numpy's log/cos/sin: agreement to rounding of 2 pi u (~r * 1e-15)."""
    k = rng.key(8, rng.STREAM_USER, 0, 0)
    n = 4000
    ours = _scalar_normals(np.uint64(k), 0, n)
    ref = np.array([naive.normal(k, i) for i in range(n)])
    pairs = ours.reshape(-1, 2)
    r = np.repeat(np.hypot(pairs[:, 0], pairs[:, 1]), 2)
    assert np.all(np.abs(ours - ref) <= 2e-15 * (1.0 + r))


@pytest.mark.parametrize(
    "offset, n", [(o, m) for o in range(4) for m in range(8)] + [(1, 2 * 16384 + 3), (2, 40001)]
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fill_kernels_any_offset_and_length(offset, n, dtype):
    k = np.uint64(rng.key(2, rng.STREAM_USER, 7, 3))
    want_n = _scalar_normals(k, offset, n).astype(dtype)
    want_u = _scalar_uniforms(k, offset, n).astype(dtype)
    for fill, want in [(rng.fill_normal, want_n), (rng.fill_normal_serial, want_n),
                       (rng.fill_uniform, want_u), (rng.fill_uniform_serial, want_u)]:
        out = np.full(n, np.nan, dtype=dtype)
        fill(out, k, offset)
        np.testing.assert_array_equal(out, want, err_msg=f"{fill.__name__} {offset} {n}")


def test_calls_from_other_njit_kernels():
    want = rng.normal_array(9, rng.STREAM_NOISE, 4, 1, (7, 333))
    for kernel in (_rows_in_own_prange, _parallel_fill_from_serial_njit):
        out = np.empty((7, 333), dtype=np.float32)
        kernel(out, 9, 4)
        np.testing.assert_array_equal(out, want.astype(np.float32))


def test_float32_arrays_are_rounded_float64_draws():
    for f in (rng.normal_array, rng.uniform_array):
        a64 = f(1, 2, 3, 4, (3, 1001))
        a32 = f(1, 2, 3, 4, (3, 1001), dtype="float32")
        assert a32.dtype == np.float32
        np.testing.assert_array_equal(a32, a64.astype(np.float32))


def test_normal_moments_tails_and_ks():
    z = rng.normal_array(0, rng.STREAM_NOISE, 0, 0, N_STAT)
    n = z.size
    # standard errors of mean, variance, skewness and excess kurtosis for N(0, 1)
    assert abs(z.mean()) < 5 * math.sqrt(1 / n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(scipy.stats.skew(z)) < 5 * math.sqrt(6 / n)
    assert abs(scipy.stats.kurtosis(z)) < 5 * math.sqrt(24 / n)
    p3 = 2 * scipy.stats.norm.sf(3.0)
    assert abs(np.mean(np.abs(z) > 3) - p3) < 5 * math.sqrt(p3 * (1 - p3) / n)
    assert np.all(np.abs(z) <= math.sqrt(-2 * math.log(2.0**-53)))
    assert scipy.stats.kstest(z, "norm").pvalue > 1e-3
    # the two halves of each pair separately too
    assert scipy.stats.kstest(z[0::2], "norm").pvalue > 1e-3
    assert scipy.stats.kstest(z[1::2], "norm").pvalue > 1e-3


# ------------------------------------------------------------------------------ libm-free math


def test_log_within_four_ulps():
    u = rng.uniform_array(6, rng.STREAM_USER, 0, 0, 200_000)
    edges = np.array([2.0**-53, 3 * 2.0**-53, 1 - 2.0**-53, 1 - 3 * 2.0**-53, 0.5,
                      math.sqrt(0.5), 0.75, 1 - 2.0**-20, 2.0**-30 * 1.5])
    # around every threshold of the exponent search (and a few ulps off it)
    thresholds = [math.sqrt(2.0) * 2.0**-s for s in (1, 2, 4, 8, 16, 32)]
    near = [np.nextafter(t, d) for t in thresholds for d in (0.0, 2.0)] + thresholds
    u = np.concatenate([u, edges, near, 2.0 ** -np.arange(1.0, 54.0)])
    got = _log_many(u)
    assert np.max(_ulps(got, naive.log_longdouble(u))) <= 4.0
    np.testing.assert_allclose(got, np.log(u), rtol=4 * np.finfo(float).eps, atol=0)


def test_sincos_within_four_ulps_relative_even_near_zeros():
    bits = np.concatenate([_random_bits_array(200_000, seed=3),
                           np.array(_bits_edge_cases(), dtype=np.uint64)])
    s, c = _sincos_many(bits)
    u = ((bits >> np.uint64(12)) * 2 + 1).astype(np.float64) * 2.0**-53
    ref_s, ref_c = naive.sincos_turn_longdouble(u)
    assert np.max(_ulps(s, ref_s)) <= 4.0
    assert np.max(_ulps(c, ref_c)) <= 4.0
    # and against numpy directly (absolute: numpy's 2 pi u is only accurate to ~1e-16 * 2 pi)
    assert np.max(np.abs(s - np.sin(2 * np.pi * u))) < 4e-15
    assert np.max(np.abs(c - np.cos(2 * np.pi * u))) < 4e-15
    assert np.max(np.abs(s * s + c * c - 1.0)) < 8 * np.finfo(float).eps


def test_box_muller_within_few_ulps_of_long_double_reference():
    rng_np = np.random.default_rng(12)
    b1 = rng_np.integers(0, 2**64, size=100_000, dtype=np.uint64)
    b2 = rng_np.integers(0, 2**64, size=100_000, dtype=np.uint64)
    edges = np.array(_bits_edge_cases(), dtype=np.uint64)
    b1 = np.concatenate([b1, edges, np.full(edges.size, 2**63, dtype=np.uint64)])
    b2 = np.concatenate([b2, np.full(edges.size, 12345 << 20, dtype=np.uint64), edges])
    z = _box_muller_many(b1, b2)
    to_u = lambda b: ((b >> np.uint64(12)) * 2 + 1).astype(np.float64) * 2.0**-53  # noqa: E731
    r = np.sqrt(-2 * naive.log_longdouble(to_u(b1)))
    s, c = naive.sincos_turn_longdouble(to_u(b2))
    assert np.max(_ulps(z[:, 0], r * c)) <= 4.0
    assert np.max(_ulps(z[:, 1], r * s)) <= 4.0


# ------------------------------------------------------------------------------ independence


def test_streams_steps_layers_seeds_are_uncorrelated():
    n = 200_000
    tol = 5 / math.sqrt(n)
    base = (10, rng.STREAM_NOISE, 100, 2)
    variants = [(11, 1, 100, 2), (10, 2, 100, 2), (10, 1, 101, 2), (10, 1, 100, 3),
                (0, 1, 100, 2), (10, 1, 0, 2)]
    for f in (rng.normal_array, rng.uniform_array):
        a = f(*base, n)
        for v in variants:
            assert abs(_corr(a, f(*v, n))) < tol, (f.__name__, v)
        assert abs(_corr(a[:-1], a[1:])) < tol  # lag 1
        assert abs(_corr(a[:-2], a[2:])) < tol  # lag 2 (next pair)


def test_pair_halves_and_uniforms_of_same_key_are_independent():
    n = 200_000
    tol = 5 / math.sqrt(n // 2)
    z = rng.normal_array(1, rng.STREAM_NOISE, 7, 0, n).reshape(-1, 2)
    u = rng.uniform_array(1, rng.STREAM_NOISE, 7, 0, n).reshape(-1, 2)
    assert abs(_corr(z[:, 0], z[:, 1])) < tol
    assert abs(_corr(z[:, 0] ** 2, z[:, 1] ** 2)) < tol
    # domain separation: without it r**2 = -2 ln u[:, 0] exactly
    r2 = z[:, 0] ** 2 + z[:, 1] ** 2
    assert abs(_corr(r2, -np.log(u[:, 0]))) < tol
    assert abs(_corr(z[:, 0], u[:, 1])) < tol


# ------------------------------------------------------------------------------ determinism


def test_same_key_same_output_and_thread_count_irrelevant_in_process():
    a = rng.normal_array(5, 3, 2, 1, (301, 203))
    np.testing.assert_array_equal(a, rng.normal_array(5, 3, 2, 1, (301, 203)))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = rng.normal_array(5, 3, 2, 1, 100_001)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = rng.normal_array(5, 3, 2, 1, 100_001)
    finally:
        numba.set_num_threads(before)
    assert one.tobytes() == many.tobytes()


_HASH_SCRIPT = """
import hashlib, numpy as np
from noisysim.kernels import rng
z = rng.normal_array(7, rng.STREAM_USER, 3, 2, (1001, 2003))
u = rng.uniform_array(7, rng.STREAM_USER, 3, 2, (1001, 2003), dtype=np.float32)
import numba
print(numba.get_num_threads(), hashlib.sha256(z.tobytes()).hexdigest(),
      hashlib.sha256(u.tobytes()).hexdigest())
"""


def _run(script: str, env_extra: dict, stdin: str = "") -> str:
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", script], env=env, input=stdin,
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_bytes_identical_for_one_and_two_threads():
    runs = {nt: _run(_HASH_SCRIPT, {"NUMBA_NUM_THREADS": nt}).split() for nt in ("1", "2")}
    assert [runs["1"][0], runs["2"][0]] == ["1", "2"]  # the threads really differed
    assert runs["1"][1:] == runs["2"][1:]
    z = rng.normal_array(7, rng.STREAM_USER, 3, 2, (1001, 2003))
    assert runs["1"][1] == hashlib.sha256(z.tobytes()).hexdigest()


_PURE_PYTHON_SCRIPT = """
import json, sys, warnings
warnings.simplefilter("ignore")  # numpy warns on the intended uint64 wraparound
import numpy as np
from noisysim.kernels import rng
cases = json.load(sys.stdin)
out = {"bm": [], "draws": []}
for b1, b2 in cases["bits"]:
    z0, z1 = rng._box_muller(np.uint64(b1), np.uint64(b2))
    out["bm"].append([float(z0).hex(), float(z1).hex()])
for c in cases["counters"]:
    k = rng.key(*c)
    out["draws"].append([int(k), int(rng.random_bits(k, c[2])), float(rng.uniform(k, 9)).hex(),
                         float(rng.normal(k, 2 * c[3] + 1)).hex()])
print(json.dumps(out))
"""


def test_compiled_equals_pure_python_bit_for_bit():
    """NUMBA_DISABLE_JIT=1 runs the same source as Python (IEEE double, no FMA, no libm in
    the float path): equality shows the compiled code has no contraction or libm calls that
    a GPU twin could not reproduce."""
    gen = np.random.default_rng(5)
    edges = _bits_edge_cases()
    bits = [[int(a), int(b)] for a, b in gen.integers(0, 2**64, (600, 2), dtype=np.uint64)]
    bits += [[e, int(x)] for e, x in zip(edges, gen.integers(0, 2**64, len(edges), np.uint64))]
    bits += [[int(x), e] for e, x in zip(edges, gen.integers(0, 2**64, len(edges), np.uint64))]
    counters = [[int(x) for x in gen.integers(0, 2**40, 4)] for _ in range(50)]
    got = json.loads(_run(_PURE_PYTHON_SCRIPT, {"NUMBA_DISABLE_JIT": "1"},
                          json.dumps({"bits": bits, "counters": counters})))
    b1 = np.array([b[0] for b in bits], dtype=np.uint64)
    b2 = np.array([b[1] for b in bits], dtype=np.uint64)
    z = _box_muller_many(b1, b2)
    assert got["bm"] == [[float(x).hex(), float(y).hex()] for x, y in z]
    for c, (k, bits_, u, zn) in zip(counters, got["draws"]):
        key = rng.key(*c)
        assert k == key
        assert bits_ == rng.random_bits(np.uint64(key), c[2])
        assert u == rng.uniform(np.uint64(key), 9).hex()
        assert zn == rng.normal(np.uint64(key), 2 * c[3] + 1).hex()


_PTX_SCRIPT = """
import json
from numba import types
from numba.cuda.compiler import compile_cuda
from noisysim.kernels import rng
cres = compile_cuda(rng.normal_pair.py_func, None, (types.uint64, types.int64),
                    nvvm_options={"fastmath": False, "opt": 3, "fma": False}, cc=(9, 0))
print(json.dumps(cres.library.get_asm_str(cc=(9, 0))))
"""


def test_scalar_functions_compile_for_cuda_without_fma_or_libm():
    """The GPU twin compiles the same .py_func with numba.cuda and NVVM's -fma=0; checks the
    PTX (needs libNVVM, not a GPU; in a process without the tests' CUDA simulator)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", _PTX_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:  # pragma: no cover - depends on the installation
        if "nvvm" in proc.stderr.lower() or "ImportError" in proc.stderr:
            pytest.skip(f"numba.cuda / libNVVM unavailable: {proc.stderr.strip()[-300:]}")
        raise AssertionError(proc.stderr[-3000:])
    ptx = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "fma" not in ptx
    assert "call" not in ptx  # no libdevice log/sin/cos
    assert "sqrt.rn.f64" in ptx and "div.rn.f64" in ptx


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(seed=-1), "seed"),
        (dict(seed=2**63), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(seed=2.0), "seed"),
        (dict(seed=True), "seed"),
        (dict(seed="1"), "seed"),
        (dict(stream=-3), "stream"),
        (dict(step=None), "step"),
        (dict(layer=-1), "layer"),
        (dict(shape=(-1, 3)), "shape"),
        (dict(shape=(2.5,)), "shape"),
        (dict(shape="ab"), "shape"),
        (dict(dtype=np.int32), "dtype"),
        (dict(dtype="float16"), "dtype"),
        (dict(dtype="nonsense"), "dtype"),
    ],
)
@pytest.mark.parametrize("f", [rng.uniform_array, rng.normal_array])
def test_wrappers_refuse_bad_input_naming_the_parameter(f, kwargs, name):
    args = dict(seed=0, stream=rng.STREAM_USER, step=0, layer=0, shape=(2, 3))
    args.update(kwargs)
    with pytest.raises(NoisysimError, match=name):
        f(**args)


def test_wrappers_accept_numpy_integers_and_shapes():
    a = rng.normal_array(np.int64(3), np.uint8(1), np.int32(4), 0, np.int64(5))
    assert a.shape == (5,)
    np.testing.assert_array_equal(a, rng.normal_array(3, 1, 4, 0, (5,)))
    assert rng.uniform_array(0, 1, 2, 3, ()).shape == ()
    assert rng.uniform_array(0, 1, 2, 3, (0, 4)).shape == (0, 4)
    big = rng.uniform_array(2**63 - 1, 2**63 - 1, 2**63 - 1, 2**63 - 1, 3)
    assert np.all((big > 0) & (big < 1))


_WAIT_POLICY_SCRIPT = """
import ctypes, os, sys
import noisysim.kernels, numba
numba.get_num_threads()  # loads the threading layer if noisysim did not
if numba.threading_layer() != "omp":
    print("layer", numba.threading_layer()); sys.exit(0)
print("leaked" if os.environ.get("OMP_WAIT_POLICY") != {expected_env!r} else "kept", flush=True)
ctypes.CDLL("libgomp.so.1").omp_display_env(1)  # prints the runtime's settings to stderr
"""


@pytest.mark.parametrize("user_policy", [None, "ACTIVE"])
def test_numba_openmp_workers_sleep_when_idle_unless_the_user_chose(user_policy):
    # Idle OpenMP workers that spin take the cores BLAS's threads need (noisysim.kernels):
    # noisysim asks numba's libgomp for PASSIVE without leaving the variable set, and a
    # policy the user set wins.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if user_policy:
        env["OMP_WAIT_POLICY"] = user_policy
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    script = _WAIT_POLICY_SCRIPT.format(expected_env=user_policy)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.startswith("layer"):
        pytest.skip(f"numba uses another threading layer here ({proc.stdout.split()[1]})")
    assert proc.stdout.strip() == "kept"
    if user_policy is None:  # PASSIVE: libgomp's idle spin count is 0 (default: 300000)
        assert "GOMP_SPINCOUNT = '0'" in proc.stderr
    else:
        assert "OMP_WAIT_POLICY = 'ACTIVE'" in proc.stderr


@pytest.mark.parametrize("user_value", [None, "28"])
def test_openblas_idle_spin_is_short_unless_the_user_chose(user_value):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT")}
    if user_value:
        env["OPENBLAS_THREAD_TIMEOUT"] = user_value
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    script = "import os, noisysim; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (user_value or "16")


_FORK_SCRIPT = """
import os
import noisysim.kernels
from noisysim.kernels import rng
pid = os.fork()
if pid == 0:  # the child may run parallel kernels (and fork again)
    z = rng.normal_array(1, 2, 3, 0, 1 << 20)
    os._exit(0 if z.shape == (1 << 20,) else 3)
print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_importing_the_kernels_starts_no_openmp_thread_so_the_process_may_fork():
    # numba refuses (SIGTERM) to fork a process whose OpenMP threads run; the sweep's
    # forkserver imports noisysim and then forks every worker from it.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["child", "0"], proc.stdout + proc.stderr
