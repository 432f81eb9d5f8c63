"""Intrinsic noise of simulated devices, added to the pre-activations of chosen layers.

A model is built with ``make_noise(name, **params)`` and used by the device through two
calls::

    state = model.init_state(seed, layer, slots, width)    # dict of numpy arrays
    model.apply(a, times, state, seed, layer)              # a += noise, in place

``a`` has shape (P, B, N): P forward passes of a batch of B parallel copies of the hardware
("slots") with N nodes. One forward pass is one time step, and ``times`` (P,) int64 holds the
strictly increasing time of each pass. Every random number comes from the counter-based
generator ``noisysim.kernels.rng``: the noise of time t in layer l is drawn with
``key(seed, STREAM_NOISE, t, l)`` at element ``(slot * N + node) * n_sources + source``, so
it never depends on the thread count or on the batch size, and initial states use
``key(seed, STREAM_NOISE_INIT, 0, l)`` with the same element index.

Stateful models (telegraph, smtj, ou, pink) keep one state per (slot, node[, source]) and a
per-slot ``last_time`` (-1: never advanced; the initial state is the state at time -1). A
slot used at time t advances by n = t - last_time steps in one draw with the exact n-step
transition, so a layer that skips passes (gaps) still sees the right statistics; n = 0 (the
same time again) repeats the same noise. When a batch has more slots than the state, the
state grows and the new slots equal what ``init_state`` gives them (they are keyed by slot
index), so results never depend on the growth history.

=================  =========================================================  =============
name               value added to a (per slot, node and time step)            stateful
=================  =========================================================  =============
none               0                                                          no
gaussian           mean + sigma * z                                           no
bernoulli          offset + amplitude * sum_s Bernoulli(p)                    no
centred_bernoulli  amplitude * sum_s (Bernoulli(p) - p)                       no
telegraph          offset + amplitude * sum_s s_t,  s_t in {-1, +1}            yes
smtj               scale * sum_s (mean + sigma * z + amplitude * s_t)          yes
ou                 mean + x_t,  Ornstein-Uhlenbeck with std sigma, time tau    yes
pink               mean + sum of n_poles OU processes: 1/f spectrum, std sigma yes
multiplicative     a * sigma * z                                              no
trace              offset + scale * trace[index(t, slot, node)]               no
=================  =========================================================  =============

Models with a per-step switching probability (telegraph and smtj: p_flip; bernoulli and
centred_bernoulli: p) also take one per node, ``apply(..., node_p=p)`` with p (N,) in
[0, 1]: node n then switches with p[n] (device-to-device variability, drawn by
``noisysim.hardware.Variability``; centred_bernoulli stays centred on each node's own p).
The draws are the same; only the comparison u < p (or u < q_n) uses the node's value.

Units: the value is in the units of the pre-activation (dimensionless) except for smtj,
whose defaults are the voltages (V) of the measured device of the MTJ study (see each
class). Time is counted in passes (time steps) except where a model says otherwise.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import os

import numpy as np

from .errors import NoisysimError, check_choice, check_number
from .kernels import noise as _k
from .kernels import rng

__all__ = [
    "NoiseModel",
    "NoNoise",
    "GaussianNoise",
    "BernoulliNoise",
    "CentredBernoulliNoise",
    "TelegraphNoise",
    "SMTJNoise",
    "OUNoise",
    "PinkNoise",
    "MultiplicativeNoise",
    "TraceNoise",
    "NOISE_MODELS",
    "make_noise",
    "switching_probability",
]

_COUNTER_MAX = 2**63 - 1


class NoiseModel:
    """Base class: parameters are validated in ``__init__``; ``apply`` adds the noise.

    Subclasses set ``name`` and ``stateful`` and implement ``_apply`` (and, when stateful,
    ``_init_arrays``). Constructor arguments are stored under their own names, which is what
    ``params()`` returns.
    """

    name: str = ""
    stateful: bool = False

    def __init__(self):
        pass

    # -- public interface ------------------------------------------------------------------
    def init_state(self, seed, layer, slots, width) -> dict[str, np.ndarray]:
        """State of ``slots`` copies of a layer of ``width`` nodes (empty when stateless).

        Stateful models return ``last_time`` (slots,) int64 filled with -1 plus their
        process arrays; every array has the slot as its first axis.
        """
        seed, layer = _check_key(seed, layer)
        slots = check_number("slots", slots, 0, integer=True)
        width = check_number("width", width, 1, integer=True)
        if not self.stateful:
            return {}
        state = {"last_time": np.full(slots, -1, dtype=np.int64)}
        state.update(self._init_arrays(seed, layer, slots, width))
        return state

    def apply(self, a, times, state, seed, layer, node_p=None) -> None:
        """Add one noise sample per (pass, slot, node) to ``a`` in place.

        a: (P, B, N) C-contiguous float32/float64; times: (P,) strictly increasing int64
        pass times (>= 0); state: the dict from ``init_state`` (grown here when B exceeds its
        slots); seed, layer: the counters of the draws. node_p: None, or (N,) float64
        per-node switching probabilities in [0, 1] that replace the model's p_flip (or p)
        node by node (device-to-device variability; models with a switching probability
        only, see ``switching_probability``).
        """
        times = _check_apply(self.name, a, times)
        seed, layer = _check_key(seed, layer)
        if node_p is not None:
            node_p = _check_node_p(self, node_p, a.shape[2])
        if self.stateful:
            self._prepare_state(a, times, state, seed, layer)
        if a.size:
            self._apply(a, times, state, seed, layer, _NO_NODES if node_p is None else node_p)

    def params(self) -> dict:
        """JSON-able constructor arguments: make_noise(model.name, **model.params())."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: _jsonable(getattr(self, n)) for n in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.params() == other.params()

    def __hash__(self) -> int:
        return hash((type(self), repr(self)))

    # -- for subclasses ----------------------------------------------------------------------
    #: the parameter that is a per-step switching probability (None: the model has none)
    switching: str | None = None

    def _apply(self, a, times, state, seed, layer, node_p) -> None:  # pragma: no cover
        """a += noise; node_p (N,) float64: per-node switching probabilities, or empty (the
        model's own for every node)."""
        raise NotImplementedError

    def _init_arrays(self, seed, layer, slots, width) -> dict[str, np.ndarray]:
        return {}

    def _check(self, param, value, lo=None, hi=None, **kw):
        return check_number(f"{param} of {self.name} noise", value, lo, hi, **kw)

    def _prepare_state(self, a, times, state, seed, layer) -> None:
        n_slots, width = a.shape[1], a.shape[2]
        fresh = self.init_state(seed, layer, 0, width)
        if not isinstance(state, dict) or set(state) != set(fresh):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise NoisysimError(
                f"{self.name} noise state must hold {sorted(fresh)}, got {got}; "
                "pass the dict made by this model's init_state"
            )
        have = np.shape(state["last_time"])[0]
        for k, v in list(state.items()):
            v = np.asarray(v)
            if v.ndim != fresh[k].ndim or v.shape[0] != have or (
                    k != "last_time" and v.shape[1:] != (width,) + fresh[k].shape[2:]):
                raise NoisysimError(
                    f"{self.name} noise state {k!r} has shape {v.shape}, expected "
                    f"({have}, {width}, ...) for a layer of width {width}"
                )
            if (v is not state[k] or v.dtype != fresh[k].dtype or not v.flags.c_contiguous
                    or not v.flags.writeable):
                # e.g. restored from a checkpoint with another dtype: keep the kernels'
                # types fixed (one compilation) and the memory layout they index.
                state[k] = np.array(v, dtype=fresh[k].dtype, order="C")
        if n_slots > have:
            new = self.init_state(seed, layer, n_slots, width)
            for k in state:
                state[k] = np.concatenate([state[k], new[k][have:]])
        last = int(state["last_time"][:n_slots].max()) if n_slots and times.size else -1
        if times.size and times[0] < last:
            raise NoisysimError(
                f"{self.name} noise in layer {layer}: pass time {int(times[0])} is before the "
                f"state's last time {last}; time must not go backwards (restore an earlier "
                "state to replay)"
            )


