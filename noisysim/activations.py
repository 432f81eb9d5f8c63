"""Activation functions of simulated nodes, continuous and discontinuous.

Each activation is an ``Activation``: a name, its parameters, and three faces:

- ``forward(a)``: the node's response x = f(a);
- ``derivative(a)``: the true derivative, zero wherever f is flat (so step, sign and
  quantize have derivative 0 almost everywhere, and plain BP cannot learn through them);
- ``surrogate(a)``: a straight-through surrogate for the BP reference (equal to the true
  derivative for continuous activations).

=================  ======================================  ===================================
name               f(a)                                    surrogate derivative
=================  ======================================  ===================================
identity           a                                       1
relu               max(a, 0)                               1[a > 0]
leaky_relu(slope)  a if a > 0 else slope * a (0.01)        1 or slope
tanh               tanh(a)                                 1 - tanh(a)^2
sigmoid            1 / (1 + exp(-a))                       s (1 - s)
hardtanh(lo, hi)   clip(a, lo, hi)  (-1, 1)                1[lo < a < hi]
step(threshold)    1[a > threshold]  (0)                   1[|a - threshold| <= 1/2]
sign               +1 if a >= 0 else -1                    1[|a| <= 1]
quantize(levels,   nearest of `levels` equispaced values   1[lo <= a <= hi]
         lo, hi)   in [lo, hi] after clipping (4, 0, 1)
binary_stochastic  Bernoulli(sigmoid(a)), drawn from the   s (1 - s) (derivative of the mean)
                   device generator (stream ACTIVATION)    true derivative: 0
table(path,        a measured transfer curve: (input,      mean slope (y_n - y_0)/(x_n - x_0)
  interpolation)   output) pairs from a CSV or .npy file,  inside [x_0, x_n], 0 outside;
                   interpolated linearly ("linear") or by  true derivative: the segment's
                   scipy's monotone PCHIP ("pchip",        slope
                   resampled on 4096 points, then linear);
                   constant beyond the measured range
=================  ======================================  ===================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import NoisysimError, check_choice, check_number
from .kernels import cpu
from .kernels import hardware as _hw


@dataclass(frozen=True)
class _Spec:
    code: int
    defaults: dict
    continuous: bool


_SPECS: dict[str, _Spec] = {
    "identity": _Spec(cpu.IDENTITY, {}, True),
    "relu": _Spec(cpu.RELU, {}, True),
    "leaky_relu": _Spec(cpu.LEAKY_RELU, {"slope": 0.01}, True),
    "tanh": _Spec(cpu.TANH, {}, True),
    "sigmoid": _Spec(cpu.SIGMOID, {}, True),
    "hardtanh": _Spec(cpu.HARDTANH, {"lo": -1.0, "hi": 1.0}, True),
    "step": _Spec(cpu.STEP, {"threshold": 0.0}, False),
    "sign": _Spec(cpu.SIGN, {}, False),
    "quantize": _Spec(cpu.QUANTIZE, {"levels": 4, "lo": 0.0, "hi": 1.0}, False),
    "binary_stochastic": _Spec(cpu.BINARY_STOCHASTIC, {}, False),
    # a measured curve (noisysim.kernels.hardware.table_*): never reaches activation_scalar
    "table": _Spec(-1, {"path": None, "interpolation": "linear"}, True),
}
TABLE_INTERPOLATIONS = ("linear", "pchip")
_PCHIP_POINTS = 4096

ACTIVATIONS = tuple(_SPECS)


@dataclass(frozen=True)
class Activation:
    """A node nonlinearity; build it with ``make_activation``."""

    name: str
    params: dict = field(default_factory=dict)
    #: activation "table": the sorted (xs, ys) float64 arrays the kernels interpolate
    table: tuple | None = field(default=None, compare=False, repr=False)

    @property
    def code(self) -> int:
        return _SPECS[self.name].code

    @property
    def continuous(self) -> bool:
        """False for step, sign, quantize and binary_stochastic."""
        return _SPECS[self.name].continuous

    @property
    def stochastic(self) -> bool:
        return self.name == "binary_stochastic"

    @property
    def kernel_params(self) -> tuple[float, float, float]:
        """The three float parameters the kernels take, in the order the code expects."""
        p = self.params
        if self.name == "leaky_relu":
            return float(p["slope"]), 0.0, 0.0
        if self.name == "hardtanh":
            return float(p["lo"]), float(p["hi"]), 0.0
        if self.name == "step":
            return float(p["threshold"]), 0.0, 0.0
        if self.name == "quantize":
            return float(p["levels"]), float(p["lo"]), float(p["hi"])
        return 0.0, 0.0, 0.0

    def apply(self, a: np.ndarray, out: np.ndarray, seed: int = 0, layer: int = 0,
              times: np.ndarray | None = None) -> np.ndarray:
        """out = f(a) for stacked passes a: (P, B, N); ``times`` keys stochastic draws."""
        if self.table is not None:
            _hw.table_forward(a.reshape(-1, a.shape[-1]), out.reshape(-1, a.shape[-1]),
                              *self.table)
            return out
        if times is None:
            times = np.zeros(a.shape[0], dtype=np.int64)
        cpu.activation_forward(a, out, self.code, *self.kernel_params, np.uint64(seed),
                               np.uint64(layer), times.astype(np.uint64))
        return out

    def forward(self, a: np.ndarray, seed: int = 0, layer: int = 0, time: int = 0) -> np.ndarray:
        """f(a) for a (B, N) or (N,) array (stochastic draws keyed by seed, layer, time)."""
        a3 = np.ascontiguousarray(a).reshape(1, -1, a.shape[-1] if a.ndim else 1)
        out = np.empty_like(a3)
        self.apply(a3, out, seed, layer, np.array([time], dtype=np.int64))
        return out.reshape(a.shape)

    def derivative(self, a: np.ndarray) -> np.ndarray:
        """The true derivative f'(a), zero where f is flat."""
        return self._derivative(a, cpu.TRUE_DERIVATIVE)

    def surrogate(self, a: np.ndarray) -> np.ndarray:
        """The straight-through surrogate derivative (see the module table)."""
        return self._derivative(a, cpu.STRAIGHT_THROUGH)

    def backprop(self, g: np.ndarray, a: np.ndarray, surrogate: bool = False) -> np.ndarray:
        """g * f'(a) (or the surrogate), computed in place in g (C-contiguous, (B, N) or
        (N,), a float dtype); returns g."""
        if not (g.flags.c_contiguous and g.flags.writeable):
            raise NoisysimError("backprop needs a writable C-contiguous g (it works in place); "
                                "pass np.ascontiguousarray(g)")
        g2 = g.reshape(-1, g.shape[-1] if g.ndim else 1)
        a2 = np.ascontiguousarray(a, dtype=g.dtype).reshape(g2.shape)
        mode = cpu.STRAIGHT_THROUGH if surrogate else cpu.TRUE_DERIVATIVE
        if self.table is not None:
            _hw.table_derivative(a2, g2, *self.table, bool(surrogate), g2, True)
            return g
        cpu.multiply_by_derivative(g2, a2, self.code, *self.kernel_params, mode)
        return g

    def _derivative(self, a: np.ndarray, mode: int) -> np.ndarray:
        a2 = np.ascontiguousarray(a).reshape(-1, a.shape[-1] if a.ndim else 1)
        out = np.empty_like(a2)
        if self.table is not None:
            _hw.table_derivative(a2, out, *self.table, mode == cpu.STRAIGHT_THROUGH, out,
                                 False)
            return out.reshape(a.shape)
        cpu.activation_derivative(a2, out, self.code, *self.kernel_params, mode)
        return out.reshape(a.shape)


