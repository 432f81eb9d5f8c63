"""Convolutional layers (issue 14): kernels, forward, exact gradient, estimators, config."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from noisysim.kernels.backend import CPU

import naive_conv

# (H, W, C, k, stride, pad): square and not, C > 1, stride 2, padding, kernel = image
CONV_SHAPES = [(5, 5, 1, 3, 1, 0), (6, 7, 3, 3, 2, 1), (4, 9, 2, 2, 1, 2), (7, 5, 4, 5, 3, 2),
               (3, 3, 2, 3, 1, 0), (8, 6, 1, 1, 1, 0)]
# (H, W, C, size, stride): disjoint, overlapping (stride < size), ragged edges, C > 1
POOL_SHAPES = [(4, 4, 1, 2, 2), (5, 7, 3, 3, 1), (6, 5, 2, 2, 1), (7, 7, 2, 3, 2),
               (3, 5, 1, 3, 3)]
# float32 results of sums: the kernels add in float64 and round once, so the error against
# the float64 twin is at most half an ulp of the result (2^-24 relative) plus the float64
# sum's own error, n 2^-53 sum|terms| <= 1e-12 here (n <= 25 terms of size < 10).
F32 = dict(rtol=2.0 ** -24, atol=1e-12)
F64 = dict(rtol=1e-12, atol=1e-12)


def _images(rng, R, H, W, C, dtype, ties=False):
    x = rng.standard_normal((R, H * W * C))
    if ties:  # few distinct values: max-pool windows with several maxima
        x = np.round(x)
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("H,W,C,k,s,p", CONV_SHAPES)
def test_im2col_and_col2im_equal_the_naive_twins(H, W, C, k, s, p, dtype):
    rng = np.random.default_rng(H * 100 + W * 10 + C)
    R = 3
    x = _images(rng, R, H, W, C, dtype)
    L = naive_conv.out_size(H, k, s, p) * naive_conv.out_size(W, k, s, p)
    cols = np.full((R * L, k * k * C), np.nan, dtype=dtype)
    CPU.im2col(x, (H, W, C), k, s, p, cols)
    np.testing.assert_array_equal(cols, naive_conv.im2col(x, (H, W, C), k, s, p))  # copies
    g = rng.standard_normal(cols.shape).astype(dtype)
    out = np.full(x.shape, np.nan, dtype=dtype)
    CPU.col2im(g, (H, W, C), k, s, p, out)
    np.testing.assert_allclose(out, naive_conv.col2im(g, (H, W, C), k, s, p),
                               **(F64 if dtype == "float64" else F32))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("H,W,C,size,s", POOL_SHAPES)
def test_pooling_and_its_backward_equal_the_naive_twins(H, W, C, size, s, kind, dtype):
    rng = np.random.default_rng(H * 100 + W * 10 + size)
    R = 3
    x = _images(rng, R, H, W, C, dtype, ties=True)
    Ho, Wo = naive_conv.out_size(H, size, s, 0), naive_conv.out_size(W, size, s, 0)
    out = np.full((R, Ho * Wo * C), np.nan, dtype=dtype)
    CPU.pool_forward(x, (H, W, C), kind, size, s, out)
    tol = F64 if dtype == "float64" else F32
    np.testing.assert_allclose(out, naive_conv.pool(x, (H, W, C), kind, size, s), **tol)
    g = rng.standard_normal(out.shape).astype(dtype)
    back = np.full(x.shape, np.nan, dtype=dtype)
    CPU.pool_backward(g, x, (H, W, C), kind, size, s, back)
    np.testing.assert_allclose(back, naive_conv.pool_backward(g, x, (H, W, C), kind, size, s),
                               **tol)


def test_col2im_is_the_adjoint_of_im2col():
    """<im2col(x), g> == <x, col2im(g)> for random x, g (float64, up to rounding)."""
    rng = np.random.default_rng(0)
    shape, k, s, p = (6, 7, 3), 3, 2, 1
    x = rng.standard_normal((2, 6 * 7 * 3))
    L = naive_conv.out_size(6, k, s, p) * naive_conv.out_size(7, k, s, p)
    cols = np.empty((2 * L, k * k * 3))
    CPU.im2col(x, shape, k, s, p, cols)
    g = rng.standard_normal(cols.shape)
    back = np.empty_like(x)
    CPU.col2im(g, shape, k, s, p, back)
    assert np.vdot(cols, g) == pytest.approx(np.vdot(x, back), rel=1e-12)


KERNEL_SCRIPT = textwrap.dedent(
    """
    import hashlib, numpy as np
    from noisysim.kernels.backend import CPU
    h = hashlib.sha256()
    rng = np.random.default_rng(1)
    # 64 images of 24 x 24 x 8: above PARALLEL_MIN_SIZE, so the parallel kernels run
    shape, R = (24, 24, 8), 64
    x = np.round(rng.standard_normal((R, 24 * 24 * 8)), 1).astype(np.float32)
    cols = np.empty((R * 22 * 22, 72), np.float32)
    CPU.im2col(x, shape, 3, 1, 0, cols)
    back = np.empty_like(x)
    CPU.col2im(cols, shape, 3, 1, 0, back)
    for kind in ("max", "avg"):
        out = np.empty((R, 11 * 11 * 8), np.float32)
        CPU.pool_forward(x, shape, kind, 3, 2, out)
        g = np.empty_like(x)
        CPU.pool_backward(out, x, shape, kind, 3, 2, g)
        for a in (out, g):
            h.update(a.tobytes())
    for a in (cols, back):
        h.update(a.tobytes())
    print(h.hexdigest())
    """
)


def test_conv_kernels_give_the_same_bytes_with_one_and_two_threads():
    digests = []
    for threads in (1, 2):
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, "-c", KERNEL_SCRIPT], env=env, text=True,
                             capture_output=True, check=True, timeout=600)
        digests.append(out.stdout.strip().splitlines()[-1])
    assert len(digests[0]) == 64 and digests[0] == digests[1]
