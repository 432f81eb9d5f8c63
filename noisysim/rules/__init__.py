"""Learning rules, by the names users type.

    bp    exact backpropagation (surrogate="ste" for discontinuous activations)
    np    node perturbation: (dell / sigma^2) eps x*^T
    inp   iterative node perturbation: one layer per pass, dell N_k da_k / ||da_k||^2
    anp   activity-based node perturbation: dell N da_l / ||da||^2, never reads the noise
    wp    weight perturbation: (dL / sigma^2) Psi
    fg    forward gradient: (grad . v) v by forward-mode derivatives
    dbp, dnp, dinp, danp   the same rules with decorrelated=True

Use::

    rule = make_rule("danp", sigma=1e-3)
    m = device.measure(x, y, **rule.request())
    grads = rule.estimate(m, device.network)      # list of LayerGrad, batch-mean dLoss/dW

The equations live in the module docstrings of ``perturbation``, ``weight`` and ``exact``.
"""

from __future__ import annotations

from ..errors import NoisysimError, check_choice
from .base import Rule, direction_gradient, node_gradient
from .exact import Backprop, ForwardGradient, ForwardGradientState
from .perturbation import ActivityNodePerturbation, IterativeNodePerturbation, NodePerturbation
from .weight import WeightPerturbation

_FAMILIES: dict[str, type[Rule]] = {
    cls.family: cls
    for cls in (Backprop, NodePerturbation, IterativeNodePerturbation,
                ActivityNodePerturbation, WeightPerturbation, ForwardGradient)
}
_DECORRELATED = {"dbp": "bp", "dnp": "np", "dinp": "inp", "danp": "anp"}

RULES: tuple[str, ...] = tuple(_FAMILIES) + tuple(_DECORRELATED)


def make_rule(name: str, **options) -> Rule:
    """Build a learning rule by name; unknown names and options raise NoisysimError.

    >>> make_rule("dnp", sigma=1e-3).request()
    {'perturb': 'nodes', 'sigma': 0.001, 'samples': 1, 'clean_pass': True}
    """
    check_choice("learning rule", name, RULES)
    if name in _DECORRELATED:
        if options.get("decorrelated", True) is not True:
            raise NoisysimError(
                f"rule {name!r} is {_DECORRELATED[name]!r} with decorrelated=true; use "
                f"{_DECORRELATED[name]!r} for the rule without decorrelation"
            )
        options = {**options, "decorrelated": True}
        return _FAMILIES[_DECORRELATED[name]](name, **options)
    return _FAMILIES[name](name, **options)


__all__ = [
    "RULES", "make_rule", "Rule", "node_gradient", "direction_gradient",
    "Backprop", "NodePerturbation", "IterativeNodePerturbation", "ActivityNodePerturbation",
    "WeightPerturbation", "ForwardGradient", "ForwardGradientState",
]