def activation_params(name: str) -> tuple[str, ...]:
    """The parameter names an activation accepts."""
    return tuple(_SPECS[name].defaults)


def make_activation(name: str | Activation, **params) -> Activation:
    """Build an activation by name, validating its parameters.

    >>> make_activation("leaky_relu", slope=0.1).params
    {'slope': 0.1}
    """
    if isinstance(name, Activation):
        return name
    check_choice("activation", name, ACTIVATIONS)
    spec = _SPECS[name]
    unknown = set(params) - set(spec.defaults)
    if unknown:
        valid = ", ".join(spec.defaults) or "none"
        raise NoisysimError(
            f"activation {name!r} has no parameter {sorted(unknown)[0]!r}; valid parameters: {valid}"
        )
    merged = {**spec.defaults, **params}
    if name == "leaky_relu":
        merged["slope"] = check_number("leaky_relu slope", merged["slope"], 0.0, 1.0)
    elif name == "hardtanh":
        merged["lo"] = check_number("hardtanh lo", merged["lo"])
        merged["hi"] = check_number("hardtanh hi", merged["hi"], lo=merged["lo"], lo_open=True,
                                    hint="hi must exceed lo")
    elif name == "step":
        merged["threshold"] = check_number("step threshold", merged["threshold"])
    elif name == "quantize":
        merged["levels"] = check_number("quantize levels", merged["levels"], 2, None, integer=True)
        merged["lo"] = check_number("quantize lo", merged["lo"])
        merged["hi"] = check_number("quantize hi", merged["hi"], lo=merged["lo"], lo_open=True,
                                    hint="hi must exceed lo")
    elif name == "table":
        merged["interpolation"] = check_choice("table interpolation", merged["interpolation"],
                                               TABLE_INTERPOLATIONS)
        if not isinstance(merged["path"], str):
            raise NoisysimError(
                "activation 'table' needs path = the CSV or .npy file of (input, output) "
                f"pairs, got {merged['path']!r}")
        return Activation(name, merged, load_table(merged["path"], merged["interpolation"]))
    return Activation(name, merged)


