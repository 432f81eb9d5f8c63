"""Slow, plain-numpy references for noisysim.optim and noisysim.decorrelation.

Written from the textbook equations (PyTorch's SGD documentation, Kingma & Ba's Adam,
SCIENCE.md's decorrelation rule), not from the package code. Everything is float64 and
operates on a flat list of parameter arrays [p_0, p_1, ...], one gradient list per step.
"""

from __future__ import annotations

import math

import numpy as np


def clip_by_global_norm(grads, max_norm):
    """Scale all gradients by min(1, max_norm / global_norm); returns (grads, scale)."""
    total = math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads))
    if max_norm and total > max_norm:
        scale = max_norm / total
    else:
        scale = 1.0
    return [np.asarray(g, np.float64) * scale for g in grads], scale


def cosine_lr(lr, t, T):
    """Cosine annealing without restarts (Loshchilov & Hutter 2017, eta_min = 0): the rate
    of update t = 1..T is lr (1 + cos(pi (t - 1) / T)) / 2."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * (t - 1) / T))


def _rate(lr, t):
    """lr: a number, or a function of the update t = 1, 2, ... (a schedule)."""
    return lr(t) if callable(lr) else lr


def sgd_reference(params, grad_steps, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
                  clip=None):
    """PyTorch's torch.optim.SGD algorithm (dampening 0), step by step (lr: a number or a
    function of t).

    for t = 1..T:  g = grad (clipped by global norm);  g = g + wd * theta
                   if mu != 0: b = g if t == 1 else mu * b + g
                               g = g + mu * b if nesterov else b
                   theta = theta - lr * g
    Returns the list of parameter lists after each step and the list of update lists.
    """
    theta = [np.array(p, dtype=np.float64) for p in params]
    buffers = [None] * len(theta)
    history, updates = [], []
    for t, grads in enumerate(grad_steps, start=1):
        grads, _ = clip_by_global_norm(grads, clip)
        step_updates = []
        for i in range(len(theta)):
            g = grads[i].copy()
            if weight_decay != 0:
                g = g + weight_decay * theta[i]
            if momentum != 0:
                if t == 1:
                    buffers[i] = g.copy()
                else:
                    buffers[i] = momentum * buffers[i] + g
                if nesterov:
                    g = g + momentum * buffers[i]
                else:
                    g = buffers[i]
            step_updates.append(_rate(lr, t) * g)
            theta[i] = theta[i] - _rate(lr, t) * g
        history.append([p.copy() for p in theta])
        updates.append(step_updates)
    return history, updates


def adam_reference(params, grad_steps, lr, beta1=0.9, beta2=0.999, eps=1e-8, clip=None):
    """Adam (Kingma & Ba 2015, Algorithm 1) with eps added to sqrt(v_hat) (lr: a number or
    a function of t).

    m_0 = v_0 = 0;  for t = 1..T:
        m_t = b1 m_{t-1} + (1 - b1) g_t;   v_t = b2 v_{t-1} + (1 - b2) g_t^2
        m_hat = m_t / (1 - b1^t);          v_hat = v_t / (1 - b2^t)
        theta_t = theta_{t-1} - lr * m_hat / (sqrt(v_hat) + eps)
    """
    theta = [np.array(p, dtype=np.float64) for p in params]
    m = [np.zeros_like(p) for p in theta]
    v = [np.zeros_like(p) for p in theta]
    history, updates = [], []
    for t, grads in enumerate(grad_steps, start=1):
        grads, _ = clip_by_global_norm(grads, clip)
        step_updates = []
        for i in range(len(theta)):
            g = grads[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat = m[i] / (1 - beta1**t)
            v_hat = v[i] / (1 - beta2**t)
            u = _rate(lr, t) * m_hat / (np.sqrt(v_hat) + eps)
            step_updates.append(u)
            theta[i] = theta[i] - u
        history.append([p.copy() for p in theta])
        updates.append(step_updates)
    return history, updates


def decorrelation_step_naive(R, x_star, lr, kappa):
    """R - lr * ((1 - kappa) C + kappa V) R with C and V built explicitly (O(d^3)).

    C_ij = mean_n x*_ni x*_nj for i != j, 0 on the diagonal; V = diag(mean_n x*_ni^2 - 1).
    """
    x = np.asarray(x_star, np.float64)
    R = np.asarray(R, np.float64)
    n, d = x.shape
    C = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            if i != j:
                C[i, j] = np.mean(x[:, i] * x[:, j])
    V = np.diag([np.mean(x[:, i] ** 2) - 1.0 for i in range(d)])
    A = (1.0 - kappa) * C + kappa * V
    return R - lr * (A @ R)


def correlation_loss_naive(x):
    """Mean over ordered pairs i != j of the squared Pearson correlation of columns i, j;
    a zero-variance column counts as uncorrelated."""
    x = np.asarray(x, np.float64)
    d = x.shape[1]
    if d < 2:
        return 0.0
    total = 0.0
    for i in range(d):
        for j in range(d):
            if i == j:
                continue
            a = x[:, i] - x[:, i].mean()
            b = x[:, j] - x[:, j].mean()
            denom = math.sqrt(np.sum(a * a) * np.sum(b * b))
            r = 0.0 if denom == 0 else float(np.sum(a * b)) / denom
            total += r * r
    return total / (d * (d - 1))
