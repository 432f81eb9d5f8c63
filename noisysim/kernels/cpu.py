"""CPU kernels of the simulated network: activations, their derivatives, losses.

Pure Numba: arrays and scalars in, arrays out; no configuration objects, no I/O. Matrix
products are not here: they go to BLAS through numpy in the callers. Each kernel has a
plain-numpy twin in tests/naive.py that the test suite compares it against.

An activation is an integer code plus three float parameters, so one compiled kernel serves
all of them (see ``noisysim.activations`` for the meaning of each code and parameter).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import PARALLEL_MIN_SIZE, rng

# Activation codes (stable: they are stored in nothing, but tests and the GPU twin use them).
IDENTITY = 0
RELU = 1
LEAKY_RELU = 2
TANH = 3
SIGMOID = 4
HARDTANH = 5
STEP = 6
SIGN = 7
QUANTIZE = 8
BINARY_STOCHASTIC = 9

# error_model="numpy": no Python-style checks (division by zero, sqrt of negatives), which
# would stop LLVM from vectorising loops; no value here can trigger them. fastmath stays off:
# every operation is rounded as written.
_OPTS = dict(cache=True, error_model="numpy")
_PARALLEL = dict(_OPTS, parallel=True)

# Which derivative the backward kernels use.
TRUE_DERIVATIVE = 0
STRAIGHT_THROUGH = 1


@njit(**_OPTS, inline="always")
def _sigmoid(a):
    # Split by sign so exp never overflows.
    if a >= 0.0:
        return 1.0 / (1.0 + math.exp(-a))
    e = math.exp(a)
    return e / (1.0 + e)


@njit(**_OPTS)
def activation_scalar(code, a, p0, p1, p2, u):
    """f(a) for one element; ``u`` is a uniform draw used only by binary_stochastic."""
    if code == IDENTITY:
        return a
    if code == RELU:
        return a if a > 0.0 else 0.0
    if code == LEAKY_RELU:
        return a if a > 0.0 else p0 * a
    if code == TANH:
        return math.tanh(a)
    if code == SIGMOID:
        return _sigmoid(a)
    if code == HARDTANH:
        return min(max(a, p0), p1)
    if code == STEP:
        return 1.0 if a > p0 else 0.0
    if code == SIGN:
        return 1.0 if a >= 0.0 else -1.0
    if code == QUANTIZE:
        # p0 = levels, p1 = lo, p2 = hi: round to the nearest of `levels` equispaced values.
        c = min(max(a, p1), p2)
        width = (p2 - p1) / (p0 - 1.0)
        return p1 + math.floor((c - p1) / width + 0.5) * width
    if code == BINARY_STOCHASTIC:
        return 1.0 if u < _sigmoid(a) else 0.0
    return math.nan


@njit(**_OPTS)
def derivative_scalar(code, a, p0, p1, p2, mode):
    """f'(a) (mode TRUE_DERIVATIVE, zero where f is flat) or its straight-through surrogate."""
    if code == IDENTITY:
        return 1.0
    if code == RELU:
        return 1.0 if a > 0.0 else 0.0
    if code == LEAKY_RELU:
        return 1.0 if a > 0.0 else p0
    if code == TANH:
        t = math.tanh(a)
        return 1.0 - t * t
    if code == SIGMOID or code == BINARY_STOCHASTIC:
        if code == BINARY_STOCHASTIC and mode == TRUE_DERIVATIVE:
            return 0.0
        # Surrogate of a Bernoulli(sigmoid(a)) unit: derivative of its mean.
        s = _sigmoid(a)
        return s * (1.0 - s)
    if code == HARDTANH:
        return 1.0 if (a > p0 and a < p1) else 0.0
    if mode == TRUE_DERIVATIVE:
        return 0.0  # step, sign, quantize are flat almost everywhere
    if code == STEP:
        return 1.0 if abs(a - p0) <= 0.5 else 0.0  # d/da clip(a - threshold + 1/2, 0, 1)
    if code == SIGN:
        return 1.0 if abs(a) <= 1.0 else 0.0  # d/da hardtanh(a)
    if code == QUANTIZE:
        return 1.0 if (a >= p1 and a <= p2) else 0.0  # d/da clip(a, lo, hi)
    return math.nan


# Kernels over rows come in two drivers: ``_*_rows(..., r0, r1)`` does rows r0..r1-1 serially
# (called directly for small arrays, where a parallel launch costs more than it saves) and a
# ``prange`` driver over blocks of rows for large ones. Results do not depend on the driver.
_BLOCK_ROWS = 16


