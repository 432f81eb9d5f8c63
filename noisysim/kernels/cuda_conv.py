"""numba.cuda kernels of convolutional layers: im2col, its adjoint col2im, pooling and its
backward (the GPU side of the backend's ``conv`` operations).

Layout (tests/naive_conv.py, the plain-numpy twins): a batch of R images of shape
(H, W, C) is an (R, H W C) array, element (y, x, c) of image r at column (y W + x) C + c.
A k x k window with stride s and zero padding p has H_out = (H + 2 p - k) // s + 1
(likewise W_out) and L = H_out W_out positions; ``im2col`` writes one patch row per
(image, position) in (r, i, j) order, columns (u, v, c):

    cols[r L + i W_out + j, (u k + v) C + c] = x[r, i s + u - p, j s + v - p, c]   (0 outside)

``col2im`` is its adjoint: input element (y, x, c) receives the sum of the patch entries
that copied it. Pooling windows (size, stride) have no padding; max pooling's backward
routes each window's gradient to the window's FIRST maximum in (row, column) order
(``value > best``, so a NaN is never chosen over the window's first element), and
overlapping windows add up.

Determinism without atomics: every kernel is a gather over its OUTPUT elements, one thread
per element in a grid-stride loop. A thread sums its terms in a fixed order (windows i
ascending, then j ascending), in float64, and rounds once to the output's dtype, so the
result depends neither on the launch configuration nor on the order blocks run in. That
order and arithmetic are the CPU kernels' (``noisysim.kernels.conv``: float64 sums, the
average pool divided by size^2 after its sum, its backward adding g * (1 / size^2) per
window), and the kernels are compiled without FMA contraction (``exact_kernel``), so both
backends give the same bytes (tests/test_cuda_conv.py).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .cuda_compile import exact_kernel
from .cuda_launch import launch

#: pooling kinds (the integer codes the kernels take)
MAX, AVG = 0, 1
POOL_KINDS = {"max": MAX, "avg": AVG}


@cuda.jit(device=True)
def _divmod(a, b):
    """(a // b, a % b) of non-negative integers."""
    q = a // b
    return q, a - q * b


@cuda.jit(device=True)
def _pixel(e, W, C):
    """(y, x, c) of column e of an (H, W, C) image row."""
    y, rest = _divmod(e, W * C)
    xx, c = _divmod(rest, C)
    return y, xx, c


@cuda.jit(device=True)
def _out_size(n, k, stride, pad):
    """Window positions along an axis of n: (n + 2 p - k) // s + 1."""
    return (n + 2 * pad - k) // stride + 1


@cuda.jit(device=True)
def _first(y, pad, k, stride):
    """Smallest output index i >= 0 whose window [i s - p, i s - p + k) contains y: the
    ceiling of (y + p - k + 1) / s, taken as -floor(-num / s) (num may be negative)."""
    num = y + pad - k + 1
    i = -((-num) // stride)
    return i if i > 0 else 0


@cuda.jit(device=True)
def _last(y, pad, stride, n_out):
    """Largest output index i < n_out whose window starts at or before y: min(n_out - 1,
    (y + p) // s)."""
    i = (y + pad) // stride
    return i if i < n_out - 1 else n_out - 1


@cuda.jit(device=True)
def _first_max(x, r, W, C, c, size, stride, i, j):
    """(u, v) of the first maximum, in (row, column) order, of pooling window (i, j)."""
    bu = 0
    bv = 0
    best = x[r, ((i * stride) * W + j * stride) * C + c]
    for u in range(size):
        for v in range(size):
            value = x[r, ((i * stride + u) * W + j * stride + v) * C + c]
            if value > best:
                best = value
                bu = u
                bv = v
    return bu, bv


@exact_kernel
def _im2col(x, H, W, C, k, stride, pad, out):
    Wo = _out_size(W, k, stride, pad)
    L = _out_size(H, k, stride, pad) * Wo
    n_rows, width = out.shape
    for t in range(cuda.grid(1), n_rows * width, cuda.gridsize(1)):
        row, col = _divmod(t, width)
        r, pos = _divmod(row, L)
        i, j = _divmod(pos, Wo)
        u, rest = _divmod(col, k * C)
        v, c = _divmod(rest, C)
        y = i * stride + u - pad
        xx = j * stride + v - pad
        if 0 <= y < H and 0 <= xx < W:
            out[row, col] = x[r, (y * W + xx) * C + c]
        else:
            out[row, col] = 0.0


@exact_kernel
def _col2im(cols, H, W, C, k, stride, pad, out):
    Ho = _out_size(H, k, stride, pad)
    Wo = _out_size(W, k, stride, pad)
    n_img, width = out.shape
    for t in range(cuda.grid(1), n_img * width, cuda.gridsize(1)):
        r, e = _divmod(t, width)
        y, xx, c = _pixel(e, W, C)
        acc = 0.0
        for i in range(_first(y, pad, k, stride), _last(y, pad, stride, Ho) + 1):
            u = y + pad - i * stride
            for j in range(_first(xx, pad, k, stride), _last(xx, pad, stride, Wo) + 1):
                v = xx + pad - j * stride
                acc += float(cols[(r * Ho + i) * Wo + j, (u * k + v) * C + c])
        out[r, e] = acc


@exact_kernel
def _pool_forward(x, H, W, C, kind, size, stride, out):
    Wo = _out_size(W, size, stride, 0)
    n_img, width = out.shape
    for t in range(cuda.grid(1), n_img * width, cuda.gridsize(1)):
        r, e = _divmod(t, width)
        pos, c = _divmod(e, C)
        i, j = _divmod(pos, Wo)
        if kind == MAX:
            u, v = _first_max(x, r, W, C, c, size, stride, i, j)
            out[r, e] = x[r, ((i * stride + u) * W + j * stride + v) * C + c]
        else:
            acc = 0.0
            for u in range(size):
                for v in range(size):
                    acc += float(x[r, ((i * stride + u) * W + j * stride + v) * C + c])
            out[r, e] = acc / (size * size)


@exact_kernel
def _pool_backward(g, x, H, W, C, kind, size, stride, out):
    Ho = _out_size(H, size, stride, 0)
    Wo = _out_size(W, size, stride, 0)
    n_img, width = out.shape
    for t in range(cuda.grid(1), n_img * width, cuda.gridsize(1)):
        r, e = _divmod(t, width)
        y, xx, c = _pixel(e, W, C)
        scale = 1.0 / (size * size) if kind == AVG else 1.0
        acc = 0.0
        for i in range(_first(y, 0, size, stride), _last(y, 0, stride, Ho) + 1):
            for j in range(_first(xx, 0, size, stride), _last(xx, 0, stride, Wo) + 1):
                if kind == MAX:
                    u, v = _first_max(x, r, W, C, c, size, stride, i, j)
                    if i * stride + u != y or j * stride + v != xx:
                        continue
                acc += float(g[r, (i * Wo + j) * C + c]) * scale
        out[r, e] = acc


# ============================================================================ host wrappers
# x, cols, g, out: 2-D C-contiguous device arrays of one float dtype; shape = (H, W, C) of
# the op's INPUT image.


def im2col(x, shape, k, stride, pad, out) -> None:
    """out (R L, k k C) = the patch rows of the images x (R, H W C)."""
    H, W, C = shape
    launch(_im2col, out.size, x, np.int64(H), np.int64(W), np.int64(C), np.int64(k),
           np.int64(stride), np.int64(pad), out)


def col2im(cols, shape, k, stride, pad, out) -> None:
    """out (R, H W C) = the adjoint of im2col applied to cols (R L, k k C), overwritten."""
    H, W, C = shape
    launch(_col2im, out.size, cols, np.int64(H), np.int64(W), np.int64(C), np.int64(k),
           np.int64(stride), np.int64(pad), out)


def pool_forward(x, shape, kind, size, stride, out) -> None:
    """out (R, H_out W_out C) = max (kind "max") or mean ("avg") of each window of x."""
    H, W, C = shape
    launch(_pool_forward, out.size, x, np.int64(H), np.int64(W), np.int64(C),
           np.int64(POOL_KINDS[kind]), np.int64(size), np.int64(stride), out)


def pool_backward(g, x, shape, kind, size, stride, out) -> None:
    """out (R, H W C) = d sum(g * pool(x)) / dx for g (R, H_out W_out C), overwritten."""
    H, W, C = shape
    launch(_pool_backward, out.size, g, x, np.int64(H), np.int64(W), np.int64(C),
           np.int64(POOL_KINDS[kind]), np.int64(size), np.int64(stride), out)
