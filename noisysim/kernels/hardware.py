"""CPU kernels of the hardware non-idealities beyond node noise (``noisysim.hardware``):
the read-out channel the learning rules measure through, and the weight-update devices.

The scalar functions (``readout_scalar``, ``write_scalar``) are the one source of truth:
``noisysim.kernels.cuda_hardware`` compiles them as CUDA device functions, and every value
they compute uses + - * / and floor only, so both backends give the same bits.

Read-out (per measured value v, with a draw z ~ N(0, 1))::

    y = v + std * z                                   (read-out noise, in v's units)
    ADC with ``levels`` = 2^bits > 0 levels over [lo, hi], Delta = (hi - lo) / (levels - 1):
    y = lo + Delta * k,  k = clamp(floor((y - lo) / Delta + 1/2), 0, levels - 1)

(levels = 0: no ADC; a NaN stays NaN, so the engine still sees a non-finite loss.)

Weight write (per weight, old value w, proposed change d = w_proposed - w, with a uniform
u in (0, 1) and z ~ N(0, 1); step Delta = (hi - lo) / (states - 1), asymmetry a)::

    n = floor(|d| / Delta + u)                        pulses (stochastic rounding: E n = |d| / Delta;
                                                      at most 2^40)
    constant_step: w' = clamp(w +- n Delta (1 +- a), lo, hi)   (+ for d > 0, - for d < 0)
                   with a = 0 and no write noise w' is snapped to lo + Delta * k exactly
    soft_bounds:   n pulses one after another, each
                   up:   w <- w + Delta (1 + a) * 2 (hi - w) / (hi - lo)
                   down: w <- w - Delta (1 - a) * 2 (w - lo) / (hi - lo)
                   (the step shrinks linearly to zero at the bound it approaches, and equals
                   the nominal one at the middle of the range); at most 4 * states pulses,
                   after which the remaining distance to the bound has shrunk by < e^-8
    write noise:   w' <- clamp(w' + noise * z, lo, hi) when n > 0 (each write is noisy)
    clipped:       |w + n Delta (1 +- a) - clamp(...)| (constant_step only: the part of the
                   requested change the bounds cut off)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import rng

_OPTS = dict(cache=True, fastmath=False, error_model="numpy")

CONSTANT_STEP = 1
_MAX_PULSES = 2.0**40  # a cap that keeps floor's int64 result finite; far beyond any bound
SOFT_BOUNDS = 2


@njit(**_OPTS)
def readout_scalar(v, z, std, levels, lo, delta):
    """One measured value: v + std * z, then the ADC (``levels`` > 0) of step ``delta``
    from ``lo``; float64."""
    y = v + std * z
    if levels > 0 and y == y:
        # clamp before floor (equal to clamping after, for integer bounds): floor's int64
        # result never overflows, also for infinite y
        x = (y - lo) / delta + 0.5
        if x < 0.0:
            x = 0.0
        top = levels - 1.0
        if x > top:
            x = top
        y = lo + delta * math.floor(x)
    return y


@njit(**_OPTS)
def write_scalar(w, d, u, z, kind, delta, lo, hi, asym, noise, max_pulses, snap):
    """(w', pulses, clipped) of one weight write (module docstring); float64."""
    x = abs(d) / delta + u
    if not x >= 1.0:  # no pulse (or a NaN proposal: the weight keeps its value)
        return w, 0.0, 0.0
    n = 1.0 * math.floor(x if x < _MAX_PULSES else _MAX_PULSES)
    up = d > 0.0
    step = delta * (1.0 + asym) if up else delta * (1.0 - asym)
    clipped = 0.0
    if kind == CONSTANT_STEP:
        target = w + n * step if up else w - n * step
        out = target
        if out < lo:
            out = lo
        if out > hi:
            out = hi
        clipped = abs(target - out)
        if snap:
            out = lo + delta * math.floor((out - lo) / delta + 0.5)
    else:
        out = w
        width = hi - lo
        m = n if n < max_pulses else max_pulses
        i = 0.0
        while i < m:
            if up:
                out = out + step * (2.0 * (hi - out) / width)
            else:
                out = out - step * (2.0 * (out - lo) / width)
            i += 1.0
    if noise > 0.0:
        out = out + noise * z
        if out < lo:
            out = lo
        if out > hi:
            out = hi
    return out, 1.0, clipped


@njit(**_OPTS)
def readout(src, dst, std, levels, lo, delta, seed, layer, times):
    """dst[p, b, j] = readout_scalar(src[p, b, j], z) with z = rng.normal(key(seed,
    STREAM_READOUT, times[p], layer), b * N + j) (no draw when std == 0); (P, B, N)."""
    n_pass, batch, width = src.shape
    for p in range(n_pass):
        k = rng.key(seed, rng.STREAM_READOUT, times[p], layer)
        for b in range(batch):
            for j in range(width):
                z = rng.normal(k, b * width + j) if std > 0.0 else 0.0
                dst[p, b, j] = readout_scalar(float(src[p, b, j]), z, std, levels, lo, delta)


@njit(**_OPTS)
def weight_write(p, old, kind, delta, lo, hi, asym, noise, max_pulses, snap, ku, kz):
    """p (flat, holding the optimiser's proposal) <- the device's write from ``old``;
    returns (writes, clipped) summed over the elements. Draws: u = uniform(ku, i),
    z = normal(kz, i), with the keys of ``write_keys``."""
    writes = 0.0
    clipped = 0.0
    for i in range(p.shape[0]):
        w = float(old[i])
        u = rng.uniform(ku, i)
        z = rng.normal(kz, i) if noise > 0.0 else 0.0
        out, n, c = write_scalar(w, float(p[i]) - w, u, z, kind, delta, lo, hi, asym, noise,
                                 max_pulses, snap)
        p[i] = out
        writes += n
        clipped += c
    return writes, clipped


@njit(**_OPTS)
def program(p, delta, lo, hi, snap):
    """The initial weights as the device holds them: clamped to [lo, hi] and, when ``snap``,
    on the nearest state lo + Delta * k (flat array, in place)."""
    for i in range(p.shape[0]):
        w = float(p[i])
        if w < lo:
            w = lo
        if w > hi:
            w = hi
        if snap:
            w = lo + delta * math.floor((w - lo) / delta + 0.5)
        p[i] = w


def levels_of(bits: int) -> float:
    """2^bits ADC levels (0 bits: no ADC)."""
    return float(2 ** int(bits)) if bits else 0.0



def write_keys(seed: int, step: int, layer: int) -> tuple:
    """The keys of the weight writes of update ``step`` (1-based) in layer ``layer``:
    (key(seed, STREAM_WRITE, step, 2 layer), key(seed, STREAM_WRITE, step, 2 layer + 1))
    for the pulse roundings and the write noise."""
    return tuple(np.uint64(rng.key(np.uint64(seed), np.uint64(rng.STREAM_WRITE), np.uint64(step),
                         np.uint64(2 * layer + j))) for j in (0, 1))


# ------------------------------------------------------------------ measured transfer curves
# activation = "table": x = f(a) interpolated linearly in a sorted table (xs, ys) of
# measured (input, output) pairs, constant beyond its ends (the measured range):
#     f(a) = ys[k] + (a - xs[k]) * (ys[k+1] - ys[k]) / (xs[k+1] - xs[k]),  xs[k] <= a < xs[k+1]
# true derivative: the slope of a's segment (the right one at a knot), 0 outside [xs[0],
# xs[-1]]; straight-through surrogate: the mean slope (ys[-1] - ys[0]) / (xs[-1] - xs[0])
# inside the range, 0 outside. A NaN input gives NaN.


@njit(**_OPTS)
def _segment(xs, a):
    """k with xs[k] <= a < xs[k + 1] for xs[0] <= a < xs[-1] (binary search)."""
    lo = 0
    hi = xs.shape[0] - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if xs[mid] <= a:
            lo = mid
        else:
            hi = mid
    return lo


@njit(**_OPTS)
def table_value(xs, ys, a):
    n = xs.shape[0]
    if not a == a:
        return a
    if a <= xs[0]:
        return ys[0]
    if a >= xs[n - 1]:
        return ys[n - 1]
    k = _segment(xs, a)
    return ys[k] + (a - xs[k]) * ((ys[k + 1] - ys[k]) / (xs[k + 1] - xs[k]))


@njit(**_OPTS)
def table_slope(xs, ys, a, straight_through):
    n = xs.shape[0]
    if not a == a:
        return a
    if a < xs[0] or a > xs[n - 1]:
        return 0.0
    if straight_through:
        return (ys[n - 1] - ys[0]) / (xs[n - 1] - xs[0])
    k = _segment(xs, a) if a < xs[n - 1] else n - 2
    return (ys[k + 1] - ys[k]) / (xs[k + 1] - xs[k])


@njit(**_OPTS)
def table_forward(a, out, xs, ys):
    """out = f(a) elementwise for 2-D a, out (rows, N)."""
    for r in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[r, j] = table_value(xs, ys, float(a[r, j]))


@njit(**_OPTS)
def table_derivative(a, out, xs, ys, straight_through, upstream, multiply):
    """out = f'(a) (or the surrogate), or upstream * f'(a) with f'(a) rounded to out's
    dtype first (``out`` may be ``upstream`` itself: it is read before the write)."""
    for r in range(a.shape[0]):
        for j in range(a.shape[1]):
            g = upstream[r, j] if multiply else 0.0
            out[r, j] = table_slope(xs, ys, float(a[r, j]), straight_through)
            if multiply:
                out[r, j] = g * out[r, j]
