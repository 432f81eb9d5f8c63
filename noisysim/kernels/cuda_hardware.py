"""numba.cuda twins of ``noisysim.kernels.hardware`` (read-out channel, weight devices).

The scalar functions are the CPU module's, compiled as device functions
(``noisysim.kernels.cuda._device_twins``); the kernels are grid-stride loops compiled
without FMA contraction (``noisysim.kernels.cuda_compile.exact_kernel``) and launched by
``noisysim.kernels.cuda_launch.launch``, so measured values and written
weights equal the CPU's bit for bit. The write count is exact too (a sum of small integers
in float64); the clipped amount is a grid reduction in a fixed order (``cuda._grid_sum``),
the same bits on every run, equal to the CPU's serial sum to rounding.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from . import cuda as _cuda
from . import hardware, rng
from .cuda_compile import exact_kernel
from .cuda_launch import _dummy, _flat, _reduction_scratch, _u64, clocked, launch

_TWINS = _cuda._device_twins(hardware, ("readout_scalar", "write_scalar", "_segment",
                                        "table_value", "table_slope"))
d_readout = _TWINS["readout_scalar"]
d_write = _TWINS["write_scalar"]
d_table_value = _TWINS["table_value"]
d_table_slope = _TWINS["table_slope"]
_READOUT = rng.STREAM_READOUT
_SHARED = _cuda._SHARED
d_key, d_normal, d_uniform = _cuda.d_key, _cuda.d_normal, _cuda.d_uniform
_grid_sum = _cuda._grid_sum


@exact_kernel
def _readout(src, dst, std, levels, lo, delta, seed, clock, t0, layer):
    """dst[p, i] = readout_scalar(src[p, i], z), z = normal(key(seed, STREAM_READOUT,
    t0 + p, layer), i) (0 when std == 0), t0 taken from the device clock
    (cuda_launch.clocked); src, dst (P, B * N)."""
    t0 = clock[0] + t0
    n_pass, m = src.shape
    for t in range(cuda.grid(1), n_pass * m, cuda.gridsize(1)):
        p = t // m
        i = t - p * m
        z = d_normal(d_key(seed, _READOUT, t0 + p, layer), i) if std > 0.0 else 0.0
        dst[p, i] = d_readout(float(src[p, i]), z, std, levels, lo, delta)


@exact_kernel
def _weight_write(p, old, kind, delta, lo, hi, asym, noise, max_pulses, snap, ku, kz, gate,
                  stats, writes_idx, clipped_idx, partials, ticket):
    """p[i] <- write_scalar(old[i], p[i] - old[i], ...) when gate[0] (the optimiser's update
    ran); stats[writes_idx] += writes (an atomic add per block: a count, exact in any
    order), stats[clipped_idx] += clipped (``cuda._grid_sum``: a fixed order)."""
    if gate[0] == 0:
        return
    buf = cuda.shared.array(_SHARED, np.float64)
    n_writes = 0.0
    n_clipped = 0.0
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        w = float(old[i])
        u = d_uniform(ku, i)
        z = d_normal(kz, i) if noise > 0.0 else 0.0
        out, n, c = d_write(w, float(p[i]) - w, u, z, kind, delta, lo, hi, asym, noise,
                            max_pulses, snap)
        p[i] = out
        n_writes += n
        n_clipped += c
    total_w = _cuda._block_sum(buf, n_writes)
    if cuda.threadIdx.x == 0:
        cuda.atomic.add(stats, writes_idx, total_w)
    last, total_c = _grid_sum(buf, partials, ticket, n_clipped)
    if last:
        stats[clipped_idx] += total_c


@exact_kernel
def _table_forward(a, out, xs, ys):
    rows, width = a.shape
    for t in range(cuda.grid(1), rows * width, cuda.gridsize(1)):
        r = t // width
        j = t - r * width
        out[r, j] = d_table_value(xs, ys, float(a[r, j]))


@exact_kernel
def _table_derivative(upstream, a, out, xs, ys, straight_through, multiply):
    """As the CPU's table_derivative: f'(a) rounded to out's dtype, times upstream."""
    rows, width = a.shape
    for t in range(cuda.grid(1), rows * width, cuda.gridsize(1)):
        r = t // width
        j = t - r * width
        g = upstream[r, j] if multiply else 0.0
        out[r, j] = d_table_slope(xs, ys, float(a[r, j]), straight_through)
        if multiply:
            out[r, j] = g * out[r, j]


def table_forward(a, out, xs, ys) -> None:
    """out = the measured curve (xs, ys) at a; 2-D device arrays."""
    launch(_table_forward, a.size, a, out, xs, ys)


def table_derivative(a, out, xs, ys, straight_through, upstream=None) -> None:
    """out = f'(a) (or the straight-through slope), or upstream * f'(a); 2-D."""
    up = upstream if upstream is not None else _dummy(a, 2)
    launch(_table_derivative, a.size, up, a, out, xs, ys, bool(straight_through),
                 upstream is not None)


def readout(src, dst, std, levels, lo, delta, seed, layer, times) -> None:
    """dst = the read-out of src, both (P, B, N) device arrays; times host int64 (P,)."""
    for i, clock, t0, count in clocked(times, src):
        s2 = src[i:i + count].reshape(count, -1)
        d2 = dst[i:i + count].reshape(count, -1)
        launch(_readout, s2.size, s2, d2, float(std), float(levels), float(lo),
                     float(delta), _u64(seed), clock, t0, _u64(layer))


def weight_write(p, old, args, ku, kz, gate, stats, writes_idx, clipped_idx) -> None:
    """The device write of p (flat views) from old; args = WeightDevice.kernel_args()."""
    kind, delta, lo, hi, asym, noise, max_pulses, snap = args
    launch(_weight_write, p.size, _flat(p), _flat(old), np.int64(kind),
                 float(delta), float(lo), float(hi), float(asym), float(noise),
                 float(max_pulses), bool(snap), np.uint64(ku), np.uint64(kz), gate, stats,
                 np.int64(writes_idx), np.int64(clipped_idx), *_reduction_scratch(stats))
