"""Plain-numpy / plain-Python references of the hardware non-idealities (noisysim.hardware):
the read-out channel and the weight-update devices, written from the equations in
noisysim/kernels/hardware.py's docstring, one array (read-out) or one element (writes) at a
time.

Draws come from ``noisysim.kernels.rng.*_array`` with the documented keys and element
indices (the generator itself is checked against tests/naive_rng.py in test_rng.py), so
that a rounding decision never differs in the last bit of a draw and the comparison can be
exact.
"""

from __future__ import annotations

import math

import numpy as np

from noisysim.kernels import rng


def readout(v, std, bits, lo, hi, seed, layer, times):
    """The measured values of v (P, B, N): y = v + std z, z at key (seed, STREAM_READOUT,
    times[p], layer), element b N + j; then the ADC of 2^bits levels over [lo, hi]."""
    v = np.asarray(v)
    P, B, N = v.shape
    out = np.empty(v.shape, dtype=np.float64)
    for p in range(P):
        z = (rng.normal_array(seed, rng.STREAM_READOUT, int(times[p]), layer, (B * N,))
             .reshape(B, N) if std > 0 else 0.0)
        y = v[p].astype(np.float64) + std * z
        if bits:
            levels = 2 ** bits
            delta = (hi - lo) / (levels - 1)
            with np.errstate(invalid="ignore"):
                k = np.clip(np.floor((y - lo) / delta + 0.5), 0, levels - 1)
            y = np.where(np.isnan(y), y, lo + delta * k)
        out[p] = y
    return out.astype(v.dtype)


def weight_write(old, proposal, kind, states, lo, hi, asym, noise, seed, step, layer):
    """(W written, writes, clipped) for the flat arrays old and proposal (the optimiser's
    W_new), element by element from the module equations."""
    old = np.asarray(old).reshape(-1)
    proposal = np.asarray(proposal).reshape(-1)
    n_el = old.size
    delta = (hi - lo) / (states - 1)
    u = rng.uniform_array(seed, rng.STREAM_WRITE, step, 2 * layer, (n_el,))
    z = rng.normal_array(seed, rng.STREAM_WRITE, step, 2 * layer + 1, (n_el,))
    out = np.empty(n_el, dtype=np.float64)
    writes, clipped = 0, 0.0
    snap = kind == "constant_step" and asym == 0 and noise == 0
    for i in range(n_el):
        w = float(old[i])
        d = float(proposal[i]) - w
        n = math.floor(abs(d) / delta + u[i])
        if n < 1:
            out[i] = w
            continue
        writes += 1
        up = d > 0
        step_size = delta * (1 + asym) if up else delta * (1 - asym)
        if kind == "constant_step":
            target = w + n * step_size if up else w - n * step_size
            w = min(max(target, lo), hi)
            clipped += abs(target - w)
            if snap:
                w = lo + delta * math.floor((w - lo) / delta + 0.5)
        else:
            for _ in range(min(n, 4 * states)):
                if up:
                    w = w + step_size * (2 * (hi - w) / (hi - lo))
                else:
                    w = w - step_size * (2 * (w - lo) / (hi - lo))
        if noise > 0:
            w = min(max(w + noise * z[i], lo), hi)
        out[i] = w
    return out.astype(np.asarray(old).dtype), writes, clipped