#: node_p of the kernels when every node uses the model's own switching probability
_NO_NODES = np.empty(0, dtype=np.float64)


def switching_probability(model) -> float | None:
    """The model's per-step switching probability (p_flip of telegraph and smtj, p of
    bernoulli and centred_bernoulli), the one ``node_p`` replaces; None for other models."""
    return None if model.switching is None else float(getattr(model, model.switching))


def _check_node_p(model, node_p, width) -> np.ndarray:
    if model.switching is None:
        raise NoisysimError(
            f"{model.name} noise has no switching probability to vary per node; node_p "
            "applies to telegraph, smtj, bernoulli and centred_bernoulli noise")
    p = np.ascontiguousarray(node_p, dtype=np.float64)
    if p.shape != (width,) or not np.all((p >= 0.0) & (p <= 1.0)):
        raise NoisysimError(
            f"{model.name} noise: node_p must be {width} probabilities in [0, 1] (one per "
            f"node), got shape {p.shape}" + (f" with values in [{p.min():g}, {p.max():g}]"
                                               if p.size else ""))
    return p


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v


def _check_key(seed, layer) -> tuple[int, int]:
    seed = check_number("seed", seed, 0, _COUNTER_MAX, integer=True)
    layer = check_number("layer", layer, 0, _COUNTER_MAX, integer=True)
    return seed, layer