@njit(**_OPTS, inline="always")
def _blocks(n_rows):
    return (n_rows + _BLOCK_ROWS - 1) // _BLOCK_ROWS


@njit(**_OPTS)
def _activation_rows(a, out, code, p0, p1, p2, seed, layer, times, n_batch, r0, r1):
    width = a.shape[1]
    for r in range(r0, r1):
        u = 0.5
        k = np.uint64(0)
        if code == BINARY_STOCHASTIC:
            k = rng.key(seed, rng.STREAM_ACTIVATION, times[r // n_batch], layer)
        base = (r % n_batch) * width
        # The common piecewise-linear units get their own branch-free loops, which LLVM
        # vectorises; everything else goes through activation_scalar.
        if code == LEAKY_RELU or code == RELU:
            slope = p0 if code == LEAKY_RELU else 0.0
            for j in range(width):
                v = a[r, j]
                out[r, j] = v if v > 0.0 else slope * v
        elif code == IDENTITY:
            for j in range(width):
                out[r, j] = a[r, j]
        else:
            for j in range(width):
                if code == BINARY_STOCHASTIC:
                    u = rng.uniform(k, base + j)
                out[r, j] = activation_scalar(code, a[r, j], p0, p1, p2, u)


@njit(**_PARALLEL)
def _activation_blocks(a, out, code, p0, p1, p2, seed, layer, times, n_batch):
    n = a.shape[0]
    for blk in prange(_blocks(n)):
        _activation_rows(a, out, code, p0, p1, p2, seed, layer, times, n_batch,
                         blk * _BLOCK_ROWS, min(n, (blk + 1) * _BLOCK_ROWS))


def activation_forward(a, out, code, p0, p1, p2, seed, layer, times):
    """out[p, b, j] = f(a[p, b, j]); pass p of binary_stochastic draws with key time times[p].

    a, out: (P, B, N) C-contiguous. The uniform for element (b, j) of pass p is
    rng.uniform(rng.key(seed, STREAM_ACTIVATION, times[p], layer), b * N + j).
    """
    n_pass, n_batch, width = a.shape
    args = (a.reshape(n_pass * n_batch, width), out.reshape(n_pass * n_batch, width),
            code, p0, p1, p2, seed, layer, times, n_batch)
    if a.size >= PARALLEL_MIN_SIZE:
        _activation_blocks(*args)
    else:
        _activation_rows(*args, 0, n_pass * n_batch)


@njit(**_OPTS)
def activation_derivative(a, out, code, p0, p1, p2, mode):
    """out = f'(a) (or the surrogate when mode == STRAIGHT_THROUGH); a, out: (B, N).

    Serial: it runs once per layer per BP step, on arrays a memory pass can handle.
    """
    n_batch, width = a.shape
    for b in range(n_batch):
        for j in range(width):
            out[b, j] = derivative_scalar(code, a[b, j], p0, p1, p2, mode)


@njit(**_OPTS)
def multiply_by_derivative(g, a, code, p0, p1, p2, mode):
    """g <- g * f'(a) in place (the surrogate when mode == STRAIGHT_THROUGH); g, a: (B, N).

    The same values as g * activation_derivative(a) in one pass; the common piecewise-linear
    units get branch-free loops that LLVM vectorises. Serial, like activation_derivative.
    """
    n_batch, width = a.shape
    if code == IDENTITY:
        return
    t = g.dtype.type  # f'(a) is rounded to g's dtype before the product, as it would be stored
    for b in range(n_batch):
        if code == LEAKY_RELU or code == RELU:
            slope = t(p0 if code == LEAKY_RELU else 0.0)
            for j in range(width):
                v = g[b, j]
                g[b, j] = v if a[b, j] > 0.0 else v * slope
        else:
            for j in range(width):
                g[b, j] = g[b, j] * t(derivative_scalar(code, a[b, j], p0, p1, p2, mode))


@njit(**_OPTS)
def _add_rows(a, bias, eps, has_bias, has_eps, r0, r1):
    width = a.shape[1]
    for r in range(r0, r1):
        if has_bias:
            for j in range(width):
                a[r, j] += bias[j]
        if has_eps:
            for j in range(width):
                a[r, j] += eps[r, j]


@njit(**_PARALLEL)
def _add_blocks(a, bias, eps, has_bias, has_eps):
    n = a.shape[0]
    for blk in prange(_blocks(n)):
        _add_rows(a, bias, eps, has_bias, has_eps, blk * _BLOCK_ROWS,
                  min(n, (blk + 1) * _BLOCK_ROWS))


def add_bias_and_perturbation(a, bias, eps, has_bias, has_eps):
    """a[p, b, :] += bias (when has_bias) and a += eps (when has_eps); a, eps: (P, B, N)."""
    n_pass, n_batch, width = a.shape
    a2 = a.reshape(n_pass * n_batch, width)
    e2 = eps.reshape(n_pass * n_batch, width) if has_eps else eps.reshape(0, 0)
    if a.size >= PARALLEL_MIN_SIZE:
        _add_blocks(a2, bias, e2, has_bias, has_eps)
    else:
        _add_rows(a2, bias, e2, has_bias, has_eps, 0, a2.shape[0])


@njit(**_OPTS)
def _perturb_rows(a, eps, bias, has_bias, sigma, seed, layer, times, draw, n_batch, r0, r1):
    width = a.shape[1]
    z = np.empty(width)
    for r in range(r0, r1):
        p = r // n_batch
        if draw[p]:
            k = rng.key(seed, rng.STREAM_PERTURB, times[p], layer)
            rng.fill_normal_serial(z, k, (r % n_batch) * width)
            for j in range(width):
                eps[r, j] = sigma * z[j]
        if has_bias:
            for j in range(width):
                a[r, j] += bias[j]
        if draw[p]:
            for j in range(width):
                a[r, j] += eps[r, j]


@njit(**_PARALLEL)
def _perturb_blocks(a, eps, bias, has_bias, sigma, seed, layer, times, draw, n_batch):
    n = a.shape[0]
    for blk in prange(_blocks(n)):
        _perturb_rows(a, eps, bias, has_bias, sigma, seed, layer, times, draw, n_batch,
                      blk * _BLOCK_ROWS, min(n, (blk + 1) * _BLOCK_ROWS))


def draw_and_add_perturbation(a, eps, bias, has_bias, sigma, seed, layer, times, draw):
    """Draw node perturbations and add them (and the bias) to pre-activations, in one pass.

    For every pass p with draw[p]: eps[p, b, j] = sigma * rng.normal(rng.key(seed,
    STREAM_PERTURB, times[p], layer), b * N + j) (exactly ``sigma * rng.normal_array(...)``
    cast to eps's dtype); then a += bias (when has_bias) and a += eps for those passes.
    a, eps: (P, B, N) C-contiguous; eps rows of passes without a draw are left untouched.
    """
    n_pass, n_batch, width = a.shape
    args = (a.reshape(n_pass * n_batch, width), eps.reshape(n_pass * n_batch, width), bias,
            has_bias, sigma, seed, layer, times, draw, n_batch)
    if a.size >= PARALLEL_MIN_SIZE:
        _perturb_blocks(*args)
    else:
        _perturb_rows(*args, 0, n_pass * n_batch)


@njit(**_OPTS, inline="always")
def _softmax_shift_and_norm(logits, r):
    """(m, s) of row r: m = max_c z_c and s = sum_c exp(z_c - m), so that softmax_c =
    exp(z_c - m) / s and log-sum-exp = m + log s without overflow."""
    n_classes = logits.shape[1]
    m = logits[r, 0]
    for c in range(1, n_classes):
        m = max(m, logits[r, c])
    s = 0.0
    for c in range(n_classes):
        s += math.exp(logits[r, c] - m)
    return m, s


@njit(**_OPTS)
def cross_entropy(logits, labels, out):
    """out[r] = -log softmax(logits[r])[y], y = labels[r % len(labels)]; logits: (R, C).

    Labels broadcast over stacked passes (R = P * B rows, B labels). Serial: the output
    layer is narrow, so this is a small fraction of a step.
    """
    n_rows = logits.shape[0]
    n_labels = labels.shape[0]
    for r in range(n_rows):
        m, s = _softmax_shift_and_norm(logits, r)
        out[r] = m + math.log(s) - logits[r, labels[r % n_labels]]


@njit(**_OPTS)
def cross_entropy_grad(logits, labels, out):
    """out[r] = d ell_r / d logits[r] = softmax(logits[r]) - onehot(labels[r % len(labels)])."""
    n_rows, n_classes = logits.shape
    n_labels = labels.shape[0]
    for r in range(n_rows):
        m = logits[r, 0]
        for c in range(1, n_classes):
            m = max(m, logits[r, c])
        s = 0.0
        for c in range(n_classes):
            e = math.exp(logits[r, c] - m)
            out[r, c] = e
            s += e
        for c in range(n_classes):
            out[r, c] /= s
        out[r, labels[r % n_labels]] -= 1.0


@njit(**_OPTS)
def softmax_mse(logits, labels, out):
    """out[r] = (1/C) sum_c (softmax(logits[r])_c - t_c)^2, t = onehot(labels[r % len(labels)]).

    The DANP authors' squared error (their TF code: the mean over classes of (softmax(z) -
    t)^2). softmax_c = exp(z_c - m) / s with m = max_c z_c, s = sum_c exp(z_c - m); the
    exponentials are recomputed instead of stored (the output layer is narrow, and the CUDA
    twin has no per-row scratch).
    """
    n_rows, n_classes = logits.shape
    n_labels = labels.shape[0]
    for r in range(n_rows):
        m, s = _softmax_shift_and_norm(logits, r)
        y = labels[r % n_labels]
        acc = 0.0
        for c in range(n_classes):
            d = math.exp(logits[r, c] - m) / s - (1.0 if c == y else 0.0)
            acc += d * d
        out[r] = acc / n_classes


@njit(**_OPTS)
def softmax_mse_grad(logits, labels, out):
    """out[r] = d ell_r / d logits[r] of ``softmax_mse``: with p = softmax(z), t the one-hot
    target and q_c = (p_c - t_c) p_c,  d ell / d z_j = (2 / C) (q_j - p_j sum_c q_c)
    (from d p_c / d z_j = p_c (delta_cj - p_j)). Computed in float64, rounded once to out."""
    n_rows, n_classes = logits.shape
    n_labels = labels.shape[0]
    for r in range(n_rows):
        m, s = _softmax_shift_and_norm(logits, r)
        y = labels[r % n_labels]
        total = 0.0
        for c in range(n_classes):
            p = math.exp(logits[r, c] - m) / s
            total += (p - (1.0 if c == y else 0.0)) * p
        scale = 2.0 / n_classes
        for c in range(n_classes):
            p = math.exp(logits[r, c] - m) / s
            out[r, c] = scale * ((p - (1.0 if c == y else 0.0)) * p - p * total)


@njit(**_OPTS)
def squared_error(outputs, targets, out):
    """out[r] = 0.5 * ||outputs[r] - targets[r % len(targets)]||^2 (targets broadcast)."""
    n_rows, width = outputs.shape
    n_t = targets.shape[0]
    for r in range(n_rows):
        t = r % n_t
        s = 0.0
        for c in range(width):
            d = outputs[r, c] - targets[t, c]
            s += d * d
        out[r] = 0.5 * s


# -- Adam, fused: one pass over p, g, m, v instead of ten numpy passes ----------------------
_ADAM_BLOCK = 1 << 14


@njit(**_OPTS)
def column_sums(rows, out):
    """out[c] = sum_i rows[i, c] in the rows' dtype, adding row after row: numpy's own order
    for ``rows.sum(axis=0)`` of a C-contiguous array (the same bits), without its per-row
    overhead on the many short rows of a conv layer (57,600 rows of 16 at batch 100).
    Serial: the order must not depend on the number of threads."""
    out[:] = 0
    for i in range(rows.shape[0]):
        row = rows[i]
        for c in range(out.shape[0]):  # a view indexed from 0: vectorised
            out[c] += row[c]


@njit(**_OPTS)
def _adam_range(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, lr_c1, inv_c2, eps, i0, i1):
    """Adam on elements i0..i1-1 in the arrays' dtype, rounded op by op as the equations are
    written (no FMA); returns the sum of squared updates (float64)."""
    n = i1 - i0
    delta = np.empty(n, dtype=p.dtype)
    # Views indexed from 0: with p[i0 + k] LLVM cannot prove the index non-negative, keeps
    # the negative-index wraparound and does not vectorise.
    pv, gv, mv, vv = p[i0:i1], g[i0:i1], m[i0:i1], v[i0:i1]
    # Elementwise loop without a reduction, so LLVM vectorises it ...
    for k in range(n):
        gi = gv[k]
        mi = b1 * mv[k] + one_minus_b1 * gi
        vi = b2 * vv[k] + one_minus_b2 * (gi * gi)
        mv[k] = mi
        vv[k] = vi
        d = (mi * lr_c1) / (np.sqrt(vi * inv_c2) + eps)
        pv[k] -= d
        delta[k] = d
    # ... then the squared norm in float64 (NaN if an updated parameter is not finite).
    return _squares_and_finite(delta, pv)


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _squares_and_finite(delta, value):
    """sum(delta^2) in float64, plus 0 * value for every element: NaN as soon as one value
    is inf or NaN (the caller's divergence check, folded into a pass over data already in
    cache). "reassoc" lets LLVM vectorise the sum (its order is fixed by the compiled code,
    so the result is the same on every call and thread count); without "nnan"/"ninf" the
    0 * value terms are kept."""
    f8 = np.float64  # (numba's float() keeps a float32 a float32)
    s = 0.0
    for k in range(delta.shape[0]):
        s += f8(delta[k]) * f8(delta[k]) + 0.0 * f8(value[k])
    return s


@njit(**_PARALLEL)
def _adam_blocks(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, lr_c1, inv_c2, eps):
    n = p.shape[0]
    nb = (n + _ADAM_BLOCK - 1) // _ADAM_BLOCK
    partial = np.empty(nb)
    for blk in prange(nb):
        partial[blk] = _adam_range(p, g, m, v, b1, one_minus_b1, b2, one_minus_b2, lr_c1,
                                   inv_c2, eps, blk * _ADAM_BLOCK, min(n, (blk + 1) * _ADAM_BLOCK))
    total = 0.0
    for blk in range(nb):  # fixed order: the same sum for any thread count
        total += partial[blk]
    return total


def adam_update(p, g, m, v, beta1, beta2, lr_c1, inv_c2, eps):
    """In place on flat C-contiguous arrays of one dtype:
        m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2
        p <- p - (m * lr_c1) / (sqrt(v * inv_c2) + eps)
    with lr_c1 = lr / (1 - beta1^t) and inv_c2 = 1 / (1 - beta2^t). Returns ||Delta p||^2,
    NaN if an updated element of p is not finite."""
    t = p.dtype.type
    args = (p, g, m, v, t(beta1), t(1.0 - beta1), t(beta2), t(1.0 - beta2), t(lr_c1),
            t(inv_c2), t(eps))
    if p.size >= PARALLEL_MIN_SIZE:
        return _adam_blocks(*args)
    return _adam_range(*args, 0, p.size)


# -- decorrelation: the R step, fused -------------------------------------------------------
_ROW_BLOCK = 16


@njit(**_OPTS)
def _decorrelation_rows(delta, second, R, c1, c2, kappa, has_kappa, lr, i0, i1):
    """Rows i0..i1-1 of delta <- lr * (c1 * delta + c2 * (second[:, None] * R) - kappa * R),
    rounded op by op as written; returns their ||delta||^2 (float64), NaN if R - delta
    would not be finite there."""
    d = R.shape[1]
    acc = 0.0
    diff = np.empty(d, dtype=R.dtype)
    for i in range(i0, i1):
        s = second[i]
        drow, rrow = delta[i], R[i]
        for j in range(d):  # elementwise, vectorised
            r = rrow[j]
            v = drow[j] * c1
            v = v + c2 * (s * r)
            if has_kappa:
                v = v - kappa * r
            v = v * lr
            drow[j] = v
            diff[j] = r - v
        acc += _squares_and_finite(drow, diff)
    return acc


@njit(**_PARALLEL)
def _decorrelation_blocks(delta, second, R, c1, c2, kappa, has_kappa, lr):
    rows = R.shape[0]
    nb = (rows + _ROW_BLOCK - 1) // _ROW_BLOCK
    partial = np.empty(nb)
    for blk in prange(nb):
        partial[blk] = _decorrelation_rows(delta, second, R, c1, c2, kappa, has_kappa, lr,
                                           blk * _ROW_BLOCK, min(rows, (blk + 1) * _ROW_BLOCK))
    total = 0.0
    for blk in range(nb):  # fixed order: the same sum for any thread count
        total += partial[blk]
    return total


def decorrelation_delta(delta, second, R, c1, c2, kappa, lr):
    """In place on C-contiguous (d, d) arrays of one dtype, given delta = X*^T (X* R):
        delta <- lr * (c1 * delta + c2 * (second[:, None] * R) - kappa * R)
    (the kappa term only when kappa != 0). Returns ||delta||_F^2, NaN if R - delta has a
    non-finite element. R is not changed."""
    t = R.dtype.type
    args = (delta, second.astype(R.dtype, copy=False), R, t(c1), t(c2), t(kappa),
            kappa != 0.0, t(lr))
    if R.size >= PARALLEL_MIN_SIZE:
        return _decorrelation_blocks(*args)
    return _decorrelation_rows(*args, 0, R.shape[0])
