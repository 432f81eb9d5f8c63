"""The cuda backend's convolution kernels (noisysim.kernels.cuda_conv) against the
plain-numpy direct loops of tests/naive_conv.py.

Without a GPU they run in numba's CUDA simulator (tests/conftest.py), so the shapes are
tiny (the simulator runs every GPU thread as a Python thread); NOISYSIM_CUDA_HARDWARE=1
runs the same tests on a GPU.

Tolerances. im2col copies, max pooling selects, and col2im and max pooling's backward sum
their float64 terms in the order the twin does (windows i ascending, then j), rounding
once to the output dtype: all of them equal the twin's float64 result rounded to the
dtype, exactly. Average pooling rounds in other places than the twin (numpy's mean; the
twin's backward adds g / size^2, the kernel g * (1 / size^2)): two evaluations of m terms t
with unit roundoff u = 2^-53 differ by at most 2 (m + 1) u sum|t| (m - 1 additions each,
and at most three roundings of a term's scaling between them, each once, first order in
u), plus half an ulp of the result, 2^-24 |ref|, when the output is float32.
"""

from __future__ import annotations

import numpy as np
import pytest

import naive_conv as naive
from backends import kernels

U64 = 2.0 ** -53  # unit roundoff of float64
U32 = 2.0 ** -24  # of float32: half an ulp relative to the value

# (H, W, C, k, stride, pad): stride 1 and 2, padding 0 and 1, C > 1, windows that overlap
CONV_SHAPES = [(5, 4, 2, 3, 1, 1), (5, 5, 3, 3, 2, 0), (5, 4, 2, 3, 2, 1), (4, 4, 1, 2, 2, 0)]
# (H, W, C, size, stride): overlapping (size > stride), touching, and windows that leave a
# border of the image out
POOL_SHAPES = [(5, 4, 2, 3, 1), (5, 5, 2, 3, 2), (4, 6, 3, 2, 2), (5, 5, 1, 2, 2)]
DTYPES = [np.float64, np.float32]
R = 2  # images per batch


def _run(method, *arrays_and_args, out_shape, dtype):
    """Call ``CudaKernels.<method>`` on device copies, into an output first filled with NaN
    (every element must be written), and return the result on the host."""
    K = kernels("cuda")
    args = [K.asarray(a) if isinstance(a, np.ndarray) else a for a in arrays_and_args]
    out = K.asarray(np.full(out_shape, np.nan, dtype=dtype))
    getattr(K, method)(*args, out)
    return K.to_host(out)


def _images(rng, H, W, C, dtype, ties=False):
    if ties:  # few distinct values: most windows hold their maximum more than once
        return rng.integers(0, 3, size=(R, H * W * C)).astype(dtype)
    return rng.standard_normal((R, H * W * C)).astype(dtype)


def _exactly(got, ref, dtype):
    """The twin's float64 result rounded once to the dtype."""
    np.testing.assert_array_equal(got, ref.astype(dtype))


