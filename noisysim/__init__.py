"""noisysim: simulate noisy, discontinuous neural hardware and train it with the learning
rules such hardware allows (node perturbation and friends), with BP as the reference."""

__version__ = "0.1.0"
