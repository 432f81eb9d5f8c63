"""``CudaDevice``: ``noisysim.device.Device`` with its parameters and noise state on the GPU.

``measure`` follows ``Device.measure`` step by step (the same pass layout, the same reuse of
upstream passes, the same draws at the same keys, the same order of additions) on device
arrays: matrix products through ``xp.matmul`` (cuBLAS), everything else through the kernels
of ``noisysim.kernels.cuda``. The result is a ``GpuMeasurement`` of device arrays that the GPU
rules (``noisysim.gpu.rules``) read; nothing comes back to the host.

The host ``Device`` stays the owner of the configuration (network layout, noise models,
seed). ``push()`` copies its parameters, clock and noise state to the GPU, ``pull()`` copies
them back (for checkpoints, snapshots and diagnostics); between the two the GPU copy is the
truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..device import PERTURBATIONS, Device, add_layer_noise, pass_layout
from ..errors import NoisysimError, check_choice, check_number
from ..kernels import rng
from ..kernels import cuda as K
from .arrays import empty, to_device, to_host, xp, zeros
from .noise import DeviceNoise

#: perturbations the GPU device can inject (weight perturbation stays on the CPU backend)
GPU_PERTURBATIONS = ("none", "nodes", "layer", "each_layer")


@dataclass
class GpuLayer:
    """Device copies of one layer's parameters: W (N_l, N_{l-1}), b (N_l,) or None, R."""

    W: object
    b: object | None
    R: object | None


@dataclass(frozen=True)
class GpuMeasurement:
    """``noisysim.device.Measurement`` on device arrays (same fields and shapes).

    ``injected`` holds the node perturbations (P, B, N_l) per layer or None;
    ``perturbed_layer`` is a host array. ``targets`` are device arrays (int64 labels or
    float64 targets).
    """

    inputs: tuple
    pre: tuple
    outputs: object
    losses: object
    targets: object
    injected: tuple | None
    perturbed_layer: np.ndarray

    @property
    def n_passes(self) -> int:
        return self.losses.shape[0]