def _within(got, ref, abs_ref, m, dtype):
    """|got - ref| <= 2 (m + 1) u sum|t| (+ 2^-24 |ref| for float32); abs_ref: the same
    operation on |input|, i.e. sum|t| up to the common factor."""
    tol = 2 * (m + 1) * U64 * abs_ref + (U32 * np.abs(ref) if dtype == np.float32 else 0.0)
    assert np.all(np.abs(got - ref) <= tol), np.max(np.abs(got - ref) - tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H, W, C, k, stride, pad", CONV_SHAPES)
def test_im2col_and_col2im_equal_the_direct_loops(H, W, C, k, stride, pad, dtype):
    rng = np.random.default_rng(H * 100 + k * 10 + stride + pad)
    x = _images(rng, H, W, C, dtype)
    L = naive.out_size(H, k, stride, pad) * naive.out_size(W, k, stride, pad)
    cols = _run("im2col", x, (H, W, C), k, stride, pad, out_shape=(R * L, k * k * C),
                dtype=dtype)
    _exactly(cols, naive.im2col(x, (H, W, C), k, stride, pad), dtype)

    g = rng.standard_normal((R * L, k * k * C)).astype(dtype)
    back = _run("col2im", g, (H, W, C), k, stride, pad, out_shape=x.shape, dtype=dtype)
    _exactly(back, naive.col2im(g, (H, W, C), k, stride, pad), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("H, W, C, size, stride", POOL_SHAPES)
def test_pooling_and_its_backward_equal_the_direct_loops(H, W, C, size, stride, kind, dtype):
    rng = np.random.default_rng(H * 100 + size * 10 + stride)
    shape = (H, W, C)
    x = _images(rng, H, W, C, dtype, ties=kind == "max")
    n_out = naive.out_size(H, size, stride, 0) * naive.out_size(W, size, stride, 0) * C
    pooled = _run("pool_forward", x, shape, kind, size, stride, out_shape=(R, n_out),
                  dtype=dtype)
    g = rng.standard_normal((R, n_out)).astype(dtype)
    grad = _run("pool_backward", g, x, shape, kind, size, stride, out_shape=x.shape,
                dtype=dtype)
    ref_pool = naive.pool(x, shape, kind, size, stride)
    ref_grad = naive.pool_backward(g, x, shape, kind, size, stride)
    if kind == "max":
        assert np.any([len(set(w)) < size * size for w in _windows(x, shape, size, stride)])
        _exactly(pooled, ref_pool, dtype)
        _exactly(grad, ref_grad, dtype)
        return
    _within(pooled, ref_pool, naive.pool(np.abs(x), shape, kind, size, stride), size * size,
            dtype)
    windows_per_element = (-(-size // stride)) ** 2
    _within(grad, ref_grad, naive.pool_backward(np.abs(g), x, shape, kind, size, stride),
            windows_per_element, dtype)


def _windows(x, shape, size, stride):
    """The values of every pooling window of the first image's first channel (to show that
    the max test has ties)."""
    H, W, C = shape
    img = x[0].reshape(H, W, C)[:, :, 0]
    return [tuple(img[i:i + size, j:j + size].ravel())
            for i in range(0, H - size + 1, stride) for j in range(0, W - size + 1, stride)]


def test_gathers_do_not_depend_on_the_launch_grid():
    """col2im and pooling's backward give the same bytes on one block as on the default
    grid and on three blocks (the default is one block on a GPU, whose blocks hold 256
    threads): each output element is one thread's fixed-order sum."""
    from noisysim.kernels import cuda_conv as C
    from noisysim.kernels import cuda_launch

    K = kernels("cuda")
    rng = np.random.default_rng(3)
    H, W, Cn, k, s, p = 5, 4, 2, 3, 1, 1
    L = naive.out_size(H, k, s, p) * naive.out_size(W, k, s, p)
    cols = K.asarray(rng.standard_normal((R * L, k * k * Cn)))
    x = K.asarray(rng.integers(0, 3, size=(R, H * W * Cn)).astype(np.float64))
    g = K.asarray(rng.standard_normal((R, 3 * 2 * Cn)))  # 3 x 3 windows, stride 1: 3 x 2
    results = []
    for blocks in (None, 1, 3):
        out_c, out_p = K.zeros((R, H * W * Cn), np.float64), K.zeros((R, H * W * Cn),
                                                                      np.float64)
        args = np.int64(H), np.int64(W), np.int64(Cn)
        cuda_launch.launch(C._col2im, out_c.size, cols, *args, np.int64(k), np.int64(s),
                           np.int64(p), out_c, blocks=blocks)
        cuda_launch.launch(C._pool_backward, out_p.size, g, x, *args, np.int64(C.MAX),
                           np.int64(3), np.int64(1), out_p, blocks=blocks)
        results.append((K.to_host(out_c), K.to_host(out_p)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_conv_kernels_equal_the_cpu_kernels_bit_for_bit(dtype):
    """The CPU kernels (noisysim.kernels.conv) sum the same float64 terms in the same order
    and round once: every op gives the same bytes on both backends."""
    cpu = kernels("cpu")
    rng = np.random.default_rng(11)
    for H, W, C, k, s, p in CONV_SHAPES:
        shape = (H, W, C)
        L = naive.out_size(H, k, s, p) * naive.out_size(W, k, s, p)
        x = _images(rng, H, W, C, dtype)
        cols = rng.standard_normal((R * L, k * k * C)).astype(dtype)
        for method, arg, out_shape in (("im2col", x, (R * L, k * k * C)),
                                       ("col2im", cols, x.shape)):
            want = np.full(out_shape, np.nan, dtype=dtype)
            getattr(cpu, method)(arg, shape, k, s, p, want)
            got = _run(method, arg, shape, k, s, p, out_shape=out_shape, dtype=dtype)
            assert got.tobytes() == want.tobytes(), (method, shape, k, s, p)
    for H, W, C, size, s in POOL_SHAPES:
        shape = (H, W, C)
        n_out = naive.out_size(H, size, s, 0) * naive.out_size(W, size, s, 0) * C
        for kind in ("max", "avg"):
            x = _images(rng, H, W, C, dtype, ties=kind == "max")
            g = rng.standard_normal((R, n_out)).astype(dtype)
            want = np.full((R, n_out), np.nan, dtype=dtype)
            cpu.pool_forward(x, shape, kind, size, s, want)
            got = _run("pool_forward", x, shape, kind, size, s, out_shape=(R, n_out),
                       dtype=dtype)
            assert got.tobytes() == want.tobytes(), ("pool_forward", kind, shape, size, s)
            want = np.full(x.shape, np.nan, dtype=dtype)
            cpu.pool_backward(g, x, shape, kind, size, s, want)
            got = _run("pool_backward", g, x, shape, kind, size, s, out_shape=x.shape,
                       dtype=dtype)
            assert got.tobytes() == want.tobytes(), ("pool_backward", kind, shape, size, s)
