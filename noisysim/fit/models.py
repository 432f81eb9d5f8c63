"""The model families a recorded trace is fitted with, and the maximiser they share.

Every family has natural parameters (``params``, in units of the trace and of samples),
an exact time-domain log-likelihood ``loglik`` (summed over the devices, each an
independent realisation), the stationary autocovariance ``acov`` and marginal density
``pdf`` (for the plot and the model checks), and ``noise(theta)``: the noisysim noise model
with those parameters (one sample = one time step).

=========  =================================================  ======================  =============
family     trace y_t                                          parameters              estimator
=========  =================================================  ======================  =============
gaussian   mean + sigma z_t                                   mean, sigma             exact ML
ou         mean + x_t, x AR(1): x_{t+1} = d x_t + ...         mean, sigma, tau        exact ML (Kalman)
           d = exp(-1/tau), stationary std sigma
telegraph  offset + amplitude sum_{s<n} s_t + sigma z_t,      offset, amplitude,      exact ML (HMM
           s_t in {-1,+1} flipping with p_flip per sample     sigma, p_flip           forward algorithm)
           (levels = n + 1)
smtj       mean + amplitude s_t + sigma z_t (the MTJ study's  mean, amplitude,        as telegraph
           form, two levels)                                  sigma, p_flip
pink       mean + sum_k x_k, x_k AR(1) with tau_k =           mean, sigma, base_tau,  Whittle ML on the
           base_tau 4^k, std sigma / sqrt(n_poles)            n_poles                 Bartlett PSD
=========  =================================================  ======================  =============

Standard errors: the inverse of the observed information (the negative Hessian of the
maximised objective, by central differences in unconstrained coordinates u, mapped to the
natural parameters with the delta method: cov_theta = J cov_u J, J = d theta / d u).
A trace that takes only as many distinct values as the telegraph has levels has no
read-out noise: its states are observed and the likelihood is that of the Markov chain
(sigma = 0; offset and amplitude are then exact, standard error 0).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, signal, stats

from ..errors import NoisysimError
from ..noise import GaussianNoise, OUNoise, PinkNoise, SMTJNoise, TelegraphNoise
from .hmm import ar1_sum_loglik, hmm_loglik

__all__ = ["FAMILIES", "make_family", "maximise", "bartlett_psd", "expected_bartlett_psd"]

# unconstrained coordinate u of each kind of parameter (loc0, scale0: the trace's mean/std)
#   loc:   theta = loc0 + scale0 u       scale: theta = scale0 exp(u)
#   time:  theta = exp(u)  (samples)     prob:  theta = 1 / (1 + exp(-u))
#   int:   never free (chosen by profile likelihood)


def _to_theta(kind, u, loc0, scale0):
    if kind == "loc":
        return loc0 + scale0 * u
    if kind == "scale":
        return scale0 * math.exp(u)
    if kind == "time":
        return math.exp(u)
    if kind == "prob":
        return 1.0 / (1.0 + math.exp(-u))
    raise AssertionError(kind)


def _to_u(kind, theta, loc0, scale0):
    if kind == "loc":
        return (theta - loc0) / scale0
    if kind == "scale":
        return math.log(theta / scale0)
    if kind == "time":
        return math.log(theta)
    if kind == "prob":
        return math.log(theta / (1.0 - theta))
    raise AssertionError(kind)


def _dtheta_du(kind, theta, scale0):
    return {"loc": scale0, "scale": theta, "time": theta, "prob": theta * (1.0 - theta)}[kind]


_H = 1e-4  # finite-difference step in u: the objective is smooth on this scale, and
# rounding error eps |LL| / h^2 stays far below the curvature (~ number of samples).


def _at_boundary(kind, theta, scale0):
    """A maximum on the edge of the parameter space is no interior maximum: a correlation
    time under 0.1 sample (lag-1 correlation < 5e-5), a flip probability within 1e-6 of 0 or
    1, or a scale a millionth of the trace's."""
    return ((kind == "time" and theta < 0.1) or (kind == "prob" and min(theta, 1 - theta) < 1e-6)
            or (kind == "scale" and theta < 1e-6 * scale0))


