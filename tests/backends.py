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
        None if a is None else K.asarray(np.ascontiguousarray(a)) for a in arrays)
    nodes = None if m.nodes is None else tuple(None if v is None else v.to(K, net.dtype)
                                               for v in m.nodes)
    return dataclasses.replace(
        m, inputs=dev(m.inputs), pre=dev(m.pre), outputs=K.asarray(m.outputs),
        losses=K.asarray(m.losses), targets=K.asarray(m.targets), injected=dev(m.injected),
        injected_weights=dev(m.injected_weights), injected_bias=dev(m.injected_bias),
        kernels=K, layers=tuple(LayerParams(*(None if a is None else K.asarray(a)
                                              for a in (p.W, p.b, p.R))) for p in net.layers),
        nodes=nodes, activity=dev(m.activity))


def host_grads(grads, name: str):
    """Gradients (LayerGrad per layer) as host arrays."""
    K = kernels(name)
    return [LayerGrad(K.to_host(g.W), None if g.b is None else K.to_host(g.b)) for g in grads]


def assert_resumes_bit_for_bit(make, steps: int, batch: int):
    """Train ``make()`` (a Trainer) whole, and another for ``steps`` updates, checkpoint it
    and resume a third from that state: the parameters and optimiser states at the end must
    equal the whole run's bit for bit. Returns (whole trainer, its state, the resumed one's)."""
    whole = make()
    assert whole.run().status == "completed"
    first = make()
    for b in range(steps):
        assert first._train_rows(b * batch, (b + 1) * batch) == ""
        first.step, first.batch = b + 1, b + 1
    second = make()
    second.load_state_dict(first.state_dict())
    assert second.run().status == "completed"
    want, got = whole.state_dict(), second.state_dict()
    for part in ("network", "optimizer"):
        for k, v in want[part].items():
            np.testing.assert_array_equal(got[part][k], v, err_msg=f"{part} {k}")
    return whole, want, got