def _check_apply(name, a, times) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.ndim != 3:
        got = a.shape if isinstance(a, np.ndarray) else type(a).__name__
        raise NoisysimError(
            f"{name} noise: a must be a (passes, batch, nodes) array, got {got}"
        )
    if a.dtype not in (np.float32, np.float64):
        raise NoisysimError(f"{name} noise: a must be float32 or float64, got {a.dtype}")
    if not a.flags.c_contiguous or not a.flags.writeable:
        raise NoisysimError(
            f"{name} noise: a must be a writeable C-contiguous array (it is modified in "
            "place); use np.ascontiguousarray"
        )
    times = np.asarray(times)
    if times.shape != (a.shape[0],) or not (
        times.dtype.kind in "iu" or (times.size == 0 and times.dtype.kind == "f")
    ):
        raise NoisysimError(
            f"{name} noise: times must be {a.shape[0]} integers (one per pass), got "
            f"{times.dtype} array of shape {times.shape}"
        )
    times = np.ascontiguousarray(times, dtype=np.int64)
    if times.size and (times[0] < 0 or np.any(np.diff(times) <= 0)):
        raise NoisysimError(
            f"{name} noise: times must be non-negative and strictly increasing, got "
            f"{times.tolist() if times.size <= 8 else times}"
        )
    return times


# ==================================================================================== models


class NoNoise(NoiseModel):
    """No intrinsic noise: ``apply`` leaves ``a`` bit-identical."""

    name = "none"

    def _apply(self, a, times, state, seed, layer, node_p) -> None:
        pass


class GaussianNoise(NoiseModel):
    """White Gaussian noise, independent across slots, nodes and time steps.

        value = mean + sigma * z,   z ~ N(0, 1)

    sigma >= 0 and mean are in the units of the pre-activation.
    """

    name = "gaussian"

    def __init__(self, sigma, mean=0.0):
        self.sigma = self._check("sigma", sigma, 0.0)
        self.mean = self._check("mean", mean)

    def _apply(self, a, times, state, seed, layer, node_p) -> None:
        _k.pick(_k.gaussian_apply, a.size)(a, times, seed, layer, self.mean, self.sigma, False)


class MultiplicativeNoise(NoiseModel):
    """Signal-dependent white noise: the pre-activation is scaled by a random gain.

        a_tilde = a + a * sigma * z,   z ~ N(0, 1)

    sigma >= 0 is the relative (dimensionless) std; a node at a = 0 stays noise-free.
    """

    name = "multiplicative"

    def __init__(self, sigma):
        self.sigma = self._check("sigma", sigma, 0.0)

    def _apply(self, a, times, state, seed, layer, node_p) -> None:
        _k.pick(_k.gaussian_apply, a.size)(a, times, seed, layer, 0.0, self.sigma, True)


