"""Likelihood inner loops over long traces (numba): the HMM forward algorithm and the
Kalman filter of a sum of AR(1) processes.

Both return the exact log-likelihood (natural log) of one 1-D trace; the fits sum them
over devices and maximise them with scipy.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["hmm_loglik", "ar1_sum_loglik"]

_OPTS = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@njit(**_OPTS)
def hmm_loglik(y, means, sigma, trans, init):
    """log p(y) of a hidden Markov model with Gaussian read-out noise (forward algorithm).

        state k_t: Markov chain, P(k_{t+1} = j | k_t = i) = trans[i, j], P(k_0) = init
        y_t = means[k_t] + sigma * z_t,   z_t ~ N(0, 1)

    Scaled forward pass: alpha_t = (alpha_{t-1} trans) * b_t normalised to sum 1, and
    log p(y) = sum_t log c_t with c_t the normaliser. Emission densities are taken
    relative to the largest one of each step (its log added back) so that a sample far from
    every level cannot underflow to log 0. Cost O(T K^2).
    """
    n = y.shape[0]
    k = means.shape[0]
    alpha = init.copy()
    nxt = np.empty(k)
    logb = np.empty(k)
    inv_s = 1.0 / sigma
    total = -n * (math.log(sigma) + _LOG_SQRT_2PI)
    acc = 1.0
    for t in range(n):
        top = -np.inf
        arg = 0
        for j in range(k):
            z = (y[t] - means[j]) * inv_s
            logb[j] = -0.5 * z * z
            if logb[j] > top:
                top = logb[j]
                arg = j
        c = 0.0
        for j in range(k):
            if t == 0:
                s = alpha[j]
            else:
                s = 0.0
                for i in range(k):
                    s += alpha[i] * trans[i, j]
            nxt[j] = s if j == arg else s * math.exp(logb[j] - top)
            c += nxt[j]
        for j in range(k):
            alpha[j] = nxt[j] / c
        # c <= 1 (densities relative to the top one): multiply them up and take one log
        # per many steps instead of one per step (the log dominates the cost at K = 2)
        acc *= c
        total += top
        if acc < 1e-250:
            total += math.log(acc)
            acc = 1.0
    return total + math.log(acc)


@njit(**_OPTS)
def ar1_sum_loglik(y, mean, decay, var):
    """log p(y) of y_t = mean + sum_k x_k,t with independent stationary AR(1) terms

        x_k,t+1 = decay_k x_k,t + sqrt(var_k (1 - decay_k^2)) z,   x_k,0 ~ N(0, var_k)

    (the exact sampling of OU processes; one term is the exact AR(1) likelihood of an OU
    trace, several with log-spaced times the pink model). Kalman filter with no
    measurement noise: innovation e_t = y_t - mean - 1'x_hat, variance S_t = 1'P1,
    log p(y) = -1/2 sum_t (log 2 pi S_t + e_t^2 / S_t). Cost O(T K^2).
    """
    n = y.shape[0]
    k = decay.shape[0]
    x = np.zeros(k)
    p = np.zeros((k, k))
    q = np.empty(k)
    for i in range(k):
        p[i, i] = var[i]
        q[i] = var[i] * (1.0 - decay[i] * decay[i])
    g = np.empty(k)
    total = 0.0
    log_s = 0.0
    steady = False
    for t in range(n):
        pred = mean
        for i in range(k):
            pred += x[i]
        e = y[t] - pred
        if not steady:
            s = 0.0
            for i in range(k):
                g[i] = 0.0
                for j in range(k):
                    g[i] += p[i, j]
                s += g[i]
            log_s = math.log(s)
        total += -0.5 * (log_s + e * e / s) - _LOG_SQRT_2PI
        # update: x += P1 e / S, P -= P1 1'P / S; then predict with the diagonal decay
        for i in range(k):
            x[i] = decay[i] * (x[i] + g[i] * e / s)
        if not steady:
            change = 0.0
            for i in range(k):
                for j in range(k):
                    new = decay[i] * decay[j] * (p[i, j] - g[i] * g[j] / s)
                    if i == j:
                        new += q[i]
                    change = max(change, abs(new - p[i, j]))
                    p[i, j] = new
            # P converges geometrically to the steady state of the Riccati recursion; once
            # a step changes it by less than rounding, P, the gain and S stay fixed
            steady = change <= 1e-15 * s
    return total
