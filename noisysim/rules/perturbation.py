"""Node perturbation rules: NP, INP and ANP (Dalm, van Gerven & Ahmad, arXiv:2310.00965).

All three learn from a reference pass (pass 0) and K perturbed passes. With
dell_n = ell~_n - ell_n and da_l = a~_l - a_l (perturbed minus reference), each produces
a per-sample estimate c_{l,n} of d ell_n / d a_l and updates with its outer product with
the reference input, averaged over the K passes and the batch:

    g_W_l = mean_{k,n} c_{l,k,n} x*_{l-1,n}^T,   g_b_l = mean_{k,n} c_{l,k,n}

    NP   c_l = (dell / sigma^2) eps_l          injected noise eps_l ~ N(0, sigma^2 I),
                                               all layers perturbed at once
    INP  c_k = dell^(k) N_k da_k / ||da_k||^2   pass k perturbs layer k only
    ANP  c_l = dell N da_l / ||da||^2           ||da||^2 = sum over all layers,
                                               N = all nodes (output included)

NP needs the injected values (and sigma); INP and ANP use measured activity changes only.
ANP never reads the perturbation, so it learns equally from intrinsic, inaccessible device
noise (``sigma=0``). A zero ||da||^2 (nothing moved) contributes a zero estimate.
"""

from __future__ import annotations

import numpy as np

from ..kernels.backend import Vectors
from ..network import LayerGrad, Network
from .base import Rule, kernels_of


class NodePerturbation(Rule):
    """NP: g_W_l = mean (dell / sigma^2) eps_l x*_{l-1}^T, eps in all layers at once.

    Options: sigma (> 0, std of the injected node noise), samples K (perturbed passes
    averaged), clean_pass, decorrelated.
    """

    family = "np"
    OPTIONS = {"sigma": 1e-3, "samples": 1, "clean_pass": True, "decorrelated": False}

    def request(self) -> dict:
        o = self.options
        return {"perturb": "nodes", "sigma": o["sigma"], "samples": o["samples"],
                "clean_pass": o["clean_pass"]}

    def estimate(self, m, network: Network, out=None) -> list[LayerGrad]:
        self._require(m.injected is not None and m.n_passes > 1,
                      "the node perturbations it injected")
        K, count = kernels_of(m), m.n_passes - 1
        scale = K.loss_scale(m.losses, 1, count, network.dtype,
                             divisor=self.options["sigma"] ** 2)
        return [
            LayerGrad(*K.node_gradient(scale, Vectors(m.injected[l], 1, count, False),
                                       m.inputs[l][0], p.b is not None, _slot(out, l)))
            for l, p in enumerate(network.layers)
        ]


class IterativeNodePerturbation(Rule):
    """INP: g_W_k = mean dell^(k) N_k da_k / ||da_k||^2 x*_{k-1}^T, one layer per pass.

    The measurement holds the reference pass and K passes per layer
    (``perturb="each_layer"``); ``Measurement.perturbed_layer`` says which layer each pass
    perturbed (the passes of one layer are consecutive). A finite-difference directional
    derivative: with u = da / ||da||, N (dell / ||da||) u -> N (grad . u) u as sigma -> 0,
    whose mean over random u is the gradient.
    """

    family = "inp"
    OPTIONS = {"sigma": 1e-3, "samples": 1, "clean_pass": True, "decorrelated": False}

    def request(self) -> dict:
        o = self.options
        return {"perturb": "each_layer", "sigma": o["sigma"], "samples": o["samples"],
                "clean_pass": o["clean_pass"]}

    def estimate(self, m, network: Network, out=None) -> list[LayerGrad]:
        K = kernels_of(m)
        grads = []
        for k, p in enumerate(network.layers):
            passes = np.flatnonzero(m.perturbed_layer == k)
            self._require(passes.size > 0, f"passes that perturb layer {k} alone")
            first, count = int(passes[0]), passes.size
            self._require(passes[-1] - first + 1 == count,
                          f"the passes that perturb layer {k} to be consecutive")
            da = Vectors(m.pre[k], first, count, True)
            scale = K.loss_scale(m.losses, first, count, network.dtype,
                                 sq=K.squared_norms(da), factor=network.widths[k + 1])
            grads.append(LayerGrad(*K.node_gradient(scale, da, m.inputs[k][0],
                                                    p.b is not None, _slot(out, k))))
        return grads


class ActivityNodePerturbation(Rule):
    """ANP: g_W_l = mean dell N da_l / ||da||^2 x*_{l-1}^T, ||da||^2 over all layers.

    Uses measured activity changes only, never the perturbation: with ``sigma=0`` it asks
    for no injection (``perturb="none"``) and learns from the device's intrinsic noise.
    """

    family = "anp"
    OPTIONS = {"sigma": 1e-3, "samples": 1, "clean_pass": True, "decorrelated": False}
    SIGMA_MAY_BE_ZERO = True

    def request(self) -> dict:
        o = self.options
        return {"perturb": "nodes" if o["sigma"] > 0 else "none", "sigma": o["sigma"],
                "samples": o["samples"], "clean_pass": o["clean_pass"]}

    def estimate(self, m, network: Network, out=None) -> list[LayerGrad]:
        self._require(m.n_passes > 1, "at least one perturbed (or noisy) pass")
        K, count = kernels_of(m), m.n_passes - 1
        da = [Vectors(pre, 1, count, True) for pre in m.pre]
        sq = K.squared_norms(da[0])
        for d in da[1:]:
            sq += K.squared_norms(d)
        scale = K.loss_scale(m.losses, 1, count, network.dtype, sq=sq,
                             factor=network.n_nodes)
        return [
            LayerGrad(*K.node_gradient(scale, da[l], m.inputs[l][0], p.b is not None,
                                       _slot(out, l)))
            for l, p in enumerate(network.layers)
        ]


def _slot(out, l):
    """Layer l's output arrays in ``out`` (the engine's gradient arena), or None."""
    return None if out is None else out[l]
