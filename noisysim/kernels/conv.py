"""CPU kernels of convolutional layers: im2col, its adjoint col2im, pooling and its backward.

Pure Numba over 2-D C-contiguous arrays; no configuration, no I/O. Layout (the one of
tests/naive_conv.py, their plain-numpy twins): a batch of R images of shape (H, W, C) is an
(R, H W C) array, element (i, j, c) of image r at column (i W + j) C + c ("NHWC-flat").

A k x k convolution with stride s and zero padding p has H_out = (H + 2 p - k) // s + 1
(likewise W_out) and L = H_out W_out positions. ``im2col`` forms one patch row per
(image, position) in (r, i, j) order, columns (u, v, c) for u, v < k, c < C:

    cols[r L + i W_out + j, (u k + v) C + c] = x[r, i s + u - p, j s + v - p, c]   (0 outside)

so that a convolution with weights Wt (C_out, k k C) is the product ``cols @ Wt.T``, whose
(R L, C_out) memory is the (R, H_out W_out C_out) output. ``col2im`` is the adjoint: every
input element receives the sum of the patch entries that copied it.

Pooling (max or average) over size x size windows with a stride, no padding:
H_out = (H - size) // stride + 1. Max pooling's backward routes each window's gradient to
the window's FIRST maximum in (row, column) order; overlapping windows add up.

Determinism: each output element is written by one thread, summing its terms in a fixed
order (in float64, rounded once), so results do not depend on the number of threads:
im2col, col2im and pooling gather; pooling's backward gives each thread whole images and
adds the windows in (row, column) order, which finds each window's maximum once instead of
once per element. Small arrays take serial twins (``PARALLEL_MIN_SIZE``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import PARALLEL_MIN_SIZE, serial_twin

_OPTS = dict(cache=True, error_model="numpy")
_PARALLEL = dict(_OPTS, parallel=True)

#: pooling kinds (the integer codes the kernels take)
MAX, AVG = 0, 1
POOL_KINDS = {"max": MAX, "avg": AVG}


def out_size(n: int, k: int, stride: int, pad: int) -> int:
    """Output positions along one axis: (n + 2 pad - k) // stride + 1."""
    return (n + 2 * pad - k) // stride + 1


