"""Rules that differentiate the measured reference pass exactly: BP and the forward gradient.

Both ask the device for the reference pass alone (``samples=0``) and use the device's
derivatives at the measured pre-activations (the network's activations, with the nodes'
activation gains and offsets when they vary: ``Measurement.nodes``), so with discontinuous
activations (derivative zero almost everywhere) they pass no signal upstream, by design. BP's ``surrogate="ste"``
replaces the true derivatives with straight-through ones.

Forward gradient (exact directional derivative, no finite-difference bias): draw a tangent
v ~ N(0, I) over all weights and biases, propagate it forward through the reference pass

    dA_l  = X*_{l-1} V_l^T + dX*_{l-1} W_l^T + v_{b,l}     (dX*_{-1} = 0: the input is fixed)
    dX_l  = f'_l(a_l) * dA_l                               (gain_l f'_l(gain_l a_l + offset_l)
                                                            when the nodes vary)
    dX*_l = M_{l+1}(dX_l) R_{l+1}^T                        (when layer l+1 decorrelates)

where M_{l+1} is layer l+1's input map (identity for dense layers; pooling and im2col for
conv nets, ``InputMap.tangent``: linear but for max pooling, which passes on the tangent of
each window's first maximum).

and take the per-sample directional derivative of the loss d_n = (d ell_n / d z_n) . dZ_n
(z = network output). Then g = mean_n(d_n) v = (grad . v) v; K tangents are averaged.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..kernels import rng
from ..network import LayerGrad, Network, backward, node_derivative
from .base import Rule, direction_gradient, kernels_of, reference


class Backprop(Rule):
    """BP: exact backpropagation through the measured reference pass.

    Options: surrogate ("none" | "ste": straight-through derivatives), clean_pass
    (False: backpropagate through a noisy pass), decorrelated.
    """

    family = "bp"
    OPTIONS = {"surrogate": "none", "clean_pass": True, "decorrelated": False}

    def request(self) -> dict:
        return {"perturb": "none", "sigma": 0.0, "samples": 0,
                "clean_pass": self.options["clean_pass"]}

    def estimate(self, m, network: Network, out=None) -> list[LayerGrad]:
        K = kernels_of(m)
        dout = K.loss_grad(network.loss, m.outputs[0], m.targets)
        layers = m.layers if m.layers is not None else network.layers
        return backward(K, layers, network.activations, reference(m.inputs), reference(m.pre),
                        dout, surrogate=self.options["surrogate"] == "ste", nodes=m.nodes,
                        maps=network.maps,
                        activity=None if m.activity is None else reference(m.activity),
                        out=out)


class ForwardGradientState(NamedTuple):
    """step: number of estimates made so far; keys the tangent draws."""

    step: np.int64


class ForwardGradient(Rule):
    """FG: g = (grad . v) v with v ~ N(0, I) over all W and b, grad . v by forward mode.

    Options: samples K (tangents averaged per estimate), seed (of the tangent draws),
    clean_pass, decorrelated. State: ``step``, advanced by one per estimate. Tangents of
    estimate ``step`` come from ``rng.normal_array(seed, STREAM_PERTURB, step, l,
    (K, N_l * N_{l-1} + N_l))``: row k holds tangent k of layer l, weights (C order) first,
    then the bias.
    """

    family = "fg"
    OPTIONS = {"samples": 1, "seed": 0, "clean_pass": True, "decorrelated": False}

    def initial_state(self) -> ForwardGradientState:
        return ForwardGradientState(step=np.int64(0))

    def request(self) -> dict:
        return {"perturb": "none", "sigma": 0.0, "samples": 0,
                "clean_pass": self.options["clean_pass"]}

    def tangents(self, network: Network, step: int) -> tuple[list, list | None]:
        """The K tangents of estimate ``step``: per layer V (K, N_l, N_{l-1}) and v_b (K, N_l)."""
        K = self.options["samples"]
        Vs, vbs = [], []
        for l, p in enumerate(network.layers):
            n_b = p.W.shape[0] if p.b is not None else 0
            z = rng.normal_array(self.options["seed"], rng.STREAM_PERTURB, int(step), l,
                                 (K, p.W.size + n_b), dtype=network.dtype)
            Vs.append(z[:, : p.W.size].reshape((K,) + p.W.shape))
            vbs.append(z[:, p.W.size:] if p.b is not None else None)
        return Vs, (vbs if network.bias else None)

    def estimate(self, m, network: Network, out=None) -> list[LayerGrad]:
        K = kernels_of(m)
        xp = K.xp
        Vs, vbs = self.tangents(network, self.state.step)
        Vs = [K.asarray(V) for V in Vs]
        vbs = None if vbs is None else [None if v is None else K.asarray(v) for v in vbs]
        self.state = ForwardGradientState(step=np.int64(self.state.step + 1))
        layers = m.layers if m.layers is not None else network.layers
        L = network.n_layers
        dx_star = None  # dX*_{l-1}: (K, B L, d) rows, (K, B, N_{l-1}) for a dense layer
        for l, p in enumerate(layers):
            da = xp.matmul(m.inputs[l][0], Vs[l].transpose(0, 2, 1))
            if dx_star is not None:
                da += xp.matmul(dx_star, p.W.T)
            if vbs is not None:
                da += vbs[l][:, None, :]
            pre = m.pre[l][0]
            node = m.nodes[l] if m.nodes is not None else None
            dx = node_derivative(K, network.activations[l], pre, node) * da.reshape(
                (-1,) + pre.shape)
            if l + 1 < L and not network.maps[l + 1].identity:  # pooling, im2col
                dx = network.maps[l + 1].tangent(K, dx, m.activity[l][0])
            nxt = layers[l + 1].R if l + 1 < L else None
            dx_star = xp.matmul(dx, nxt.T) if nxt is not None else dx
        dout = K.loss_grad(network.loss, m.outputs[0], m.targets)
        d = xp.einsum("bn,kbn->k", dout, dx_star, dtype=np.float64) / dout.shape[0]
        return direction_gradient(d, Vs, vbs, xp)