class CudaDevice:
    """The GPU copy of a ``Device`` (network parameters, clock and noise state)."""

    def __init__(self, device: Device):
        self.host = device
        self.network = device.network
        self.seed = device.seed
        self.dtype = device.network.dtype
        self.noise = {l: DeviceNoise(model) for l, model in device.noise.items()}
        self.push()

    # -- host <-> device ----------------------------------------------------------------
    def push(self) -> None:
        """Copy parameters, clock and noise state from the host ``Device`` to the GPU."""
        net = self.network
        self.layers = [
            GpuLayer(to_device(p.W), None if p.b is None else to_device(p.b),
                     None if p.R is None else to_device(p.R))
            for p in net.layers
        ]
        self.clock = self.host.clock
        self.noise_state = {l: self.noise[l].upload(s)
                            for l, s in self.host._noise_state.items()}

    def pull_params(self) -> None:
        """Copy the parameters back into the host network's arrays (in place)."""
        for p, g in zip(self.network.layers, self.layers):
            p.W[...] = to_host(g.W)
            if p.b is not None:
                p.b[...] = to_host(g.b)
            if p.R is not None:
                p.R[...] = to_host(g.R)

    def pull(self) -> None:
        """Copy parameters, clock and noise state back to the host ``Device``."""
        self.pull_params()
        self.host.clock = self.clock
        self.host._noise_state = {l: self.noise[l].download(s)
                                  for l, s in self.noise_state.items()}

    # -- inputs --------------------------------------------------------------------------
    def inputs(self, x):
        """A device batch (B, N_0) in the network's dtype (a host array is copied over)."""
        if isinstance(x, np.ndarray) and xp is not np:
            return to_device(np.ascontiguousarray(x, dtype=self.dtype))
        return xp.ascontiguousarray(xp.asarray(x, dtype=self.dtype))

    def targets(self, targets):
        """Device targets in the form the loss kernels take (validated on the host)."""
        from .. import losses

        if isinstance(targets, np.ndarray):
            targets = losses.check_targets(self.network.loss, targets, self.network.widths[-1])
            return to_device(targets)
        return targets

    # -- the experiment ------------------------------------------------------------------
    def measure(self, x, targets, perturb: str = "none", sigma: float = 0.0, samples: int = 1,
                layer: int | None = None, clean_pass: bool = True) -> GpuMeasurement:
        """``Device.measure`` on the GPU (no explicit ``values``, no weight perturbation).

        x: device (or host) batch (B, N_0); targets: device targets from ``self.targets``
        (or host targets).
        """
        net = self.network
        check_choice("perturb", perturb, PERTURBATIONS)
        if perturb not in GPU_PERTURBATIONS:
            raise NoisysimError(f"perturb={perturb!r} has no cuda implementation; use "
                                "backend 'cpu' for weight perturbation")
        x = self.inputs(x)
        targets = self.targets(targets)
        sigma = check_number("sigma", sigma, 0.0, None)
        samples = check_number("samples", samples, 0, None, integer=True)
        L = net.n_layers
        if perturb == "layer":
            layer = check_number("layer", layer, 0, L - 1, integer=True,
                                 hint=f"the network has {L} layers (0..{L - 1})")
        batch = x.shape[0]
        P, perturbed_layer, n_rows, n_products = pass_layout(perturb, samples, layer, L)
        times = self.clock + np.arange(P, dtype=np.int64)
        node_eps = self._node_perturbations(perturb, sigma, perturbed_layer, times, batch)

        dtype = self.dtype
        inputs, pres = [], []
        R0 = self.layers[0].R
        x_star = x if R0 is None else xp.matmul(x, R0.T)
        h = xp.broadcast_to(x_star, (P,) + x_star.shape)
        for l, params in enumerate(self.layers):
            n, k = n_rows[l], n_products[l]
            if l > 0 and params.R is not None:
                h_star = empty(h.shape, dtype)
                xp.matmul(h[:k].reshape(k * batch, -1), params.R.T,
                          out=h_star[:k].reshape(k * batch, -1))
                h_star[k:] = h_star[0]
                h = h_star
            inputs.append(h)
            a = empty((P, batch, net.widths[l + 1]), dtype)
            xp.matmul(h[:k].reshape(k * batch, -1), params.W.T,
                      out=a[:k].reshape(k * batch, -1))
            a[k:n] = a[0]
            eps = node_eps[l] if node_eps is not None else None
            K.add_bias_and_perturbation(a[:n], params.b, None if eps is None else eps[:n],
                                        params.b is not None, eps is not None)
            self._add_noise(l, a, n, times, clean_pass)
            a[n:] = a[0]
            pres.append(a)
            out = empty(a.shape, dtype)
            act = net.activations[l]
            K.activation_forward(a[:n], out[:n], act.code, *act.kernel_params, self.seed, l,
                                 times[:n])
            out[n:] = out[0]
            h = out
        loss = self.loss(h.reshape(P * batch, -1), targets).reshape(P, batch)
        self.clock += P
        return GpuMeasurement(
            inputs=tuple(inputs), pre=tuple(pres), outputs=h, losses=loss, targets=targets,
            injected=None if node_eps is None else tuple(node_eps),
            perturbed_layer=perturbed_layer,
        )

    def infer(self, x, noisy: bool = False):
        """Device outputs (B, N_L) of one pass, noise-free or with intrinsic noise (the clock
        advances only for a noisy pass), as ``Device.infer``."""
        x = self.inputs(x)
        net = self.network
        time = np.array([self.clock], dtype=np.int64)
        h = x[None]
        for l, params in enumerate(self.layers):
            if params.R is not None:
                h = xp.matmul(h, params.R.T)
            a = xp.ascontiguousarray(xp.matmul(h, params.W.T), dtype=self.dtype)
            if params.b is not None:
                K.add_bias_and_perturbation(a, params.b, None, True, False)
            if noisy:
                self._add_noise(l, a, 1, time, clean_pass=False)
            out = empty(a.shape, self.dtype)
            act = net.activations[l]
            K.activation_forward(a, out, act.code, *act.kernel_params, self.seed, l, time)
            h = out
        if noisy:
            self.clock += 1
        return h[0]

    def loss(self, outputs, targets):
        """Per-row loss (R,) float64 of device outputs (R, N_L) against device targets."""
        out = empty(outputs.shape[0], np.float64)
        if self.network.loss == "cross_entropy":
            K.cross_entropy(outputs, targets, out)
        else:
            K.squared_error(outputs, targets, out)
        return out

    def loss_grad(self, outputs, targets):
        """d ell / d outputs per row (not divided by the batch size), outputs' dtype."""
        out = empty(outputs.shape, outputs.dtype)
        if self.network.loss == "cross_entropy":
            K.cross_entropy_grad(outputs, targets, out)
        else:
            K.squared_error_grad(outputs, targets, out)
        return out

    # -- internals -----------------------------------------------------------------------
    def _add_noise(self, l, a, n, times, clean_pass) -> None:
        add_layer_noise(self.noise, self.noise_state, self.seed, l, a, n, times, clean_pass)

    def _node_perturbations(self, perturb, sigma, perturbed_layer, times, batch):
        if perturb == "none" or sigma == 0:
            return None
        net = self.network
        P = perturbed_layer.shape[0]
        out = []
        for l in range(net.n_layers):
            eps = zeros((P, batch, net.widths[l + 1]), self.dtype)
            passes = np.flatnonzero((perturbed_layer == l) | (perturbed_layer == -1))
            passes = passes[passes > 0]
            if passes.size:
                # The passes of one layer are consecutive (see Device.measure).
                p0, p1 = int(passes[0]), int(passes[-1]) + 1
                assert p1 - p0 == passes.size
                K.fill_normal_rows(eps[p0:p1].reshape(p1 - p0, -1), self.seed,
                                   rng.STREAM_PERTURB, times[p0:p1], l, sigma)
            out.append(eps)
        return out

