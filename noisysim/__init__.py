"""noisysim: simulate noisy, discontinuous neural hardware and train it with the learning
rules such hardware allows (node perturbation and friends), with BP as the reference."""

import os as _os

# A training step alternates BLAS matrix products (numpy's OpenBLAS, its own threads) with
# numba kernels. OpenBLAS's idle threads spin for 2^28 cycles (~0.1 s) after each product,
# taking the cycles the next kernel needs (README, design notes: how to measure it).
# 2^16 cycles keeps them warm between back-to-back products only. OpenBLAS reads this
# once, when numpy loads it: it takes effect when noisysim is imported before numpy (the
# ``noisysim`` command always is) and in every process started from this one; a value you
# set yourself is kept.
if "GOTO_THREAD_TIMEOUT" not in _os.environ:
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

__version__ = "0.1.0"