class BernoulliNoise(NoiseModel):
    """Non-centred binary noise from n_sources independent sources per node.

        value = offset + amplitude * sum_{s < n_sources} b_s,   b_s ~ Bernoulli(p)

    mean = offset + amplitude * n_sources * p, variance = amplitude^2 n_sources p (1 - p).
    The MTJ study used one source with values {0, 0.0125} (amplitude=0.0125). amplitude may
    be negative (a device that pulls down); p in [0, 1]; n_sources >= 1.
    """

    name = "bernoulli"
    switching = "p"

    def __init__(self, p, amplitude, n_sources=1, offset=0.0):
        self.p = self._check("p", p, 0.0, 1.0)
        self.amplitude = self._check("amplitude", amplitude)
        self.n_sources = self._check("n_sources", n_sources, 1, integer=True)
        self.offset = self._check("offset", offset)

    def _apply(self, a, times, state, seed, layer, node_p) -> None:
        _k.pick(_k.bernoulli_apply, a.size)(a, times, seed, layer, self.p, self.amplitude, self.offset,
                           self.n_sources, False, node_p)


class CentredBernoulliNoise(NoiseModel):
    """Zero-mean binary noise from n_sources independent sources per node.

        value = amplitude * sum_{s < n_sources} (b_s - p),   b_s ~ Bernoulli(p)

    mean 0, variance amplitude^2 n_sources p (1 - p); p != 1/2 gives skewed noise.
    """

    name = "centred_bernoulli"
    switching = "p"

    def __init__(self, p, amplitude, n_sources=1):
        self.p = self._check("p", p, 0.0, 1.0)
        self.amplitude = self._check("amplitude", amplitude)
        self.n_sources = self._check("n_sources", n_sources, 1, integer=True)

    def _apply(self, a, times, state, seed, layer, node_p) -> None:
        _k.pick(_k.bernoulli_apply, a.size)(a, times, seed, layer, self.p, self.amplitude, 0.0,
                           self.n_sources, True, node_p)


class _TelegraphBase(NoiseModel):
    stateful = True
    switching = "p_flip"

    def _init_arrays(self, seed, layer, slots, width):
        # Random initial sign: the stationary distribution, so every time is stationary.
        u = rng.uniform_array(seed, rng.STREAM_NOISE_INIT, 0, layer,
                              (slots, width, self.n_sources))
        return {"spin": np.where(u < 0.5, np.int8(-1), np.int8(1)).astype(np.int8)}


class TelegraphNoise(_TelegraphBase):
    """Random telegraph noise: n_sources two-state fluctuators per node.

        value = offset + amplitude * sum_{s < n_sources} s_t,   s_t in {-1, +1}

    Each state starts with a random sign and flips with probability p_flip per time step,
    carried across passes; over n steps it flips with probability (1 - (1 - 2 p_flip)^n) / 2.
    Stationary mean offset, variance amplitude^2 n_sources, autocorrelation
    (1 - 2 p_flip)^lag, dwell times geometric with mean 1 / p_flip steps.
    State: ``spin`` (slots, N, n_sources) int8 and ``last_time`` (slots,) int64.
    """

    name = "telegraph"

    def __init__(self, p_flip, amplitude, offset=0.0, n_sources=1):
        self.p_flip = self._check("p_flip", p_flip, 0.0, 1.0)
        self.amplitude = self._check("amplitude", amplitude, 0.0)
        self.offset = self._check("offset", offset)
        self.n_sources = self._check("n_sources", n_sources, 1, integer=True)

    def _apply(self, a, times, state, seed, layer, node_p) -> None:
        _k.pick(_k.telegraph_apply, a.size)(a, times, state["last_time"], state["spin"], seed, layer,
                           self.p_flip, self.amplitude, self.offset, 0.0, 1.0, False, node_p)


