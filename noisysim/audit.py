"""Audits of the perturbation estimators against the simulator's oracle (the exact gradient).

Diagnostics, outside the rule API: they read the network's true derivatives
(``noisysim.device.exact_gradient``), which no rule may.

``gradient_projection`` measures, per layer, how far the mean of a rule's estimates lies
along the exact gradient. NP and INP are unbiased as sigma -> 0 (projection 1). ANP is not:
to first order E[dell da_l] = sigma^2 sum_{j<=l} J_lj J_lj^T delta_l (J_lj = d a_l / d a_j,
delta_l = d ell / d a_l), because the noise of the layers below l reaches layer l and is
credited to it, and ||da||^2 normalises by all layers together. Its projection equals 1
only where the Jacobians are isotropic; on an ordinary network it does not. The authors'
rule has the same bias: noisysim reproduces it and states it, it does not correct it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .device import Device, exact_gradient
from .network import Network


@dataclass(frozen=True)
class Projection:
    """Per layer l: ``mean[l]`` = <g_l, G_l> / ||G_l||^2 of the rule's mean estimate g on
    the exact gradient G (weights and bias of the layer as one vector), ``stderr[l]`` its
    standard error (std over ``groups`` independent groups / sqrt(groups)), and the
    number of estimates averaged (``draws`` per group times ``groups``)."""

    rule: str
    mean: np.ndarray
    stderr: np.ndarray
    groups: int
    draws: int


def gradient_projection(rule, network: Network, x: np.ndarray, targets: np.ndarray,
                        draws: int = 500, groups: int = 20, seed: int = 0) -> Projection:
    """Project the mean of ``groups * draws`` estimates of ``rule`` on the exact gradient.

    Each group is one ``Device.measure`` of the batch repeated ``draws`` times (every copy
    of a sample draws its own perturbation, so the rule's batch-mean estimate is the mean
    of ``draws`` estimates of the batch gradient); groups run at successive device times,
    so they are independent. The projection is linear in the estimate, so the mean over
    groups is the projection of the mean of all estimates, and the spread of the groups
    gives its standard error (Student t with groups - 1 degrees of freedom).
    """
    G = [_layer_vector(g) for g in exact_gradient(network, x, targets)]
    device = Device(network, seed=seed)
    xr = np.tile(x, (draws, 1))
    tr = np.tile(targets, (draws,) + (1,) * (np.ndim(targets) - 1))
    rho = np.empty((groups, len(G)))
    for k in range(groups):
        est = rule.estimate(device.measure(xr, tr, **rule.request()), network)
        rho[k] = [_layer_vector(e) @ g / (g @ g) for e, g in zip(est, G)]
    return Projection(rule.name, rho.mean(axis=0), rho.std(axis=0, ddof=1) / np.sqrt(groups),
                      groups, draws)


def _layer_vector(g) -> np.ndarray:
    return np.concatenate([np.ravel(g.W)] + ([] if g.b is None else [np.ravel(g.b)]))
