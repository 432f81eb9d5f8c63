"""Plain numpy/scipy references of the fitting likelihoods (noisysim.fit), written from
their definitions rather than from the fast recursions:

- HMM: the forward algorithm in log space (logsumexp), no scaling tricks;
- Gaussian processes: the dense multivariate normal density with the Toeplitz covariance
  of the model's autocovariance (O(T^3): short traces only);
- the expected periodogram: E|sum_t x_t e^{-2 pi i f t}|^2 / L = w^H C w / L with the
  dense covariance matrix C;
- the flip matrix of n independent spins: by enumerating all 2^n spin configurations.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import linalg, special, stats


def hmm_loglik(y, means, sigma, trans, init):
    logb = stats.norm.logpdf(y[:, None], means[None, :], sigma)
    la = np.log(init) + logb[0]
    for t in range(1, len(y)):
        la = special.logsumexp(la[:, None] + np.log(trans), axis=0) + logb[t]
    return float(special.logsumexp(la))


def gaussian_process_loglik(y, mean, acov):
    cov = linalg.toeplitz(acov[:len(y)])
    return float(stats.multivariate_normal(np.full(len(y), mean), cov).logpdf(y))


def expected_periodogram(acov, L):
    """One-sided E[periodogram] of a boxcar segment of length L at f = k / L."""
    cov = linalg.toeplitz(acov[:L])
    t = np.arange(L)
    out = []
    for k in range(L // 2 + 1):
        w = np.exp(-2j * np.pi * k * t / L)
        out.append(2.0 * (w.conj() @ cov @ w).real / L)
    return np.array(out)


def flip_matrix(n, p):
    """P(j up -> k up) for n spins, each flipping independently with probability p."""
    a = np.zeros((n + 1, n + 1))
    configs = list(itertools.product((0, 1), repeat=n))
    for j in range(n + 1):
        start = next(c for c in configs if sum(c) == j)  # the spins are exchangeable
        for flips in configs:
            prob = np.prod([p if f else 1 - p for f in flips])
            end = [s ^ f for s, f in zip(start, flips)]
            a[j, sum(end)] += prob
    return a
