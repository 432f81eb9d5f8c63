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

Speed: the inner loops run over contiguous runs (channels innermost) through views indexed
from 0, or slice copies, which LLVM vectorises; indexing a 2-D array at a computed offset
does not (numba's negative-index wraparound blocks it).
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
    kC = k * C
    for line in prange(x.shape[0] * Ho):  # one thread writes the patch rows of one output row
        r, i = line // Ho, line % Ho
        xr = x[r]
        for j in range(Wo):
            o = out[line * Wo + j]
            left = j * stride - pad  # image column of v = 0
            lo, hi = max(0, -left) * C, min(k, W - left) * C  # patch columns inside the image
            for u in range(k):
                y = i * stride + u - pad
                base = u * kC
                if y < 0 or y >= H or lo >= hi:
                    for e in range(kC):
                        o[base + e] = 0.0
                    continue
                for e in range(lo):
                    o[base + e] = 0.0
                src = (y * W + left) * C
                if hi - lo >= 16:  # a slice copy vectorises; short runs are cheaper as loops
                    o[base + lo:base + hi] = xr[src + lo:src + hi]
                else:
                    for e in range(lo, hi):
                        o[base + e] = xr[src + e]
                for e in range(hi, kC):
                    o[base + e] = 0.0

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
                # kernel columns v_lo..v_hi-1: one contiguous run in the patch and the row;
                # added through views indexed from 0, which vectorises
                src, dst, n = (u * k + v_lo) * C, (left + v_lo) * C, (v_hi - v_lo) * C
                into, patch = acc[dst:dst + n], cols[r * L + i * Wo + j, src:src + n]
                for e in range(n):
                    into[e] += patch[e]
        out[r, y * W * C:(y + 1) * W * C] = acc

@njit(**_PARALLEL)
def _pool_forward(x, H, W, C, kind, size, stride, out):
    Ho, Wo = (H - size) // stride + 1, (W - size) // stride + 1
    for line in prange(out.shape[0] * Ho):  # one thread owns one output row
        r, i = line // Ho, line % Ho
        acc = np.empty(C)
        best = np.empty(C, x.dtype)
        for j in range(Wo):
            first = ((i * stride) * W + j * stride) * C
            best[:] = x[r, first:first + C]
            acc[:] = 0.0
            for u in range(size):  # channels innermost: views indexed from 0 vectorise
                for v in range(size):
                    src = ((i * stride + u) * W + j * stride + v) * C
                    pixel = x[r, src:src + C]
                    for c in range(C):
                        value = pixel[c]
                        acc[c] += value
                        best[c] = value if value > best[c] else best[c]
            o = out[r, (i * Wo + j) * C:(i * Wo + j + 1) * C]
            if kind == MAX:
                o[:] = best
            else:
                for c in range(C):
                    o[c] = acc[c] / (size * size)


@njit(**_PARALLEL)
def _pool_backward(g, x, H, W, C, kind, size, stride, out):
    Ho, Wo = (H - size) // stride + 1, (W - size) // stride + 1
    scale = 1.0 / (size * size)
    overlap = stride < size  # else every input element gets at most one term: no sums
    for r in prange(out.shape[0]):  # one thread owns one image: windows add in (i, j) order
        acc = np.zeros(H * W * C if overlap else 0)
        if not overlap:
            out[r] = 0.0
        at = np.empty(C, np.int64)
        best = np.empty(C, x.dtype)
        for i in range(Ho):
            for j in range(Wo):
                grad = g[r, (i * Wo + j) * C:(i * Wo + j + 1) * C]
                if kind == AVG:
                    for u in range(size):
                        for v in range(size):
                            dst = ((i * stride + u) * W + j * stride + v) * C
                            if overlap:
                                into = acc[dst:dst + C]
                                for c in range(C):
                                    into[c] += grad[c] * scale
                            else:  # the same rounding: the float64 product, cast once
                                into_out = out[r, dst:dst + C]
                                for c in range(C):
                                    into_out[c] = grad[c] * scale
                    continue
                first = ((i * stride) * W + j * stride) * C
                best[:] = x[r, first:first + C]
                for c in range(C):
                    at[c] = first + c
                for u in range(size):
                    for v in range(size):
                        src = ((i * stride + u) * W + j * stride + v) * C
                        pixel = x[r, src:src + C]
                        for c in range(C):  # strict: the first maximum keeps the gradient
                            value = pixel[c]
                            at[c] = src + c if value > best[c] else at[c]
                            best[c] = value if value > best[c] else best[c]
                if overlap:
                    for c in range(C):
                        acc[at[c]] += grad[c]
                else:
                    for c in range(C):
                        out[r, at[c]] = grad[c]
        if overlap:
            out[r] = acc


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
