"""Weight perturbation (WP), the classic baseline.

Each perturbed pass k runs the whole batch with weights W + Psi_k (and biases b + psi_k),
Psi_k ~ N(0, sigma_w^2 I), drawn and reported by the device. With dL_k the batch-mean loss
change of pass k,

    g_W = mean_k (dL_k / sigma_w^2) Psi_k,   g_b = mean_k (dL_k / sigma_w^2) psi_k.
"""

from __future__ import annotations

from ..network import LayerGrad, Network
from .base import Rule, direction_gradient, kernels_of, loss_changes


class WeightPerturbation(Rule):
    """WP: g_W = (dL / sigma^2) Psi with dL the batch-mean loss change.

    Options: sigma (> 0, std of the weight perturbation), samples K, clean_pass,
    decorrelated.
    """

    family = "wp"
    OPTIONS = {"sigma": 1e-3, "samples": 1, "clean_pass": True, "decorrelated": False}

    def request(self) -> dict:
        o = self.options
        return {"perturb": "weights", "sigma": o["sigma"], "samples": o["samples"],
                "clean_pass": o["clean_pass"]}

    def estimate(self, m, network: Network, out=None) -> list[LayerGrad]:
        self._require(m.injected_weights is not None and m.n_passes > 1,
                      "the weight perturbations it injected")
        scale = loss_changes(m).mean(axis=1) / self.options["sigma"] ** 2
        bias = None
        if m.injected_bias is not None:
            bias = [b[1:] if p.b is not None else None
                    for b, p in zip(m.injected_bias, network.layers)]
        return direction_gradient(scale, [w[1:] for w in m.injected_weights], bias,
                                  kernels_of(m).xp)
