"""Slow, plain-numpy references for convolution and pooling: direct loops, float64.

Layout (the one the kernels use): a batch of images is stored row by row, one row per
sample, each row an image in (height, width, channel) order flattened, i.e. element
(i, j, c) of a (H, W, C) image sits at column (i * W + j) * C + c. A convolution with a
k x k kernel, stride s and zero padding p maps (H, W, C_in) to (H_out, W_out, C_out) with
H_out = (H + 2 p - k) // s + 1 (likewise W_out), and

    out[n, i, j, o] = b[o] + sum_{u, v < k, c < C_in} Wt[o, (u * k + v) * C_in + c]
                                               * x[n, i s + u - p, j s + v - p, c]

(zero outside the image). The weight matrix Wt (C_out, k k C_in) is the dense layer's W
acting on patches: im2col gives one patch row per (sample, output position), in
(sample, i, j) order, with columns (u, v, c), so that ``im2col(x) @ Wt.T`` reshaped to
(R, H_out W_out C_out) is the convolution. Pooling windows of ``size`` with ``stride``
have no padding: H_out = (H - size) // stride + 1.

Written independently of the kernels: no numba, no shared helpers with the package.
"""

from __future__ import annotations

import numpy as np


def out_size(n: int, k: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - k) // stride + 1


def _taps(H, W, k, stride, pad):
    """Every (i, j, u, v, r, c): output position (i, j), kernel tap (u, v) and the input
    pixel (r, c) = (i s + u - p, j s + v - p) it reads, for the taps inside the image."""
    for i in range(out_size(H, k, stride, pad)):
        for j in range(out_size(W, k, stride, pad)):
            for u in range(k):
                for v in range(k):
                    r, c = i * stride + u - pad, j * stride + v - pad
                    if 0 <= r < H and 0 <= c < W:
                        yield i, j, u, v, r, c


def _images(x, shape):
    H, W, C = shape
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], H, W, C)


def conv(x, shape, Wt, b, k, stride=1, pad=0):
    """Direct convolution: x (R, H W C_in), Wt (C_out, k k C_in), b (C_out,) or None ->
    (R, H_out W_out C_out)."""
    img = _images(x, shape)
    R, H, W, C = img.shape
    Ho, Wo = out_size(H, k, stride, pad), out_size(W, k, stride, pad)
    Wt = np.asarray(Wt, dtype=np.float64).reshape(-1, k, k, C)
    out = np.zeros((R, Ho, Wo, Wt.shape[0]))
    for n in range(R):
        for i, j, u, v, r, c in _taps(H, W, k, stride, pad):
            out[n, i, j] += Wt[:, u, v, :] @ img[n, r, c]
    if b is not None:
        out += np.asarray(b, dtype=np.float64)
    return out.reshape(R, -1)


def im2col(x, shape, k, stride=1, pad=0):
    """Patch rows (R H_out W_out, k k C): row (n, i, j), column (u, v, c)."""
    img = _images(x, shape)
    R, H, W, C = img.shape
    Ho, Wo = out_size(H, k, stride, pad), out_size(W, k, stride, pad)
    out = np.zeros((R, Ho, Wo, k, k, C))
    for n in range(R):
        for i, j, u, v, r, c in _taps(H, W, k, stride, pad):
            out[n, i, j, u, v] = img[n, r, c]
    return out.reshape(R * Ho * Wo, k * k * C)


def col2im(cols, shape, k, stride=1, pad=0):
    """The adjoint of im2col: patch rows (R H_out W_out, k k C) summed back into images
    (R, H W C); an input element gets the sum over every patch it appears in."""
    H, W, C = shape
    Ho, Wo = out_size(H, k, stride, pad), out_size(W, k, stride, pad)
    cols = np.asarray(cols, dtype=np.float64)
    R = cols.shape[0] // (Ho * Wo)
    patches = cols.reshape(R, Ho, Wo, k, k, C)
    out = np.zeros((R, H, W, C))
    for n in range(R):
        for i, j, u, v, r, c in _taps(H, W, k, stride, pad):
            out[n, r, c] += patches[n, i, j, u, v]
    return out.reshape(R, -1)


def pool(x, shape, kind, size, stride):
    """Max or average pooling per channel: (R, H W C) -> (R, H_out W_out C)."""
    img = _images(x, shape)
    R, H, W, C = img.shape
    Ho, Wo = out_size(H, size, stride, 0), out_size(W, size, stride, 0)
    out = np.zeros((R, Ho, Wo, C))
    for i in range(Ho):
        for j in range(Wo):
            window = img[:, i * stride:i * stride + size, j * stride:j * stride + size]
            out[:, i, j] = window.max(axis=(1, 2)) if kind == "max" else window.mean(axis=(1, 2))
    return out.reshape(R, -1)


def pool_backward(g, x, shape, kind, size, stride):
    """Gradient of sum(g * pool(x)) with respect to x: (R, H W C). Max pooling routes each
    window's gradient to its first maximum in (row, column) order; windows that overlap
    add up."""
    img = _images(x, shape)
    R, H, W, C = img.shape
    Ho, Wo = out_size(H, size, stride, 0), out_size(W, size, stride, 0)
    g = np.asarray(g, dtype=np.float64).reshape(R, Ho, Wo, C)
    out = np.zeros((R, H, W, C))
    for n in range(R):
        for i in range(Ho):
            for j in range(Wo):
                for c in range(C):
                    if kind == "avg":
                        out[n, i * stride:i * stride + size, j * stride:j * stride + size,
                            c] += g[n, i, j, c] / (size * size)
                        continue
                    window = img[n, i * stride:i * stride + size,
                                 j * stride:j * stride + size, c]
                    u, v = np.unravel_index(np.argmax(window), window.shape)  # first max
                    out[n, i * stride + u, j * stride + v, c] += g[n, i, j, c]
    return out.reshape(R, -1)