class SMTJNoise(_TelegraphBase):
    """Simulated stochastic magnetic tunnel junction (one independent device per source).

        value = scale * sum_{s < n_sources} (mean + sigma * z + amplitude * s_t)

    z ~ N(0, 1) fresh each step (thermal part), s_t a telegraph state flipping with
    probability p_flip per step. The defaults were fitted to a measured device in the MTJ
    study: mean 0.042092104 V, sigma 0.00090841466 V, amplitude 0.0059316154 V,
    p_flip 0.0809; ``scale`` converts volts to pre-activation units (1.0: volts as they are).
    Stationary mean scale * n_sources * mean, variance
    scale^2 n_sources (sigma^2 + amplitude^2). State as for telegraph.
    """

    name = "smtj"

    def __init__(self, p_flip=0.0809, mean=0.042092104, sigma=0.00090841466,
                 amplitude=0.0059316154, scale=1.0, n_sources=1):
        self.p_flip = self._check("p_flip", p_flip, 0.0, 1.0)
        self.mean = self._check("mean", mean)
        self.sigma = self._check("sigma", sigma, 0.0)
        self.amplitude = self._check("amplitude", amplitude, 0.0)
        self.scale = self._check("scale", scale)
        self.n_sources = self._check("n_sources", n_sources, 1, integer=True)

    def _apply(self, a, times, state, seed, layer, node_p) -> None:
        _k.pick(_k.telegraph_apply, a.size)(a, times, state["last_time"], state["spin"], seed, layer,
                           self.p_flip, self.amplitude, self.n_sources * self.mean,
                           self.sigma, self.scale, True, node_p)


class _OUBase(NoiseModel):
    """Sum of K independent OU processes per node with (host-computed) constants
    decay_k = exp(-dt / tau_k), c1_k = 1 - decay_k^2 = -expm1(-2 dt / tau_k), std_k."""

    stateful = True

    def _poles(self) -> tuple[np.ndarray, np.ndarray]:  # (tau in units of dt, std) per pole
        raise NotImplementedError

    @functools.cached_property
    def _constants(self):
        # Transcendentals on the host (the kernels use only + - * / sqrt).
        steps, std = self._poles()
        decay = np.array([math.exp(-1.0 / s) for s in steps])
        c1 = np.array([-math.expm1(-2.0 / s) for s in steps])
        return decay, c1, np.asarray(std, dtype=np.float64)

    def _init_arrays(self, seed, layer, slots, width):
        # Stationary start: x_k ~ N(0, std_k^2).
        _, std = self._poles()
        z = rng.normal_array(seed, rng.STREAM_NOISE_INIT, 0, layer, (slots, width, len(std)))
        return {"x": z * np.asarray(std, dtype=np.float64)}

    def _apply(self, a, times, state, seed, layer, node_p) -> None:
        decay, c1, std = self._constants
        _k.pick(_k.ou_apply, a.size)(a, times, state["last_time"], state["x"], seed, layer, decay, c1, std,
                    self.mean)


class OUNoise(_OUBase):
    """Ornstein-Uhlenbeck (coloured, exponentially correlated) Gaussian noise per node.

        value = mean + x_t,   x_{t+n} = d^n x_t + sigma sqrt(1 - d^(2n)) z,   d = exp(-dt/tau)

    the exact discretisation of dx = -x/tau dt + sigma sqrt(2/tau) dW with one pass lasting
    dt (tau and dt in the same time unit). Stationary std sigma, autocorrelation
    exp(-|lag| dt / tau); the initial state is drawn from the stationary N(0, sigma^2).
    State: ``x`` (slots, N, 1) float64 and ``last_time`` (slots,) int64.
    """

    name = "ou"

    def __init__(self, tau, sigma, dt=1.0, mean=0.0):
        self.tau = self._check("tau", tau, 0.0, lo_open=True)
        self.sigma = self._check("sigma", sigma, 0.0)
        self.dt = self._check("dt", dt, 0.0, lo_open=True)
        self.mean = self._check("mean", mean)

    def _poles(self):
        return np.array([self.tau / self.dt]), np.array([self.sigma])


