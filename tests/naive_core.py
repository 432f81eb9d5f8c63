"""Slow, plain-numpy references for activations, losses and the forward pass.

Written from SCIENCE.md and the activation table in noisysim.activations, independently of
the kernels: float64 throughout, no numba, no shared helpers with the package.
"""

from __future__ import annotations

import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def activation(name, a, params=None, u=None):
    """f(a); ``u`` holds the uniforms binary_stochastic compares sigmoid(a) against."""
    p = params or {}
    a = np.asarray(a, dtype=np.float64)
    if name == "identity":
        return a.copy()
    if name == "relu":
        return np.maximum(a, 0.0)
    if name == "leaky_relu":
        return np.where(a > 0, a, p.get("slope", 0.01) * a)
    if name == "tanh":
        return np.tanh(a)
    if name == "sigmoid":
        return sigmoid(a)
    if name == "hardtanh":
        return np.clip(a, p.get("lo", -1.0), p.get("hi", 1.0))
    if name == "step":
        return (a > p.get("threshold", 0.0)).astype(np.float64)
    if name == "sign":
        return np.where(a >= 0, 1.0, -1.0)
    if name == "quantize":
        levels, lo, hi = p.get("levels", 4), p.get("lo", 0.0), p.get("hi", 1.0)
        width = (hi - lo) / (levels - 1)
        return lo + np.floor((np.clip(a, lo, hi) - lo) / width + 0.5) * width
    if name == "binary_stochastic":
        return (u < sigmoid(a)).astype(np.float64)
    raise KeyError(name)


def derivative(name, a, params=None, surrogate=False):
    p = params or {}
    a = np.asarray(a, dtype=np.float64)
    one = np.ones_like(a)
    if name == "identity":
        return one
    if name == "relu":
        return (a > 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(a > 0, 1.0, p.get("slope", 0.01))
    if name == "tanh":
        return 1.0 - np.tanh(a) ** 2
    if name == "sigmoid":
        return sigmoid(a) * (1 - sigmoid(a))
    if name == "hardtanh":
        return ((a > p.get("lo", -1.0)) & (a < p.get("hi", 1.0))).astype(np.float64)
    if not surrogate:
        return np.zeros_like(a)
    if name == "step":
        return (np.abs(a - p.get("threshold", 0.0)) <= 0.5).astype(np.float64)
    if name == "sign":
        return (np.abs(a) <= 1.0).astype(np.float64)
    if name == "quantize":
        return ((a >= p.get("lo", 0.0)) & (a <= p.get("hi", 1.0))).astype(np.float64)
    if name == "binary_stochastic":
        return sigmoid(a) * (1 - sigmoid(a))
    raise KeyError(name)


def cross_entropy(logits, labels):
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(labels)), labels]


def cross_entropy_grad(logits, labels):
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    g = e / e.sum(axis=1, keepdims=True)
    g[np.arange(len(labels)), labels] -= 1.0
    return g


def softmax_mse(logits, labels):
    """mean over classes of (softmax(z) - onehot(y))^2 (the DANP authors' TF loss)."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    t = np.eye(z.shape[1])[labels]
    return ((p - t) ** 2).mean(axis=1)


def softmax_mse_grad(logits, labels):
    """Chain rule through the softmax Jacobian J = diag(p) - p p^T: grad = J (2/C)(p - t)."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    t = np.eye(z.shape[1])[labels]
    C = z.shape[1]
    return np.stack([(np.diag(pn) - np.outer(pn, pn)) @ (2.0 / C * (pn - tn))
                     for pn, tn in zip(p, t)])


def squared_error(outputs, targets):
    return 0.5 * ((np.asarray(outputs, np.float64) - targets) ** 2).sum(axis=1)


def forward(weights, biases, rs, acts, x, shifts=None):
    """One pass: lists of x*_{l-1}, a_l, and the output, in float64.

    acts: list of (name, params); shifts[l]: (B, N_l) added to a_l (noise + perturbation).
    """
    h = np.asarray(x, dtype=np.float64)
    inputs, pres = [], []
    for l, W in enumerate(weights):
        if rs is not None and rs[l] is not None:
            h = h @ np.asarray(rs[l], np.float64).T
        inputs.append(h)
        a = h @ np.asarray(W, np.float64).T
        if biases is not None and biases[l] is not None:
            a = a + biases[l]
        if shifts is not None and shifts[l] is not None:
            a = a + shifts[l]
        pres.append(a)
        h = activation(acts[l][0], a, acts[l][1])
    return inputs, pres, h


def backprop(weights, rs, acts, inputs, pres, dout, surrogate=False):
    """Batch-mean gradients [(gW, gb)] by the chain rule, one layer at a time."""
    n = dout.shape[0]
    L = len(weights)
    grads = [None] * L
    delta = dout * derivative(acts[-1][0], pres[-1], acts[-1][1], surrogate)
    for l in reversed(range(L)):
        grads[l] = (delta.T @ inputs[l] / n, delta.mean(axis=0))
        if l:
            up = delta @ weights[l]
            if rs is not None and rs[l] is not None:
                up = up @ rs[l]
            delta = up * derivative(acts[l - 1][0], pres[l - 1], acts[l - 1][1], surrogate)
    return grads


def central_differences(params, loss, h):
    """d loss / d p by central differences, (loss(p + h) - loss(p - h)) / (2 h), for every
    element of every array in ``params`` (changed in place and restored); ``loss()`` is a
    float. Returns one array per parameter array."""
    out = []
    for arr in params:
        fd = np.zeros_like(arr, dtype=np.float64)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + h
            up = loss()
            arr[idx] = old - h
            down = loss()
            arr[idx] = old
            fd[idx] = (up - down) / (2 * h)
        out.append(fd)
    return out