def load_table(path: str, interpolation: str = "linear") -> tuple[np.ndarray, np.ndarray]:
    """The (xs, ys) float64 arrays of a measured transfer curve: a .npy array or a CSV
    (comma-separated, ``#`` comments, an optional header line) of N >= 2 rows (input,
    output), sorted by input; inputs must be distinct. ``pchip``: scipy's monotone cubic
    interpolant sampled on 4096 equispaced inputs plus the measured ones (the kernels
    then interpolate linearly between those)."""
    try:
        if path.endswith(".npy"):
            data = np.load(path)
        else:
            try:
                data = np.loadtxt(path, delimiter=",", comments="#", ndmin=2)
            except ValueError:  # a header line
                data = np.loadtxt(path, delimiter=",", comments="#", ndmin=2, skiprows=1)
    except (OSError, ValueError) as exc:
        raise NoisysimError(f"activation table {path!r} cannot be read: {exc}; expected a "
                            "CSV or .npy file of (input, output) rows") from None
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != 2 or data.shape[0] < 2:
        raise NoisysimError(f"activation table {path!r} must hold N >= 2 rows of (input, "
                            f"output), got an array of shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise NoisysimError(f"activation table {path!r} holds non-finite values; remove them")
    data = data[np.argsort(data[:, 0], kind="stable")]
    xs, ys = np.ascontiguousarray(data[:, 0]), np.ascontiguousarray(data[:, 1])
    if np.any(np.diff(xs) == 0):
        raise NoisysimError(f"activation table {path!r} lists an input twice "
                            f"({xs[np.flatnonzero(np.diff(xs) == 0)[0]]!r}); average the "
                            "repeated measurements first")
    if interpolation == "pchip":
        from scipy.interpolate import PchipInterpolator

        dense = np.union1d(np.linspace(xs[0], xs[-1], _PCHIP_POINTS), xs)
        xs, ys = dense, PchipInterpolator(xs, ys)(dense)
    return xs, ys