class PinkNoise(_OUBase):
    """1/f (pink) Gaussian noise as a sum of n_poles OU processes per node.

        value = mean + sum_k x_k,   x_k OU with correlation time tau_k = base_tau * 4^k
                                    (in passes) and std sigma / sqrt(n_poles)

    Each OU term has a Lorentzian spectrum 2 v tau / (1 + (2 pi f tau)^2); equal variances
    on log-spaced tau sum to a spectrum close to 1/f for 1/(2 pi tau_max) << f <<
    1/(2 pi tau_min) (log-log slope within a few percent of -1; 8 poles span about four
    decades). Overall stationary std sigma; state ``x`` (slots, N, n_poles) float64 and
    ``last_time``.
    """

    name = "pink"
    RATIO = 4.0  # ratio of consecutive correlation times

    def __init__(self, sigma, n_poles=8, base_tau=1.0, mean=0.0):
        self.sigma = self._check("sigma", sigma, 0.0)
        self.n_poles = self._check("n_poles", n_poles, 1, 24, integer=True)
        self.base_tau = self._check("base_tau", base_tau, 0.0, lo_open=True)
        self.mean = self._check("mean", mean)

    def _poles(self):
        taus = self.base_tau * self.RATIO ** np.arange(self.n_poles)
        return taus, np.full(self.n_poles, self.sigma / math.sqrt(self.n_poles))


