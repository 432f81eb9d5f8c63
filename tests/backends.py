"""Helpers for running engine tests on both kernel sets (see the ``backend`` fixture)."""

from __future__ import annotations

import dataclasses

import numpy as np

from noisysim.kernels.backend import kernels_for
from noisysim.network import LayerGrad, LayerParams


def kernels(name: str):
    return kernels_for(name)


def device_on(device, name: str):
    """``device`` moved to backend ``name`` (returned for chaining)."""
    if name != "cpu":
        device.use_kernels(kernels(name))
    return device


def measurement_on(m, net, name: str):
    """A Measurement (host arrays) with its arrays and the network's parameters on the
    backend ``name``."""
    if name == "cpu":
        return m
    K = kernels(name)
    dev = lambda arrays: None if arrays is None else tuple(  # noqa: E731
        K.asarray(np.ascontiguousarray(a)) for a in arrays)
    return dataclasses.replace(
        m, inputs=dev(m.inputs), pre=dev(m.pre), outputs=K.asarray(m.outputs),
        losses=K.asarray(m.losses), targets=K.asarray(m.targets), injected=dev(m.injected),
        injected_weights=dev(m.injected_weights), injected_bias=dev(m.injected_bias),
        kernels=K, layers=tuple(LayerParams(*(None if a is None else K.asarray(a)
                                              for a in (p.W, p.b, p.R))) for p in net.layers))


def host_grads(grads, name: str):
    """Gradients (LayerGrad per layer) as host arrays."""
    K = kernels(name)
    return [LayerGrad(K.to_host(g.W), None if g.b is None else K.to_host(g.b)) for g in grads]