def maximise(objective, theta0, kinds, free, loc0, scale0, n, what, newton_only=False):
    """Maximise ``objective(theta)`` over the ``free`` parameters; returns (theta, cov).

    BFGS on -objective / n (per-sample scale, so its tolerances mean the same for any
    length; skipped with ``newton_only``, for a start already close), then Newton steps
    with the finite-difference Hessian until a step is below 0.5 standard errors (that
    step is taken; what remains is O(0.25 / sqrt(N)) SE). A Hessian that is not negative definite,
    Newton steps that do not shrink, or a maximum on the boundary (``_at_boundary``) mean
    the fit did not converge: NoisysimError naming ``what``.
    """
    theta0 = np.asarray(theta0, dtype=np.float64)
    idx = [i for i in range(len(theta0)) if free[i]]

    def theta_of(u):
        th = theta0.copy()
        for j, i in enumerate(idx):
            th[i] = _to_theta(kinds[i], u[j], loc0, scale0)
        return th

    def f(u):
        try:
            v = objective(theta_of(u))
        except (OverflowError, ZeroDivisionError, ValueError):
            return -np.inf  # outside the model (e.g. exp overflow): never the maximum
        return v if np.isfinite(v) else -np.inf

    u = np.array([_to_u(kinds[i], theta0[i], loc0, scale0) for i in idx])
    if not newton_only:
        with np.errstate(all="ignore"):
            res = optimize.minimize(lambda v: -f(v) / n, u, method="BFGS")
        if np.all(np.isfinite(res.x)) and np.isfinite(res.fun):
            u = res.x
    k = len(idx)
    for _ in range(8):
        f0 = f(u)
        g = np.empty(k)
        hess = np.empty((k, k))
        for a in range(k):
            ea = np.zeros(k)
            ea[a] = _H
            fp, fm = f(u + ea), f(u - ea)
            g[a] = (fp - fm) / (2 * _H)
            hess[a, a] = (fp - 2 * f0 + fm) / _H**2
            for b in range(a):
                eb = np.zeros(k)
                eb[b] = _H
                hess[a, b] = hess[b, a] = (f(u + ea + eb) - f(u + ea - eb) - f(u - ea + eb)
                                           + f(u - ea - eb)) / (4 * _H**2)
        if not np.all(np.isfinite(hess)) or not np.all(np.isfinite(g)):
            break
        try:
            cov_u = np.linalg.inv(-hess)
            np.linalg.cholesky(cov_u)
        except np.linalg.LinAlgError:
            break
        step = cov_u @ g
        se_u = np.sqrt(np.diag(cov_u))
        u = u + step
        if np.all(np.abs(step) <= 0.5 * se_u):
            # The last step was within 0.5 SE. In SE units the log-likelihood is quadratic
            # up to cubic terms of relative size O(1/sqrt(N)), so what remains after a
            # Newton step of s SE is O(s^2 / sqrt(N)) SE: negligible.
            th = theta_of(u)
            if any(_at_boundary(kinds[i], th[i], scale0) for i in idx):
                break
            jac = np.array([_dtheta_du(kinds[i], th[i], scale0) for i in idx])
            cov = np.zeros((len(th), len(th)))
            cov[np.ix_(idx, idx)] = cov_u * np.outer(jac, jac)
            return th, cov
    raise NoisysimError(
        f"the {what} fit did not converge (the likelihood has no clear maximum: the trace "
        "may not follow this model, or is too short to determine its parameters); try "
        "another --model or --model auto")


# ------------------------------------------------------------------------------ spectra


