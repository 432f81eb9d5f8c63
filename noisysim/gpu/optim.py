"""Optimiser and decorrelation updates on the GPU.

``CudaOptimizer`` mirrors a host ``noisysim.optim.Adam`` / ``SGD`` (same hyperparameters,
same update in the parameters' dtype and in numpy's operation order) with its moment buffers
on the device. ``CudaDecorrelator`` mirrors ``noisysim.decorrelation.Decorrelator``. Neither
reads anything back by itself: squared update norms are accumulated (float64) into a device
buffer and non-finite results raise flags in another, which the caller reads once per step.
``pull()`` / ``push()`` move the optimiser state to and from the host object, so its
``state_dict()`` keeps working for checkpoints.
"""

from __future__ import annotations

import numpy as np

from ..errors import NoisysimError
from ..kernels import cuda as K
from ..optim import SGD, Adam, Optimizer
from .arrays import to_device, to_host, xp

# flag columns per layer in the step's ``bad`` buffer (see CudaOptimizer.update)
FLAG_W, FLAG_B, FLAG_R = 0, 1, 2


class CudaOptimizer:
    """The GPU side of an initialised host optimiser (``optimizer.init`` was called)."""

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, (Adam, SGD)):
            raise NoisysimError(f"optimizer {optimizer.name!r} has no cuda implementation")
        if optimizer.state is None:
            raise NoisysimError("the optimizer needs init(params) before the cuda backend "
                                "takes it over")
        self.host = optimizer
        self.push()

    def push(self) -> None:
        """Copy the host optimiser's state (count and buffers) to the GPU."""
        st = self.host.state
        self.count = int(st.count)
        self.slots = {}
        for slot in self.host._slot_names:
            layers = getattr(st, slot)
            self.slots[slot] = None if layers is None else [
                (to_device(g.W), None if g.b is None else to_device(g.b)) for g in layers]

    def pull(self) -> None:
        """Copy count and buffers back into the host optimiser's state (in place)."""
        st = self.host.state
        for slot, layers in self.slots.items():
            if layers is None:
                continue
            for host, (w, b) in zip(getattr(st, slot), layers):
                host.W[...] = to_host(w)
                if b is not None:
                    host.b[...] = to_host(b)
        self.host.state = st._replace(count=np.int64(self.count))

    def update(self, layers, grads, grad_norm: float, norms, bad) -> dict:
        """Apply one update in place to every layer's W and b.

        grad_norm: the global gradient norm (read by the caller, which refused non-finite
        gradients). norms (float64, >= L): norms[l] += ||Delta W_l||^2 + ||Delta b_l||^2.
        bad (int32, (L, 3)): bad[l, FLAG_W / FLAG_B] = 1 where a parameter became non-finite.
        Returns {"grad_norm", "clip_scale"}; the caller adds update_norm_l{l} from norms.
        """
        opt = self.host
        scale = 1.0
        if opt.clip is not None and grad_norm > opt.clip:
            scale = opt.clip / grad_norm
        self.count += 1
        count = self.count
        for l, (p, g) in enumerate(zip(layers, grads)):
            for j, (name, value, grad) in enumerate((("W", p.W, g.W), ("b", p.b, g.b))):
                if value is None:
                    continue
                t = value.dtype.type
                flag = bad[l, FLAG_W if name == "W" else FLAG_B:][:1]
                if isinstance(opt, Adam):
                    m, v = self.slots["m"][l][j], self.slots["v"][l][j]
                    c1 = 1.0 - opt.beta1 ** count
                    c2 = 1.0 - opt.beta2 ** count
                    K.adam_update(value, grad, m, v, t(scale), scale != 1.0, t(opt.beta1),
                                  t(1.0 - opt.beta1), t(opt.beta2), t(1.0 - opt.beta2),
                                  t(1.0 / c2), t(opt.eps), t(opt.lr / c1), norms, l, flag)
                else:
                    vel = None if self.slots["velocity"] is None else self.slots["velocity"][l][j]
                    K.sgd_update(value, grad, vel, t(scale), scale != 1.0, opt.weight_decay,
                                 opt.momentum, opt.nesterov, opt.lr, norms, l, flag)
        return {"grad_norm": grad_norm, "clip_scale": scale}


class CudaDecorrelator:
    """``Decorrelator.update`` split in two for the GPU: ``delta`` computes lr * [(1 - kappa)
    C + kappa V] R (and its squared norm, and a flag where R - delta is not finite) without
    touching R; ``apply`` subtracts it once the caller has checked the norm."""

    def __init__(self, decorrelator):
        self.host = decorrelator
        self.lr = decorrelator.lr
        self.kappa = decorrelator.kappa

    def delta(self, R, x_star, norms, idx, flag):
        """The step for R from the reference inputs x_star (B, d); None when lr == 0."""
        if self.lr == 0.0:
            return None
        n = x_star.shape[0]
        kappa = self.kappa
        second = xp.empty(R.shape[0], dtype=R.dtype)
        K.second_moment(x_star, second)
        delta = xp.matmul(x_star.T, xp.matmul(x_star, R))
        K.decorrelation_delta(delta, second, R, (1.0 - kappa) / n, 2.0 * kappa - 1.0, kappa,
                              self.lr, norms, idx, flag)
        return delta

    @staticmethod
    def apply(R, delta) -> None:
        if delta is not None:
            K.subtract_(R, delta)
