"""Learning-rule estimates on the GPU, from a ``GpuMeasurement``.

The equations are those of ``noisysim.rules`` (their docstrings); this module evaluates them
on device arrays in the same order of operations:

    NP   c_l = mean_k (dell_k / sigma^2) eps_{l,k}
    INP  c_k = mean_j dell^(k)_j N_k da_{k,j} / ||da_{k,j}||^2     (passes of layer k)
    ANP  c_l = mean_k dell_k N da_{l,k} / ||da_k||^2               (norm over all layers)
    g_W_l = c_l^T x*_{l-1} / B   (cuBLAS),   g_b_l = mean_n c_{l,n}
    BP   the exact backward pass through the reference pass (cuBLAS products, derivative
         kernels), with the straight-through surrogate on request

Per-sample loss changes, squared activity norms (float64), the per-sample scales (rounded to
the parameters' dtype, as ``node_gradient`` casts them) and the node coefficients are CUDA
kernels. The decorrelated variants (dbp, dnp, dinp, danp) differ only in the measurement
(inputs x* = x R^T) and in the R update (``noisysim.gpu.optim``).
"""

from __future__ import annotations

import numpy as np

from ..errors import NoisysimError
from ..kernels import cpu
from ..kernels import cuda as K
from ..network import LayerGrad
from .arrays import empty, xp, zeros

#: rule families with a GPU estimate (their decorrelated variants included)
FAMILIES = ("bp", "np", "inp", "anp")


def supports(rule) -> bool:
    """Whether ``rule`` (a ``noisysim.rules.Rule``) has a GPU estimate."""
    return rule.family in FAMILIES


def estimate(rule, m, device) -> list[LayerGrad]:
    """Batch-mean estimates of dLoss/dW and dLoss/db (device arrays), as ``rule.estimate``."""
    family = rule.family
    if family == "bp":
        return backprop(m, device, surrogate=rule.options["surrogate"] == "ste")
    if m.n_passes < 2:
        raise NoisysimError(f"rule {rule.name!r} needs at least one perturbed (or noisy) "
                            "pass; measure with its request()")
    if family == "np":
        if m.injected is None:
            raise NoisysimError(f"rule {rule.name!r} needs the node perturbations it injected")
        return node_perturbation(m, device, rule.options["sigma"])
    if family == "anp":
        return activity_node_perturbation(m, device)
    if family == "inp":
        return iterative_node_perturbation(m, device)
    raise NoisysimError(f"rule {rule.name!r} has no cuda implementation; use backend 'cpu'")


def node_perturbation(m, device, sigma) -> list[LayerGrad]:
    K_ = m.n_passes - 1
    scale = _scale(m, device, 1, K_, divisor=sigma ** 2)
    return [_node_gradient(scale, eps, 1, False, m.inputs[l][0], p.b is not None)
            for l, (eps, p) in enumerate(zip(m.injected, device.layers))]


def activity_node_perturbation(m, device) -> list[LayerGrad]:
    K_ = m.n_passes - 1
    batch = m.losses.shape[1]
    sq = zeros((K_, batch), np.float64)
    for pre in m.pre:
        K.diff_squared_norm(pre, 1, sq)
    scale = _scale(m, device, 1, K_, sq=sq, factor=device.network.n_nodes)
    return [_node_gradient(scale, pre, 1, True, m.inputs[l][0], p.b is not None)
            for l, (pre, p) in enumerate(zip(m.pre, device.layers))]


def iterative_node_perturbation(m, device) -> list[LayerGrad]:
    batch = m.losses.shape[1]
    grads = []
    for k, p in enumerate(device.layers):
        passes = np.flatnonzero(m.perturbed_layer == k)
        if passes.size == 0:
            raise NoisysimError(f"rule 'inp' needs passes that perturb layer {k} alone")
        first, count = int(passes[0]), passes.size
        if passes[-1] - first + 1 != count:
            raise NoisysimError("inp on cuda needs the passes of a layer to be consecutive")
        sq = zeros((count, batch), np.float64)
        K.diff_squared_norm(m.pre[k], first, sq)
        scale = _scale(m, device, first, count, sq=sq, factor=m.pre[k].shape[-1])
        grads.append(_node_gradient(scale, m.pre[k], first, True, m.inputs[k][0],
                                    p.b is not None))
    return grads


def backprop(m, device, surrogate=False) -> list[LayerGrad]:
    """``Network.backward`` through pass 0 of the measurement (``Backprop.estimate``)."""
    net = device.network
    mode = cpu.STRAIGHT_THROUGH if surrogate else cpu.TRUE_DERIVATIVE
    dt = net.dtype.type
    dout = device.loss_grad(m.outputs[0], m.targets)
    n = dout.shape[0]
    L = net.n_layers
    grads = [None] * L
    delta = empty(dout.shape, net.dtype)
    act = net.activations[L - 1]
    K.activation_derivative(m.pre[L - 1][0], delta, act.code, *act.kernel_params, mode,
                            upstream=dout)
    for l in range(L - 1, -1, -1):
        p = device.layers[l]
        gW = xp.matmul(delta.T, m.inputs[l][0])
        K.divide_(gW, dt(n))
        gb = None
        if p.b is not None:
            gb = empty(delta.shape[1], net.dtype)
            K.column_mean(delta, gb)
        grads[l] = LayerGrad(gW, gb)
        if l > 0:
            upstream = xp.matmul(delta, p.W)
            if p.R is not None:
                upstream = xp.matmul(upstream, p.R)
            act = net.activations[l - 1]
            delta = empty(upstream.shape, net.dtype)
            K.activation_derivative(m.pre[l - 1][0], delta, act.code, *act.kernel_params,
                                    mode, upstream=upstream)
    return grads


def _scale(m, device, first, count, sq=None, factor=1.0, divisor=1.0):
    out = empty((count, m.losses.shape[1]), device.dtype)
    K.loss_scale(m.losses, first, out, sq=sq, factor=factor, divisor=divisor)
    return out


def _node_gradient(scale, vec, first, diff, x_ref, has_bias) -> LayerGrad:
    """``noisysim.rules.base.node_gradient`` with the vectors read from ``vec`` (P, B, N):
    vec[first + j] - vec[0] (diff) or vec[first + j], j < count."""
    batch, width = vec.shape[1], vec.shape[2]
    c = empty((batch, width), vec.dtype)
    K.node_coefficients(vec, first, diff, scale, c)
    g_W = xp.matmul(c.T, x_ref)
    K.divide_(g_W, vec.dtype.type(batch))
    g_b = None
    if has_bias:
        g_b = empty(width, vec.dtype)
        K.column_mean(c, g_b)
    return LayerGrad(g_W, g_b)
