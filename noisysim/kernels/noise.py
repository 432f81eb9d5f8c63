"""Kernels of the device noise models; parameters, validation and docs live in noisysim.noise.

Pure Numba: arrays and scalars in, ``a`` modified in place. Every random number comes from
``noisysim.kernels.rng``: the noise of pass time ``t`` in layer ``layer`` is drawn with
``rng.key(seed, STREAM_NOISE, t, layer)`` and the element index

    e = (slot * N + node) * n_sources + source          (n_sources = n_poles for pink)

so a value depends only on (seed, t, layer, slot, node, source), never on the thread count,
the batch size or the order of evaluation. Initial states of stateful processes use
``rng.key(seed, STREAM_NOISE_INIT, 0, layer)`` with the same element index (drawn through
``rng.uniform_array`` / ``rng.normal_array`` in noisysim.noise).

Models with two draws per element and step (the stochastic MTJ: telegraph flip and thermal
part) use ``uniform(key, e)`` and ``normal(key, e)``: the rng draws normals from a
domain-separated key, so the two are independent.

Gaps: a stateful process keeps one state per (slot, node[, source]) and one ``last_time`` per
slot (-1: never advanced, i.e. the initial state is the state at time -1). When a slot is
used at time t it advances by n = t - last_time steps in ONE draw, with the exact n-step
transition (telegraph: flip with probability q_n = (1 - (1 - 2p)^n) / 2; OU: decay^n and
innovation std sigma * sqrt(1 - decay^(2n))). n = 0 (same time again) leaves the state as it
is, so applying twice at one time gives the same noise twice.

GPU twin: only + - * / and math.sqrt appear here (plus whatever rng uses); powers are taken
by binary doubling (``pow_geometric``) and all transcendental constants (exp(-dt/tau),
-expm1(-2 dt/tau)) are computed on the host. Noise values are computed in float64 and added
to ``a`` with a single rounding to a's dtype: a[i] = dtype(float64(a[i]) + value).

CPU layout: threads take blocks of ``BLOCK`` nodes; a block draws its random numbers into
float64 scratch buffers with ``rng.fill_uniform_serial`` / ``rng.fill_normal_serial`` (their
vectorised loops; a prange body itself does not vectorise) and then runs plain branch-free
loops over views (indices provably non-negative, so LLVM vectorises them). Calling the fill
functions instead of inlining Box-Muller here also keeps compilation short.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import PARALLEL_MIN_SIZE, rng, serial_twin

# fastmath=False keeps every product and sum rounded as written (no FMA contraction), which
# a GPU twin must match; error_model="numpy" drops zero-division checks (none can occur).
_OPTS = dict(cache=True, fastmath=False, error_model="numpy", nogil=True)
_PAR = dict(_OPTS, parallel=True)


BLOCK = 4096  # nodes per thread task (even: a block never splits a Box-Muller pair)


@njit(**_OPTS)
def pow_geometric(r, n):
    """(r**n, sum_{k<n} r**k) for an integer n >= 0, by binary doubling (only + and *).

    The geometric sum gives 1 - r**n = (1 - r) * sum_{k<n} r**k without the cancellation
    of 1 - r**n when r is close to 1 (telegraph with small p_flip, OU with tau >> dt).
    """
    p = 1.0
    s = 0.0
    if n <= 0:
        return p, s
    bit = np.int64(1)
    while bit <= (n >> 1):
        bit <<= 1
    while bit > 0:
        s = s + p * s  # S_2m = S_m (1 + r^m)
        p = p * p
        if n & bit:
            s = s + p  # S_(m+1) = S_m + r^m
            p = p * r
        bit >>= 1
    return p, s


@njit(**_OPTS)
def flip_probability(p_flip, n):
    """q_n = p_flip * sum_{k<n} (1 - 2 p_flip)^k = (1 - (1 - 2 p_flip)^n) / 2: the
    probability that a telegraph state flipping with p_flip per step is flipped after n."""
    return p_flip * pow_geometric(1.0 - 2.0 * p_flip, n)[1]


@njit(**_OPTS)
def _advance_steps(times, last_time, n_slots):
    """n[p, b]: steps slot b advances at pass p. Only the first pass of a call can differ
    between slots, so the caller computes transition constants for (p > 0, b = 0) once."""
    n_pass = times.shape[0]
    n = np.empty((n_pass, n_slots), np.int64)
    for b in range(n_slots):
        prev = last_time[b]
        for p in range(n_pass):
            n[p, b] = times[p] - prev
            prev = times[p]
    return n


# ----------------------------------------------------------------------------- stateless


@njit(**_PAR)
def gaussian_apply(a, times, seed, layer, mean, sigma, multiplicative):
    """a += mean + sigma * z, or a += a * sigma * z when ``multiplicative``;
    z = normal(key(seed, STREAM_NOISE, t, layer), slot * N + node)."""
    n_pass, n_slots, width = a.shape
    m = n_slots * width
    nb = (m + BLOCK - 1) // BLOCK
    a2 = a.reshape((n_pass, m))
    for c in prange(n_pass * nb):
        p = c // nb
        start = (c - p * nb) * BLOCK
        stop = min(start + BLOCK, m)
        key = rng.key(seed, rng.STREAM_NOISE, times[p], layer)
        z = np.empty(stop - start)
        rng.fill_normal_serial(z, key, start)
        seg = a2[p, start:stop]
        for i in range(stop - start):
            x = seg[i]
            w = x if multiplicative else 1.0  # (w * sigma) * z: a * sigma * z or sigma * z
            seg[i] = x + (mean + w * sigma * z[i])


@njit(**_PAR)
def bernoulli_apply(a, times, seed, layer, prob, amplitude, offset, n_sources, centred,
                    node_p):
    """a += offset + amplitude * sum_s 1[u_s < prob]  or, centred,
    a += amplitude * (sum_s 1[u_s < prob] - n_sources * prob);
    u_s = uniform(key(seed, STREAM_NOISE, t, layer), (slot * N + node) * n_sources + s).
    node_p (N,): node i uses prob = node_p[i] (device-to-device variability); empty: the
    scalar ``prob`` for every node."""
    if node_p.shape[0] > 0:
        _bernoulli_nodes(a, times, seed, layer, amplitude, offset, n_sources, centred, node_p)
        return
    n_pass, n_slots, width = a.shape
    m = n_slots * width
    nb = (m + BLOCK - 1) // BLOCK
    a2 = a.reshape((n_pass, m))
    shift = -n_sources * prob if centred else 0.0
    base = 0.0 if centred else offset
    for c in prange(n_pass * nb):
        p = c // nb
        start = (c - p * nb) * BLOCK
        stop = min(start + BLOCK, m)
        key = rng.key(seed, rng.STREAM_NOISE, times[p], layer)
        u = np.empty((stop - start) * n_sources)
        rng.fill_uniform_serial(u, key, start * n_sources)
        seg = a2[p, start:stop]
        for i in range(stop - start):
            count = 0
            for s in range(n_sources):
                count += 1 if u[i * n_sources + s] < prob else 0
            seg[i] = seg[i] + (base + amplitude * (count + shift))


@njit(**_OPTS)
def _bernoulli_nodes(a, times, seed, layer, amplitude, offset, n_sources, centred, node_p):
    """``bernoulli_apply`` with a probability per node (one serial loop: variability runs
    are small, and the per-node branch would keep the scalar loop from vectorising)."""
    n_pass, n_slots, width = a.shape
    m = n_slots * width
    a2 = a.reshape((n_pass, m))
    base = 0.0 if centred else offset
    u = np.empty(m * n_sources)
    for p in range(n_pass):
        key = rng.key(seed, rng.STREAM_NOISE, times[p], layer)
        rng.fill_uniform_serial(u, key, 0)
        for i in range(m):
            prob = node_p[i % width]
            shift = -n_sources * prob if centred else 0.0
            count = 0
            for s in range(n_sources):
                count += 1 if u[i * n_sources + s] < prob else 0
            a2[p, i] = a2[p, i] + (base + amplitude * (count + shift))


# ----------------------------------------------------------------------------- stateful


@njit(**_PAR)
def telegraph_apply(a, times, last_time, spin, seed, layer, p_flip, amplitude, offset,
                    sigma, scale, thermal, node_p):
    """Random telegraph (sum of n_sources states s in {-1, +1}), optionally with a thermal
    Gaussian part per source (the stochastic MTJ):

        s <- -s if u < q_n,  q_n = p_flip * sum_{k<n} (1 - 2 p_flip)^k
                                 = (1 - (1 - 2 p_flip)^n) / 2           (n steps at once)
        a += scale * (offset + amplitude * sum_s s + sigma * sum_s z_s)

    u = uniform(key, e), z_s = normal(key, e) (independent: the rng draws normals from a
    domain-separated key). Plain telegraph: scale = 1, sigma = 0, thermal = False (no normals
    are drawn; the formula then reduces exactly to offset + amplitude * sum_s s).
    spin: (slots, N, n_sources) int8 and last_time: (slots,) int64, updated in place.
    node_p (N,): node i flips with p_flip = node_p[i] (device-to-device variability; q_n
    per node by ``flip_probability``); empty: the scalar ``p_flip`` for every node.
    """
    n_pass, n_slots, width = a.shape
    n_src = spin.shape[2]
    m = n_slots * width
    n = _advance_steps(times, last_time, n_slots)
    varied = node_p.shape[0] > 0
    q = np.empty((n_pass, n_slots))
    for p in range(n_pass):
        for b in range(n_slots):
            if b > 0 and p > 0:
                q[p, b] = q[p, 0]
            else:
                q[p, b] = flip_probability(p_flip, n[p, b])
    a2 = a.reshape((n_pass, m))
    sp = spin.reshape(spin.size)
    nb = (m + BLOCK - 1) // BLOCK
    for c in prange(nb):
        start = c * BLOCK
        stop = min(start + BLOCK, m)
        ne = (stop - start) * n_src
        u = np.empty(ne)
        z = np.zeros(ne)
        sb = sp[start * n_src:stop * n_src]
        for p in range(n_pass):
            key = rng.key(seed, rng.STREAM_NOISE, times[p], layer)
            rng.fill_uniform_serial(u, key, start * n_src)
            if thermal:
                rng.fill_normal_serial(z, key, start * n_src)
            i = start
            while i < stop:  # one stretch per slot: q depends on the slot
                b = i // width
                i_end = min((b + 1) * width, stop)
                qb = q[p, b]
                ss = sb[(i - start) * n_src:(i_end - start) * n_src]
                us = u[(i - start) * n_src:(i_end - start) * n_src]
                if varied:  # q per node: its own p_flip over the slot's n steps
                    nb_steps = n[p, b]
                    for j in range(ss.shape[0]):
                        qj = flip_probability(node_p[(i + j // n_src) % width], nb_steps)
                        ss[j] = -ss[j] if us[j] < qj else ss[j]
                else:
                    for j in range(ss.shape[0]):
                        ss[j] = -ss[j] if us[j] < qb else ss[j]
                i = i_end
            seg = a2[p, start:stop]
            if n_src == 1:
                for i in range(stop - start):
                    seg[i] = seg[i] + scale * (offset + amplitude * sb[i] + sigma * z[i])
            else:
                for i in range(stop - start):
                    tot = 0
                    zs = 0.0
                    for s in range(n_src):
                        tot += sb[i * n_src + s]
                        zs += z[i * n_src + s]
                    seg[i] = seg[i] + scale * (offset + amplitude * tot + sigma * zs)
    for b in range(n_slots):
        last_time[b] = times[n_pass - 1]


@njit(**_PAR)
def ou_apply(a, times, last_time, x, seed, layer, decay, c1, std, mean):
    """Sum of K Ornstein-Uhlenbeck processes per node (K = 1: OU; K = n_poles: pink):

        x_k <- decay_k^n x_k + std_k sqrt(c1_k sum_{j<n} decay_k^(2j)) z,   n steps at once
        a += mean + sum_k x_k

    z = normal(key, (slot * N + node) * K + k); c1_k = 1 - decay_k^2 comes from the host, so
    the innovation std is exactly std_k sqrt(1 - decay_k^(2n)) without cancellation.
    x: (slots, N, K) float64 and last_time: (slots,) int64, updated in place.
    """
    n_pass, n_slots, width = a.shape
    n_poles = x.shape[2]
    m = n_slots * width
    n = _advance_steps(times, last_time, n_slots)
    f = np.empty((n_pass, n_slots, n_poles))
    g = np.empty((n_pass, n_slots, n_poles))
    for p in range(n_pass):
        for b in range(n_slots):
            for k in range(n_poles):
                if b > 0 and p > 0:
                    f[p, b, k] = f[p, 0, k]
                    g[p, b, k] = g[p, 0, k]
                else:
                    f[p, b, k] = pow_geometric(decay[k], n[p, b])[0]
                    s2 = pow_geometric(decay[k] * decay[k], n[p, b])[1]
                    g[p, b, k] = std[k] * math.sqrt(c1[k] * s2)
    a2 = a.reshape((n_pass, m))
    xf = x.reshape(x.size)
    nb = (m + BLOCK - 1) // BLOCK
    for c in prange(nb):
        start = c * BLOCK
        stop = min(start + BLOCK, m)
        z = np.empty((stop - start) * n_poles)
        xb = xf[start * n_poles:stop * n_poles]
        for p in range(n_pass):
            key = rng.key(seed, rng.STREAM_NOISE, times[p], layer)
            rng.fill_normal_serial(z, key, start * n_poles)
            i = start
            while i < stop:  # one stretch per slot: the transition depends on the slot
                b = i // width
                i_end = min((b + 1) * width, stop)
                seg = a2[p, i:i_end]
                lo = (i - start) * n_poles
                if n_poles == 1:
                    f0 = f[p, b, 0]
                    g0 = g[p, b, 0]
                    xs = xb[lo:lo + seg.shape[0]]
                    zs = z[lo:lo + seg.shape[0]]
                    for j in range(seg.shape[0]):
                        xv = f0 * xs[j] + g0 * zs[j]
                        xs[j] = xv
                        seg[j] = seg[j] + (mean + xv)
                else:
                    fb = f[p, b]
                    gb = g[p, b]
                    for j in range(seg.shape[0]):
                        acc = 0.0
                        e = lo + j * n_poles
                        for k in range(n_poles):
                            xv = fb[k] * xb[e + k] + gb[k] * z[e + k]
                            xb[e + k] = xv
                            acc += xv
                        seg[j] = seg[j] + (mean + acc)
                i = i_end
    for b in range(n_slots):
        last_time[b] = times[n_pass - 1]


_SERIAL = {k: serial_twin(k, **_OPTS)
           for k in (gaussian_apply, bernoulli_apply, telegraph_apply, ou_apply)}


def pick(kernel, size):
    """The parallel kernel for large arrays, its serial twin for small ones."""
    return kernel if size >= PARALLEL_MIN_SIZE else _SERIAL[kernel]
