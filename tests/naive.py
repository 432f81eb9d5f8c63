"""Slow, plain-numpy references the kernels are tested against, one module per room.

    naive.core   activations, derivatives, losses, forward pass, backprop (naive_core.py)
    naive.rng    the counter-based generator in pure-Python integers (naive_rng.py)
    naive.noise  every device-noise model, element by element (naive_noise.py)
    naive.rules  every learning rule's formula from SCIENCE.md (naive_rules.py)
    naive.optim  SGD, Nesterov, Adam with bias correction, the R update (naive_optim.py)

They are written from the equations, in float64; naive_noise takes its random draws from
noisysim.kernels.rng (itself checked against naive_rng) so that both sides see the same draws.
"""

import naive_core as core  # noqa: F401
import naive_noise as noise  # noqa: F401
import naive_optim as optim  # noqa: F401
import naive_rng as rng  # noqa: F401
import naive_rules as rules  # noqa: F401