def bartlett_psd(y, nperseg):
    """One-sided Bartlett PSD (Welch, boxcar window, no overlap) averaged over devices.

    Returns (f, psd, m): frequencies in cycles per sample, the averaged periodogram and the
    number m of averaged segments. Each bin is asymptotically S(f) Gamma(m, 1/m).
    """
    f, p = signal.welch(y, fs=1.0, window="boxcar", nperseg=nperseg, noverlap=0,
                        detrend="constant", scaling="density", axis=0)
    return f, p.mean(axis=1), (y.shape[0] // nperseg) * y.shape[1]


def expected_bartlett_psd(acov, nperseg):
    """E[bartlett_psd] of a stationary process with autocovariance acov[0..nperseg-1].

    The periodogram of a boxcar segment of length L has expectation
    sum_{|k|<L} c(k) (1 - |k|/L) exp(-2 pi i f k) (times 2, one-sided): exact for any
    spectrum, so the spectral fit has no leakage bias ("debiased Whittle").
    """
    L = nperseg
    w = acov[:L] * (1.0 - np.arange(L) / L)
    s = 2.0 * np.fft.rfft(w).real - w[0]
    return 2.0 * s


def _acf_lags(y, nlags):
    x = y - y.mean(axis=0)
    n = x.shape[0]
    spec = np.fft.rfft(x, n=2 * n, axis=0)
    ac = np.fft.irfft(spec * spec.conj(), axis=0)[:nlags + 1] / n
    return ac.mean(axis=1)


# ------------------------------------------------------------------------------ families


class Family:
    """A model family: see the module docstring. ``fit(y)`` -> (theta, cov)."""

    name = ""
    params: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    min_samples = 10

    def label(self) -> str:
        return self.name

    def start(self, y) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def loglik(self, theta, y) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    WARM_START = 20_000  # shortest stretch fitted from the moment start

    def fit(self, y):
        args = (self.kinds, [k != "int" for k in self.kinds], float(y.mean()),
                float(y.std()), y.size, self.label())
        theta0 = None
        if y.shape[0] > 4 * self.WARM_START:
            # Coarse to fine: the fit of the first stretch starts the full one close to
            # its maximum, so Newton steps alone finish it (a few dozen evaluations of
            # the long likelihood instead of hundreds); BFGS from there if they do not.
            try:
                theta0, _ = self.fit(y[:max(self.WARM_START, y.shape[0] // 10)])
                return maximise(lambda th: self.loglik(th, y), theta0, *args,
                                newton_only=True)
            except NoisysimError:
                pass
        return maximise(lambda th: self.loglik(th, y),
                        self.start(y) if theta0 is None else theta0, *args)

    def n_free(self) -> int:
        return len(self.params)


class Gaussian(Family):
    name = "gaussian"
    params = ("mean", "sigma")
    kinds = ("loc", "scale")

    def start(self, y):
        return np.array([y.mean(), y.std()])

    def loglik(self, theta, y):
        mean, sigma = theta
        z2 = float(np.square((y - mean) / sigma).sum())
        return -0.5 * z2 - y.size * (math.log(sigma) + 0.5 * math.log(2.0 * math.pi))

    def acov(self, theta, nlags):
        out = np.zeros(nlags + 1)
        out[0] = theta[1] ** 2
        return out

    def pdf(self, theta, x):
        return stats.norm.pdf(x, theta[0], theta[1])

    def noise(self, theta):
        return GaussianNoise(sigma=float(theta[1]), mean=float(theta[0]))


class OU(Family):
    name = "ou"
    params = ("mean", "sigma", "tau")
    kinds = ("loc", "scale", "time")
    min_samples = 20

    def start(self, y):
        ac = _acf_lags(y, 1)
        rho = float(np.clip(ac[1] / ac[0], 0.05, 0.9999))
        return np.array([y.mean(), y.std(), -1.0 / math.log(rho)])

    def loglik(self, theta, y):
        mean, sigma, tau = theta
        d = np.array([math.exp(-1.0 / tau)])
        v = np.array([sigma * sigma])
        return float(sum(ar1_sum_loglik(y[:, j], mean, d, v) for j in range(y.shape[1])))

    def acov(self, theta, nlags):
        return theta[1] ** 2 * np.exp(-np.arange(nlags + 1) / theta[2])

    def pdf(self, theta, x):
        return stats.norm.pdf(x, theta[0], theta[1])

    def noise(self, theta):
        return OUNoise(tau=float(theta[2]), sigma=float(theta[1]), dt=1.0, mean=float(theta[0]))


def _flip_matrix(n, p):
    """P(j -> k up-spins) for n independent +-1 spins each flipping with probability p."""
    a = np.zeros((n + 1, n + 1))
    for j in range(n + 1):
        down = stats.binom.pmf(np.arange(j + 1), j, p)          # up spins that flip down
        up = stats.binom.pmf(np.arange(n - j + 1), n - j, p)    # down spins that flip up
        conv = np.convolve(down[::-1], up)                      # index = (j - u) + d
        a[j, :] = conv
    return a


class Telegraph(Family):
    """Telegraph with ``levels`` = n + 1 equally spaced levels (n independent +-1 sources)
    plus Gaussian read-out noise: a hidden Markov model over the number of up sources."""

    name = "telegraph"
    params = ("offset", "amplitude", "sigma", "p_flip")
    kinds = ("loc", "scale", "scale", "prob")
    min_samples = 100

    def __init__(self, levels=2):
        if not isinstance(levels, (int, np.integer)) or levels < 2:
            raise NoisysimError(f"telegraph levels must be an integer >= 2, got {levels!r}")
        self.levels = int(levels)

    def label(self):
        return self.name if self.levels == 2 else f"{self.name} ({self.levels} levels)"

    @property
    def n(self):
        return self.levels - 1

    def _levels(self, offset, amplitude):
        return offset + amplitude * (2.0 * np.arange(self.n + 1) - self.n)

    def start(self, y):
        # Moments: read-out noise from the lag-1 differences (robust: most steps do not
        # flip), n a^2 = var - sigma^2, and p_flip from acov(1) = n a^2 (1 - 2 p).
        ac = _acf_lags(y, 1)
        dif = np.diff(y, axis=0)
        sigma = 1.4826 * float(np.median(np.abs(dif - np.median(dif)))) / math.sqrt(2.0)
        sigma = max(sigma, 0.05 * math.sqrt(ac[0]))
        sig2 = max(ac[0] - sigma**2, 0.1 * ac[0])
        amp = math.sqrt(sig2 / self.n)
        p = float(np.clip((1.0 - ac[1] / sig2) / 2.0, 1e-3, 0.5))
        return np.array([y.mean(), amp, sigma, p])

    def _chain(self, p):
        init = stats.binom.pmf(np.arange(self.n + 1), self.n, 0.5)
        return _flip_matrix(self.n, p), init

    def _discrete_states(self, y):
        """Observed states when the trace takes exactly ``levels`` equally spaced values."""
        values = np.unique(y)
        if len(values) > self.levels:
            return None
        if len(values) < self.levels:
            raise NoisysimError(
                f"the trace takes only {len(values)} distinct values; a {self.levels}-level "
                f"telegraph needs {self.levels} (use --levels {len(values)})")
        gaps = np.diff(values)
        if not np.allclose(gaps, gaps[0], rtol=1e-6):
            raise NoisysimError(
                f"the trace takes {len(values)} values {values.tolist()} that are not "
                "equally spaced; it is not a telegraph of independent equal sources")
        states = np.rint((y - values[0]) / gaps[0]).astype(np.int64)
        return values, states

    def loglik(self, theta, y):
        offset, amplitude, sigma, p = theta
        trans, init = self._chain(p)
        if sigma == 0.0:
            disc = self._discrete_states(y)
            if disc is None:
                return -np.inf
            _, s = disc
            with np.errstate(divide="ignore"):
                counts = np.zeros((self.n + 1, self.n + 1))
                # (s[t, d], s[t + 1, d]) pairs: both ravel in the same order
                np.add.at(counts, (s[:-1].ravel(), s[1:].ravel()), 1.0)
                lt = np.where(counts > 0, np.log(trans), 0.0)
                return float((counts * lt).sum() + np.log(init[s[0]]).sum())
        means = self._levels(offset, amplitude)
        return float(sum(hmm_loglik(y[:, j], means, sigma, trans, init)
                         for j in range(y.shape[1])))

    def fit(self, y):
        disc = self._discrete_states(y)
        if disc is None:
            return super().fit(y)
        values, s = disc
        offset = 0.5 * (values[0] + values[-1])
        amplitude = 0.5 * (values[1] - values[0])
        flips = np.abs(np.diff(s, axis=0)).mean()
        p0 = float(np.clip(flips / self.n, 1e-4, 1 - 1e-4))
        theta0 = np.array([offset, amplitude, 0.0, p0])
        return maximise(lambda th: self.loglik(th, y), theta0, self.kinds,
                        [False, False, False, True], offset, amplitude, y.size, self.label())

    def acov(self, theta, nlags):
        out = self.n * theta[1] ** 2 * (1.0 - 2.0 * theta[3]) ** np.arange(nlags + 1)
        out[0] += theta[2] ** 2
        return out

    def pdf(self, theta, x):
        _, init = self._chain(theta[3])
        lv = self._levels(theta[0], theta[1])
        if theta[2] == 0.0:
            return lv, init  # a discrete distribution: (values, probabilities)
        return sum(w * stats.norm.pdf(x, m, theta[2]) for w, m in zip(init, lv))

    def noise(self, theta):
        offset, amplitude, sigma, p = map(float, theta)
        if sigma == 0.0:
            return TelegraphNoise(p_flip=p, amplitude=amplitude, offset=offset,
                                  n_sources=self.n)
        # SMTJNoise sums n sources of (mean + sigma_s z + amplitude s): n mean = offset and
        # sqrt(n) sigma_s = sigma.
        return SMTJNoise(p_flip=p, mean=offset / self.n, sigma=sigma / math.sqrt(self.n),
                         amplitude=amplitude, n_sources=self.n)


class SMTJ(Telegraph):
    """The two-level telegraph in the MTJ study's form: mean + amplitude s_t + sigma z_t."""

    name = "smtj"
    params = ("mean", "amplitude", "sigma", "p_flip")

    def __init__(self, levels=2):
        if levels != 2:
            raise NoisysimError(f"smtj has two levels, got levels={levels!r}; use "
                                "--model telegraph for more")
        super().__init__(2)

    def noise(self, theta):
        mean, amplitude, sigma, p = map(float, theta)
        return SMTJNoise(p_flip=p, mean=mean, sigma=sigma, amplitude=amplitude)


class Pink(Family):
    """1/f noise as noisysim's PinkNoise: fitted in the frequency domain.

    For each n_poles (1, 2, ...) sigma and base_tau maximise the Whittle likelihood of the
    Bartlett PSD (bins 0 < f < 1/2, each S(f) Gamma(m, 1/m) with S the exact expected
    periodogram, ``expected_bartlett_psd``); n_poles is the one with the largest, stopping
    where the slowest pole exceeds the segment (no longer resolved), the likelihood has
    fallen 10 below the best, or three fits in a row did not converge (a local search). mean is the sample
    mean, with standard error sqrt(S(0) / N) from the fitted spectrum at f = 0. The
    standard errors are conditional on the chosen n_poles (reported with SE 0).
    """

    name = "pink"
    params = ("mean", "sigma", "base_tau", "n_poles")
    kinds = ("loc", "scale", "time", "int")
    min_samples = 1024
    MAX_POLES = 12

    @staticmethod
    def nperseg(n):
        return int(min(2**16, max(64, 2 ** int(math.log2(n / 16)))))

    def _poles(self, theta):
        _, sigma, base_tau, n_poles = theta
        taus = base_tau * PinkNoise.RATIO ** np.arange(int(n_poles))
        return np.exp(-1.0 / taus), np.full(int(n_poles), sigma * sigma / n_poles)

    def acov(self, theta, nlags):
        d, v = self._poles(theta)
        return (v[None, :] * d[None, :] ** np.arange(nlags + 1)[:, None]).sum(axis=1)

    def loglik(self, theta, y):
        d, v = self._poles(theta)
        return float(sum(ar1_sum_loglik(y[:, j], theta[0], d, v) for j in range(y.shape[1])))

    def fit(self, y):
        L = self.nperseg(y.shape[0])
        f, p, m = bartlett_psd(y, L)
        band = slice(1, len(f) - 1)  # no DC (mean removed), no Nyquist (other distribution)

        def whittle(theta):
            s = expected_bartlett_psd(self.acov(theta, L - 1), L)[band]
            if np.any(s <= 0):
                return -np.inf
            return float(-m * (np.log(s) + p[band] / s).sum())

        best = None
        failed = 0
        mean, std = float(y.mean()), float(y.std())
        for n_poles in range(1, self.MAX_POLES + 1):
            theta0 = np.array([mean, std, 1.0, float(n_poles)])
            try:
                th, cov = maximise(whittle, theta0, self.kinds, [False, True, True, False],
                                   mean, std, m * len(f), self.label())
            except NoisysimError:
                failed += 1
                if failed == 3:
                    break
                continue
            failed = 0
            value = whittle(th)
            if best is None or value > best[0]:
                best = (value, th, cov)
            elif value < best[0] - 10.0:
                break  # clearly worse than fewer poles: more poles only fit the noise
            if th[2] * PinkNoise.RATIO ** (n_poles - 1) > L:
                break
        if best is None:
            maximise(whittle, np.array([mean, std, 1.0, 1.0]), self.kinds,
                     [False, True, True, False], mean, std, m * len(f), self.label())
        _, th, cov = best
        d, v = self._poles(th)
        long_run = float((v * (1 + d) / (1 - d)).sum())  # S(0) = sum_k c(k)
        cov[0, 0] = long_run / y.size
        return th, cov

    def n_free(self):
        return 4

    def pdf(self, theta, x):
        return stats.norm.pdf(x, theta[0], theta[1])

    def noise(self, theta):
        return PinkNoise(sigma=float(theta[1]), n_poles=int(theta[3]),
                         base_tau=float(theta[2]), mean=float(theta[0]))


FAMILIES = {"gaussian": Gaussian, "ou": OU, "telegraph": Telegraph, "smtj": SMTJ, "pink": Pink}


def make_family(name: str, levels: int = 2) -> Family:
    if name not in FAMILIES:
        raise NoisysimError(f"unknown model {name!r}; choose one of "
                            f"{', '.join(FAMILIES)} or auto")
    if name in ("telegraph", "smtj"):
        return FAMILIES[name](levels)
    return FAMILIES[name]()