@njit(**_OPTS, inline="always")
def _first(y, pad, k, stride):
    """Smallest output index i >= 0 whose window [i s - p, i s - p + k) contains y."""
    num = y + pad - k + 1  # i s >= y + p - k + 1; ceil division of a possibly negative num
    return max(0, -((-num) // stride))


@njit(**_PARALLEL)
def _im2col(x, H, W, C, k, stride, pad, out):
    Ho, Wo = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    L = Ho * Wo
    for row in prange(out.shape[0]):
        r, pos = row // L, row % L
        i, j = pos // Wo, pos % Wo
        left = j * stride - pad  # image column of v = 0
        v_lo, v_hi = max(0, -left), min(k, W - left)  # kernel columns inside the image
        for u in range(k):
            y = i * stride + u - pad
            base = u * k * C
            if y < 0 or y >= H or v_lo >= v_hi:
                for e in range(k * C):
                    out[row, base + e] = 0.0
                continue
            for e in range(v_lo * C):
                out[row, base + e] = 0.0
            # kernel columns v_lo..v_hi-1 are one contiguous run in the image row and the patch
            src = (y * W + left) * C
            for e in range(v_lo * C, v_hi * C):
                out[row, base + e] = x[r, src + e]
            for e in range(v_hi * C, k * C):
                out[row, base + e] = 0.0


@njit(**_PARALLEL)
def _col2im(cols, H, W, C, k, stride, pad, out):
    Ho, Wo = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    L = Ho * Wo
    for line in prange(out.shape[0] * H):  # one thread owns one image row of the output
        r, y = line // H, line % H
        acc = np.zeros(W * C)
        i_hi = min(Ho - 1, (y + pad) // stride)
        for i in range(_first(y, pad, k, stride), i_hi + 1):  # windows over row y, in order
            u = y + pad - i * stride
            for j in range(Wo):
                left = j * stride - pad  # image column of v = 0
                v_lo, v_hi = max(0, -left), min(k, W - left)
                if v_lo >= v_hi:
                    continue
                # kernel columns v_lo..v_hi-1: one contiguous run in the patch and the row
                row, src, dst = r * L + i * Wo + j, (u * k + v_lo) * C, (left + v_lo) * C
                for e in range((v_hi - v_lo) * C):
                    acc[dst + e] += cols[row, src + e]
        base = y * W * C
        for e in range(W * C):
            out[r, base + e] = acc[e]


@njit(**_PARALLEL)
def _pool_forward(x, H, W, C, kind, size, stride, out):
    Ho, Wo = (H - size) // stride + 1, (W - size) // stride + 1
    for line in prange(out.shape[0] * Ho):
        r, i = line // Ho, line % Ho
        for j in range(Wo):
            dst = (i * Wo + j) * C
            for c in range(C):
                first = ((i * stride) * W + j * stride) * C + c
                best, acc = x[r, first], 0.0
                for u in range(size):
                    for v in range(size):
                        value = x[r, ((i * stride + u) * W + j * stride + v) * C + c]
                        acc += value
                        if value > best:
                            best = value
                out[r, dst + c] = best if kind == MAX else acc / (size * size)


@njit(**_PARALLEL)
def _pool_backward(g, x, H, W, C, kind, size, stride, out):
    Ho, Wo = (H - size) // stride + 1, (W - size) // stride + 1
    scale = 1.0 / (size * size)
    for r in prange(out.shape[0]):  # one thread owns one image: windows add in (i, j) order
        acc = np.zeros(H * W * C)
        for i in range(Ho):
            for j in range(Wo):
                for c in range(C):
                    grad = g[r, (i * Wo + j) * C + c]
                    if kind == AVG:
                        for u in range(size):
                            for v in range(size):
                                acc[((i * stride + u) * W + j * stride + v) * C + c] += (
                                    grad * scale)
                        continue
                    first = ((i * stride) * W + j * stride) * C + c
                    best, at = x[r, first], first
                    for u in range(size):
                        for v in range(size):
                            e = ((i * stride + u) * W + j * stride + v) * C + c
                            if x[r, e] > best:  # strict: the first maximum keeps the gradient
                                best, at = x[r, e], e
                    acc[at] += grad
        for e in range(H * W * C):
            out[r, e] = acc[e]


_SERIAL = {k: serial_twin(k, **_OPTS) for k in (_im2col, _col2im, _pool_forward, _pool_backward)}


def _pick(kernel, size):
    return kernel if size >= PARALLEL_MIN_SIZE else _SERIAL[kernel]


def im2col(x, H, W, C, k, stride, pad, out) -> None:
    """out (R L, k k C) = the patch rows of the images x (R, H W C) (module docstring)."""
    _pick(_im2col, out.size)(x, H, W, C, k, stride, pad, out)


def col2im(cols, H, W, C, k, stride, pad, out) -> None:
    """out (R, H W C) = the adjoint of im2col applied to cols (R L, k k C), overwritten."""
    _pick(_col2im, cols.size)(cols, H, W, C, k, stride, pad, out)


def pool_forward(x, H, W, C, kind, size, stride, out) -> None:
    """out (R, H_out W_out C) = max (kind MAX) or mean (AVG) of each window of x."""
    _pick(_pool_forward, x.size)(x, H, W, C, kind, size, stride, out)


def pool_backward(g, x, H, W, C, kind, size, stride, out) -> None:
    """out (R, H W C) = d sum(g * pool(x)) / dx for g (R, H_out W_out C), overwritten."""
    _pick(_pool_backward, x.size)(g, x, H, W, C, kind, size, stride, out)
