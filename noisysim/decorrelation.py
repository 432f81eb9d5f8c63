"""Input decorrelation (Dalm, van Gerven & Ahmad, arXiv:2310.00965).

Every layer l may own a square matrix R_l (identity at start) that decorrelates its input:
x*_{l-1} = R_l x_{l-1}, row-major X* = X R^T with X of shape (B, d). After each weight update
R is moved towards decorrelating (and, with kappa > 0, whitening) the batch it just saw::

    R <- R - lr * [ (1 - kappa) C + kappa V ] R
    C = offdiag( mean_n x*_n x*_n^T )            (d x d, the off-diagonal second moments)
    V = diag( mean_n x*_n^2 - 1 )                (d x d diagonal)

kappa = 0 is pure decorrelation (the rule in the authors' code: variances are left alone);
kappa > 0 also drives every variance (second moment) of x* towards 1. Second moments are not
centred, as in the paper: the rule decorrelates E[x* x*^T], which equals the covariance only
for zero-mean inputs.

Cost O(B d^2), never O(d^3): with D = diag(mean_n x*_n^2),

    M   = X*^T (X* R) / B        two (B, d) x (d, d)-shaped products
    C R = M - D R                D R scales the rows of R: O(d^2)
    V R = (D - I) R = D R - R

so  Delta R = lr * [ (1 - kappa) M + (2 kappa - 1) D R - kappa R ].

The input must be the reference pass's x* (computed with the current R), e.g.
``measurement.inputs[l][0]``. A conv layer's x* are its (B L, d) patch rows, one R shared
by the positions (``noisysim.layers``); ``positions`` = s > 1 keeps every s-th row. At inference the pair (W, R) folds into one matrix,
W x* = W (R x) = (W R) x: see ``fold``.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import NoisysimError, check_number
from .kernels import step as _step
from .kernels.backend import CPU


class Decorrelator:
    """The decorrelation rule with learning rate ``lr`` >= 0 and ``kappa`` in [0, 1].

    Stateless apart from its two hyperparameters: ``update(R, x_star)`` changes R in place.
    For stability lr times the largest eigenvalue of E[x* x*^T] should stay well below 1
    (the rule is gradient descent on a quartic, so too large a step diverges; ``update``
    then raises instead of writing non-finite values).
    """

    def __init__(self, lr: float, kappa: float = 0.0, positions: int = 1):
        self.lr = check_number("decorrelation lr", lr, 0.0, None,
                               hint="0 freezes R; typical values are 1e-7 to 1e-3")
        self.kappa = check_number("kappa", kappa, 0.0, 1.0,
                                  hint="0 = pure decorrelation, > 0 also drives unit variance")
        self.positions = check_number("decorrelation positions", positions, 1, None,
                                      integer=True, hint="1 = every patch row, s = every s-th")
        self._buffers: dict = {}

    def __repr__(self) -> str:
        return (f"Decorrelator(lr={self.lr!r}, kappa={self.kappa!r}, "
                f"positions={self.positions!r})")

    def patch_rows(self, K, x_star):
        """The rows a conv layer's R learns from: every ``positions``-th of its (B L, d)
        patch rows (all of them when positions = 1). The rule's mean over rows is then a
        mean over a subsample of the same patch distribution: the update's theory is
        unchanged, its cost falls by the factor ``positions``."""
        if self.positions == 1:
            return x_star
        return K.xp.ascontiguousarray(x_star[::self.positions])

    def _scratch(self, K, R):
        """A (d, d) work array for Delta R, kept between calls: a fresh one of R's size
        (37 MB at d = 3072) costs page faults on every step. Not state: each update
        overwrites it before use (so one Decorrelator serves one thread at a time)."""
        key = (K.name, R.shape, R.dtype.str)
        if key not in self._buffers:
            self._buffers[key] = K.empty(R.shape, R.dtype)
        return self._buffers[key]

    def update(self, R: np.ndarray, x_star: np.ndarray) -> float:
        """One step R <- R - lr [(1 - kappa) C + kappa V] R, in place, in R's dtype.

        R: (d, d) float32/float64, changed in place. x_star: (B, d) decorrelated inputs of
        the reference pass, x* = x R^T with the current R (cast to R's dtype).
        Returns ||Delta R||_F (a scalar to log). Raises ``NoisysimError`` without touching
        R if the step, or R after it, would not be finite.
        """
        _check_R(R)
        x = _check_inputs("x_star", x_star, R.shape[0]).astype(R.dtype, copy=False)
        stats, failure = np.zeros(_step.size(1)), _step.new_failure()
        self.step(CPU, R, x, stats, failure, 1, 0)
        if stats[_step.decor_bad(1, 0)] > 0:
            raise NoisysimError(
                "decorrelation step is not finite: R or the inputs diverged; lower the "
                f"decorrelation lr (now {self.lr!r})"
            )
        return math.sqrt(stats[_step.decor_sq(1, 0)])

    def step(self, K, R, x_star, stats, failure, n_layers: int, layer: int) -> None:
        """The engine's update of layer ``layer``'s R on the backend ``K``, from the
        reference inputs x_star (B, d) in R's dtype: ||Delta R||^2 into
        ``stats[decor_sq(layer)]``; when R - Delta R would not be finite,
        ``stats[decor_bad(layer)]`` is set and R is left alone. Skipped when the step is
        blocked (``noisysim.kernels.step``) or lr = 0."""
        if self.lr == 0.0 or K.host_blocked(stats, failure, n_layers, layer):
            return
        K.decorrelation_step(R, x_star, self.lr, self.kappa, self._scratch(K, R), stats,
                             failure, n_layers, layer)


def decorrelation_loss(x_star: np.ndarray) -> float:
    """Mean squared off-diagonal correlation coefficient of the columns of ``x_star``.

    With x_star of shape (B, d), B >= 2, in x_star's dtype (float32 or float64)::

        z_i      = (x_i - mean_n x_{n,i}) / s_i,  s_i^2 = mean_n (x_{n,i} - mean_n x_{n,i})^2
        rho_ij   = mean_n z_{n,i} z_{n,j}                     (Pearson correlation)
        loss     = sum_{i != j} rho_ij^2 / (d (d - 1))

    i.e. the mean of rho_ij^2 over the d (d - 1) ordered off-diagonal pairs: 0 for
    uncorrelated columns, 1 when all columns are perfectly (anti-)correlated. A column with
    zero variance has no defined correlation and counts as uncorrelated (rho = 0). Unlike
    the update rule, the loss is centred and scale-free, so it measures correlation only,
    not variance. Returns 0.0 for d = 1. Cost O(B d^2).
    """
    x = _check_inputs("x_star", x_star, None)
    n, d = x.shape
    if n < 2:
        raise NoisysimError(
            f"decorrelation_loss needs at least 2 samples (rows) to estimate correlations, "
            f"got x_star of shape {x.shape}"
        )
    if d < 2:
        return 0.0
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    centred = x - x.mean(axis=0)
    std = np.sqrt(np.einsum("ni,ni->i", centred, centred) / x.dtype.type(n))
    inverse = np.zeros_like(std)
    np.divide(1.0, std, out=inverse, where=std > 0)
    z = centred * inverse
    corr = (z.T @ z) / x.dtype.type(n)
    np.fill_diagonal(corr, 0.0)
    return float(np.sum(corr * corr)) / (d * (d - 1))


def fold(W: np.ndarray, R: np.ndarray | None) -> np.ndarray:
    """Fold a layer's decorrelation into its weights for inference: returns W @ R.

    a = W x* + b = W (R x) + b = (W R) x + b, so the folded layer takes the raw input x and
    keeps its bias. W: (N_out, d), R: (d, d) or None (then a copy of W). The result has W's
    dtype; W and R are not changed.
    """
    W = np.asarray(W)
    if R is None:
        return W.copy()
    _check_R(R)
    if W.ndim != 2 or W.shape[1] != R.shape[0]:
        raise NoisysimError(
            f"fold needs W of shape (N_out, {R.shape[0]}) to match R {R.shape}, got {W.shape}"
        )
    return (W @ R).astype(W.dtype, copy=False)


def _check_R(R) -> None:
    if not isinstance(R, np.ndarray) or R.ndim != 2 or R.shape[0] != R.shape[1]:
        shape = getattr(R, "shape", type(R).__name__)
        raise NoisysimError(f"R must be a square 2-D array (d, d), got {shape}")
    if R.dtype not in (np.float32, np.float64):
        raise NoisysimError(f"R must be float32 or float64, got {R.dtype}")


def _check_inputs(name: str, x, d: int | None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 1 or (d is not None and x.shape[1] != d):
        want = f"(B, {d})" if d is not None else "(B, d)"
        raise NoisysimError(
            f"{name} must be a 2-D batch of shape {want} with B >= 1, got shape {x.shape}"
        )
    return x