class TraceNoise(NoiseModel):
    """Replay of a recorded 1-D time series (e.g. a measured device voltage).

        value = offset + scale * trace[i],   i = t mod L                      (mode "shared")
                                             i = (d * segment + t) mod L      (mode "per_node")

    with L the trace length, t the pass time and d = slot * N + node the device index:
    "shared" gives every node the same sample, "per_node" gives each device its own
    stretch (segment defaults to max(1, L // N), so the N nodes of a slot tile the trace;
    slot k > 0 then replays slot 0 shifted by k * N * segment). Both wrap at the end.

    Source: ``data`` (an array), or ``path`` to a .npy file, or an .h5/.hdf5 (or .npz) file
    with ``dataset`` naming the array inside. The trace is loaded (and checked: non-empty,
    1-D, finite) when the model is made. ``sha256`` (optional) must match the float64 bytes
    of the trace; ``params()`` reports it so a trajectory records which trace was used.
    """

    name = "trace"

    def __init__(self, path=None, data=None, dataset=None, mode="shared", scale=1.0,
                 offset=0.0, segment=None, sha256=None):
        self.mode = check_choice("mode of trace noise", mode, ("shared", "per_node"))
        self.scale = self._check("scale", scale)
        self.offset = self._check("offset", offset)
        self.segment = (None if segment is None
                        else self._check("segment", segment, 1, integer=True))
        if (path is None) == (data is None):
            raise NoisysimError(
                "trace noise needs exactly one source: path= (a .npy/.h5/.npz file) or "
                f"data= (an array), got path={path!r} and "
                f"{'no data' if data is None else 'data'}"
            )
        self.path = None if path is None else os.fspath(path)
        self.dataset = dataset
        if path is not None:
            trace, where = _load_trace(self.path, dataset), repr(self.path)
            if dataset is not None:
                where += f" dataset {dataset!r}"
        else:
            if dataset is not None:
                raise NoisysimError("trace noise: dataset= only applies to a path, not data=")
            trace, where = data, "data"
        self.trace = _check_trace(trace, where)
        digest = hashlib.sha256(self.trace.tobytes()).hexdigest()
        if sha256 is not None and sha256 != digest:
            raise NoisysimError(
                f"trace {where}: sha256 {digest} does not match the expected {sha256}; "
                "the file changed since it was recorded"
            )
        self.sha256 = digest

    def params(self) -> dict:
        # The data itself is not recorded (it can be large); sha256 identifies it.
        return {"path": self.path, "data": None, "dataset": self.dataset, "mode": self.mode,
                "scale": self.scale, "offset": self.offset, "segment": self.segment,
                "sha256": self.sha256}

    def _apply(self, a, times, state, seed, layer, node_p) -> None:
        # Plain numpy (no draws, memory-bound): one float64 value per (pass, device), added
        # with a single rounding to a's dtype like the kernels do.
        length = self.trace.shape[0]
        n_pass, n_slots, width = a.shape
        t = (times % length)[:, None]
        if self.mode == "per_node":
            segment = self.segment if self.segment is not None else max(1, length // width)
            d = np.arange(n_slots * width, dtype=np.int64)
            idx = ((d % length) * (segment % length) + t) % length
        else:
            idx = t  # (P, 1): broadcast over the devices
        values = self.offset + self.scale * self.trace[idx]
        a2 = a.reshape(n_pass, n_slots * width)
        np.add(a2, values, out=a2, casting="unsafe")


def _load_trace(path: str, dataset):
    if not os.path.isfile(path):
        raise NoisysimError(f"trace file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        if dataset is not None:
            raise NoisysimError(f"trace file {path!r} is .npy: it has no dataset {dataset!r}")
        try:
            return np.load(path, allow_pickle=False)
        except Exception as exc:
            raise NoisysimError(f"trace file {path!r} is not a readable .npy: {exc}") from None
    if ext in (".h5", ".hdf5", ".npz"):
        if dataset is None:
            raise NoisysimError(
                f"trace file {path!r}: give dataset= naming the array to replay"
            )
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as f:
                if dataset not in f.files:
                    raise NoisysimError(
                        f"trace file {path!r} has no dataset {dataset!r}; it has "
                        f"{', '.join(map(repr, f.files)) or 'none'}"
                    )
                return f[dataset]
        import h5py

        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise NoisysimError(f"trace file {path!r} is not a readable HDF5 file: {exc}") from None
        with f:
            obj = f.get(dataset)
            if not isinstance(obj, h5py.Dataset):
                names = []
                f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
                raise NoisysimError(
                    f"trace file {path!r} has no dataset {dataset!r}; it has "
                    f"{', '.join(map(repr, names)) or 'none'}"
                )
            return obj[()]
    raise NoisysimError(
        f"trace file {path!r}: unsupported format {ext!r}; use .npy, .h5/.hdf5 or .npz"
    )


def _check_trace(trace, where: str) -> np.ndarray:
    try:
        arr = np.asarray(trace, dtype=np.float64)
    except (TypeError, ValueError):
        raise NoisysimError(f"trace {where} must be numeric, got {trace!r:.60}") from None
    if arr.size == 0:
        raise NoisysimError(f"trace {where} is empty: it needs at least one sample")
    if sum(d > 1 for d in arr.shape) > 1:
        raise NoisysimError(f"trace {where} must be a 1-D series, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr.reshape(-1))
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise NoisysimError(
            f"trace {where} contains {float(arr[bad[0]])!r} at index {int(bad[0])} "
            f"({bad.size} non-finite samples); clean the recording first"
        )
    return arr


# ================================================================================= registry

NOISE_MODELS: dict[str, type] = {
    cls.name: cls
    for cls in (NoNoise, GaussianNoise, BernoulliNoise, CentredBernoulliNoise, TelegraphNoise,
                SMTJNoise, OUNoise, PinkNoise, MultiplicativeNoise, TraceNoise)
}


def make_noise(name: str, **params) -> NoiseModel:
    """The noise model ``name`` with ``params``; unknown names or parameters are refused
    with a message listing the valid ones."""
    check_choice("noise model", name, NOISE_MODELS)
    cls = NOISE_MODELS[name]
    sig = inspect.signature(cls.__init__)
    valid = [p for p in sig.parameters if p != "self"]
    unknown = [p for p in params if p not in valid]
    if unknown:
        raise NoisysimError(
            f"{name} noise has no parameter {', '.join(map(repr, unknown))}; valid: "
            f"{', '.join(valid) or 'none'}"
        )
    missing = [p for p in valid if sig.parameters[p].default is inspect.Parameter.empty
               and p not in params]
    if missing:
        raise NoisysimError(
            f"{name} noise needs {', '.join(map(repr, missing))}; valid parameters: "
            f"{', '.join(valid)}"
        )
    return cls(**params)
