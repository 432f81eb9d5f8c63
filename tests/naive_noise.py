"""Slow plain-Python references of the device noise models (noisysim.noise).

Each reference is written from the model's equation, one element at a time, with the
textbook forms of the n-step transitions ((1 - 2p)**n, exp(-n dt / tau), ...) rather than
the kernels' binary doubling. Draws come from the plain-Python generator ``naive_rng``
(Python integers and numpy's libm, not the code under test; its normals differ from the
kernels' in the last bits only) with the keys and element indices the models document:

    noise of pass time t, layer l:  key(seed, STREAM_NOISE, t, l),      element e
    initial states:                 key(seed, STREAM_NOISE_INIT, 0, l), element e
    e = (slot * N + node) * n_sources + source

``reference(model, a, times, state, seed, layer)`` returns (new a, new state) and leaves its
arguments untouched. Values are accumulated in float64 and rounded once to a's dtype.
"""

from __future__ import annotations

import math

import numpy as np

import naive_rng
from noisysim.kernels import rng

KEY = naive_rng.key
UNIFORM = naive_rng.uniform
NORMAL = naive_rng.normal


def noise_key(seed, t, layer):
    return KEY(seed, rng.STREAM_NOISE, int(t), layer)


def init_key(seed, layer):
    return KEY(seed, rng.STREAM_NOISE_INIT, 0, layer)


# ------------------------------------------------------------------------- initial states


def telegraph_init(seed, layer, slots, width, n_sources):
    k = init_key(seed, layer)
    spin = np.empty((slots, width, n_sources), dtype=np.int8)
    for b in range(slots):
        for n in range(width):
            for s in range(n_sources):
                e = (b * width + n) * n_sources + s
                spin[b, n, s] = -1 if UNIFORM(k, e) < 0.5 else 1
    return spin


def ou_init(seed, layer, slots, width, stds):
    k = init_key(seed, layer)
    x = np.empty((slots, width, len(stds)))
    for b in range(slots):
        for n in range(width):
            for j, std in enumerate(stds):
                x[b, n, j] = std * NORMAL(k, (b * width + n) * len(stds) + j)
    return x


def pink_poles(sigma, n_poles, base_tau):
    taus = [base_tau * 4.0**j for j in range(n_poles)]
    return taus, [sigma / math.sqrt(n_poles)] * n_poles


def init_state(model, seed, layer, slots, width):
    name = model.name
    if name in ("telegraph", "smtj"):
        spin = telegraph_init(seed, layer, slots, width, model.n_sources)
        return {"last_time": np.full(slots, -1, np.int64), "spin": spin}
    if name == "ou":
        x = ou_init(seed, layer, slots, width, [model.sigma])
        return {"last_time": np.full(slots, -1, np.int64), "x": x}
    if name == "pink":
        _, stds = pink_poles(model.sigma, model.n_poles, model.base_tau)
        x = ou_init(seed, layer, slots, width, stds)
        return {"last_time": np.full(slots, -1, np.int64), "x": x}
    return {}


def _grown(model, state, seed, layer, slots, width):
    state = {k: v.copy() for k, v in state.items()}
    have = state["last_time"].shape[0] if state else 0
    if state and slots > have:
        new = init_state(model, seed, layer, slots, width)
        state = {k: np.concatenate([state[k], new[k][have:]]) for k in state}
    return state


# ----------------------------------------------------------------------------- references


def reference(model, a, times, state, seed, layer, node_p=None):
    """(a + noise, state after) for any model of noisysim.noise, element by element;
    node_p (N,): node n's switching probability (p_flip, or p) is node_p[n]."""
    P, B, N = a.shape
    out = a.astype(np.float64)
    state = _grown(model, state, seed, layer, B, N)
    p = model.params()
    per_node = [p if node_p is None else dict(p, **{model.switching: float(node_p[n])})
                for n in range(N)]
    name = model.name
    for i, t in enumerate(times):
        t = int(t)
        k = noise_key(seed, t, layer)
        for b in range(B):
            if state:
                steps = t - int(state["last_time"][b])
                state["last_time"][b] = t
            for n in range(N):
                d = b * N + n
                out[i, b, n] += _value(name, per_node[n], model, k, d, steps if state else 0, state, b, n,
                                       t, out[i, b, n], B, N)
    return out.astype(a.dtype), state


def _value(name, p, model, k, d, steps, state, b, n, t, a_value, B, N):
    if name == "none":
        return 0.0
    if name == "gaussian":
        return p["mean"] + p["sigma"] * NORMAL(k, d)
    if name == "multiplicative":
        return a_value * p["sigma"] * NORMAL(k, d)
    if name in ("bernoulli", "centred_bernoulli"):
        S = p["n_sources"]
        draws = [1.0 if UNIFORM(k, d * S + s) < p["p"] else 0.0 for s in range(S)]
        if name == "bernoulli":
            return p["offset"] + p["amplitude"] * sum(draws)
        return p["amplitude"] * sum(x - p["p"] for x in draws)
    if name in ("telegraph", "smtj"):
        S = p["n_sources"]
        q = (1.0 - (1.0 - 2.0 * p["p_flip"]) ** steps) / 2.0
        spin = state["spin"]
        for s in range(S):
            if UNIFORM(k, d * S + s) < q:
                spin[b, n, s] = -spin[b, n, s]
        if name == "telegraph":
            return p["offset"] + p["amplitude"] * float(sum(int(v) for v in spin[b, n]))
        return p["scale"] * sum(
            p["mean"] + p["sigma"] * NORMAL(k, d * S + s) + p["amplitude"] * int(spin[b, n, s])
            for s in range(S)
        )
    if name in ("ou", "pink"):
        if name == "ou":
            taus, stds, mean = [p["tau"] / p["dt"]], [p["sigma"]], p["mean"]
        else:
            taus, stds = pink_poles(p["sigma"], p["n_poles"], p["base_tau"])
            mean = p["mean"]
        x = state["x"]
        K = len(taus)
        total = mean
        for j in range(K):
            f = math.exp(-steps / taus[j])
            g = stds[j] * math.sqrt(1.0 - math.exp(-2.0 * steps / taus[j]))
            x[b, n, j] = f * x[b, n, j] + g * NORMAL(k, d * K + j)
            total += x[b, n, j]
        return total
    if name == "trace":
        trace = model.trace
        L = len(trace)
        if p["mode"] == "shared":
            idx = t % L
        else:
            seg = p["segment"] if p["segment"] is not None else max(1, L // N)
            idx = (d * seg + t) % L
        return p["offset"] + p["scale"] * trace[idx]
    raise KeyError(name)
