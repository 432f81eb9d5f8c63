"""Hardware non-idealities beyond intrinsic node noise: what the learner measures through,
and what the weights do when the optimiser asks them to change.

``Readout`` -- the measurement channel. On hardware the learning rules see activities and
losses through a read-out (a sense amplifier, an ADC), which is not the device's intrinsic
noise: the network's forward computation is unchanged, but every value the rules receive in
``Measurement.pre`` and ``Measurement.losses`` is

    y = Q(v + std * z),  z ~ N(0, 1) drawn at key (seed, STREAM_READOUT, pass time, layer)
                         (layer = L for the losses), element b * N + j
    Q = ADC of 2^bits levels over [lo, hi] (round to the nearest level, clamp at the ends;
        bits = 0: no ADC)

(``noisysim.kernels.hardware`` states the arithmetic). The inputs x* of the weight update and
the network outputs are not passed through it; BP takes its derivatives at the measured
pre-activations. The training rows' ``loss`` and ``loss_change_*`` are the measured losses
(what the hardware reports); evaluation and the alignment oracle use the network itself. With the defaults (no noise, no ADC) nothing is applied, and trajectories
are those of a device without a read-out, bit for bit.

``WeightDevice`` -- non-ideal weight updates (memristors, PCM, floating gates). The
optimiser (SGD or Adam) proposes W_new; the device applies the change d = W_new - W in
pulses of a finite step between bounds [lo, hi] (``states`` levels), up and down steps
differing by the asymmetry a, each write adding noise; "soft_bounds" steps shrink near the
bounds. Biases are held in digital periphery and updated ideally. The initial weights are
programmed onto the device (clamped, and snapped to its states for a symmetric noise-free
constant-step device). Each step counts the writes (weights that received >= 1 pulse) and
the clipped amount (sum of |requested - bounded| change) in the trajectory's rows
(``weight_writes``, ``weight_clipped``).

``Variability`` -- device-to-device variability (fixed-pattern noise). Every physical node
differs, and ``noise.variability`` holds every per-node parameter that is drawn once from the
run's key and then fixed (element i = node i of layer l, z_i ~ N(0, 1)):

    amplitude = s_a: node i's intrinsic noise value carries a factor g_i = F(s_a, z_i), drawn
        at key (seed, STREAM_VARIABILITY, 0, l); the noise of node i at every time step is
        g_i times the model's value (its offset included)
    p_flip = s_p: node i's switching probability (p_flip of telegraph / smtj noise, p of
        bernoulli / centred_bernoulli noise) is p_i = min(1, p F(s_p, z_i)), drawn at key
        (seed, STREAM_VARIABILITY, 1, l)
    gain = s_g, offset = s_o: node i computes x_i = f(gain_i a_i + offset_i) from its
        pre-activation a_i (noise included), with gain_i = F(s_g, z_i) at key
        (seed, STREAM_VARIABILITY, 2, l) and offset_i = s_o z_i at key
        (seed, STREAM_VARIABILITY, 3, l) (offset in pre-activation units; every layer,
        the output layer included). BP and the forward gradient differentiate the device:
        d x_i / d a_i = gain_i f'(gain_i a_i + offset_i) (``NodeVariation``); the
        perturbation rules never read gain or offset, they see only measured values.

with the relative spread s mapped to a factor of mean 1 by the distribution F:

    lognormal (default): F(s, z) = exp(s z - s^2 / 2)   (positive, relative std
                                                          sqrt(exp(s^2) - 1) ~ s)
    normal:              F(s, z) = max(0, 1 + s z)

Each draw has its own counter of STREAM_VARIABILITY, so adding one spread leaves the others'
values unchanged. The per-node values are saved with the device state (checkpoints in the
trajectory). All spreads 0 (the default): nothing is drawn or applied.

Theory of the asymmetric constant-step device (tested): under symmetric proposals d = +-Delta
with probability 1/2 each (one pulse each), a weight away from its bounds moves by
+Delta (1 + a) or -Delta (1 - a): drift E[dw] = a Delta per step, variance Delta^2 per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .errors import NoisysimError, check_choice, check_number
from .kernels import hardware as _hw
from .kernels import rng

WEIGHT_DEVICES = ("ideal", "constant_step", "soft_bounds")
#: the [optimizer] config keys that describe the weight device ("device" is ``kind``)
WEIGHT_DEVICE_KEYS = ("device", "states", "bounds", "asymmetry", "write_noise")
_KIND_CODES = {"constant_step": _hw.CONSTANT_STEP, "soft_bounds": _hw.SOFT_BOUNDS}


def _check_range(name: str, value) -> tuple[float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2):
        raise NoisysimError(f"{name} must be a pair [lo, hi], got {value!r}")
    lo = check_number(f"{name}[0]", value[0])
    hi = check_number(f"{name}[1]", value[1])
    if not hi > lo:
        raise NoisysimError(f"{name} must have lo < hi, got [{lo:g}, {hi:g}]; swap them")
    return lo, hi


@dataclass(frozen=True)
class Channel:
    """One read-out path: noise std, ADC bits (0 = none) and ADC range [lo, hi]."""

    std: float = 0.0
    bits: int = 0
    range: tuple[float, float] = (-4.0, 4.0)

    @property
    def active(self) -> bool:
        return self.std > 0.0 or self.bits > 0

    @property
    def levels(self) -> float:
        return _hw.levels_of(self.bits)

    @property
    def delta(self) -> float:
        """ADC step (hi - lo) / (2^bits - 1); 1.0 (unused) without an ADC."""
        return (self.range[1] - self.range[0]) / (self.levels - 1.0) if self.bits else 1.0


VARIABILITY_DISTRIBUTIONS = ("lognormal", "normal")


class Variability:
    """Per-node fixed parameters of the device (``noise.variability`` = {amplitude = s_a,
    p_flip = s_p, gain = s_g, offset = s_o, distribution = "lognormal" | "normal"}; module
    docstring); a spread of 0: that parameter is the same on every node."""

    #: the counter of STREAM_VARIABILITY each parameter is drawn at
    COUNTERS = {"amplitude": 0, "p_flip": 1, "gain": 2, "offset": 3}

    def __init__(self, amplitude=0.0, distribution="lognormal", p_flip=0.0, gain=0.0,
                 offset=0.0):
        def spread(name, value, hint):
            return check_number(f"noise.variability.{name}", value, 0.0, None, hint=hint)

        self.amplitude = spread("amplitude", amplitude, "the relative spread of the per-node "
                                "noise amplitude (0.1 = 10%)")
        self.p_flip = spread("p_flip", p_flip, "the relative spread of the per-node switching "
                             "probability (0.2 = 20%)")
        self.gain = spread("gain", gain, "the relative spread of the per-node activation gain "
                           "(0.1 = 10%)")
        self.offset = spread("offset", offset, "the std of the per-node activation offset, "
                             "in pre-activation units")
        self.distribution = check_choice("noise.variability.distribution", distribution,
                                         VARIABILITY_DISTRIBUTIONS)

    @property
    def active(self) -> bool:
        return self.amplitude > 0.0 or self.p_flip > 0.0 or self.nodes_active

    @property
    def nodes_active(self) -> bool:
        """Whether the activations vary from node to node (gain or offset)."""
        return self.gain > 0.0 or self.offset > 0.0

    def _normal(self, name: str, seed: int, layer: int, width: int) -> np.ndarray:
        return rng.normal_array(seed, rng.STREAM_VARIABILITY, self.COUNTERS[name], layer,
                                (width,))

    def _relative(self, name: str, seed: int, layer: int, width: int) -> np.ndarray:
        """F(s, z) (width,) float64 of the spread ``name`` (module docstring)."""
        z = self._normal(name, seed, layer, width)
        s = getattr(self, name)
        if self.distribution == "lognormal":
            return np.exp(s * z - 0.5 * s * s)
        return np.maximum(0.0, 1.0 + s * z)

    def factors(self, seed: int, layer: int, width: int) -> np.ndarray:
        """g (width,) float64: the noise amplitude factors of layer ``layer``."""
        return self._relative("amplitude", seed, layer, width)

    def flip_probabilities(self, p: float, seed: int, layer: int, width: int) -> np.ndarray:
        """p_i = min(1, p F(s_p, z_i)) (width,) float64: layer ``layer``'s per-node
        switching probabilities around the model's p."""
        return np.minimum(1.0, p * self._relative("p_flip", seed, layer, width))

    def nodes(self, seed: int, layer: int, width: int) -> "NodeVariation":
        """Layer ``layer``'s per-node activation gains and offsets (float64)."""
        gain = (self._relative("gain", seed, layer, width) if self.gain > 0.0
                else np.ones(width))
        return NodeVariation(gain, self.offset * self._normal("offset", seed, layer, width))

    def params(self) -> dict:
        out = {"amplitude": self.amplitude, "distribution": self.distribution}
        out.update({k: getattr(self, k) for k in ("p_flip", "gain", "offset")
                    if getattr(self, k) > 0.0})  # absent when off: older records unchanged
        return out


class NodeVariation(NamedTuple):
    """A layer's per-node activation gain and offset (``Variability``): node i computes

        x_i = f(u_i),  u_i = gain_i a_i + offset_i   (rounded in a's dtype: product, then sum)
        d x_i / d a_i = gain_i f'(u_i)

    Arrays (N,) of the backend the device runs on, in the network's dtype.
    """

    gain: object
    offset: object

    def inputs(self, a, out):
        """out = gain * a + offset (``a`` (..., N)); returns out. In place in ``out``, no
        temporaries (a captured GPU step must not allocate)."""
        out[...] = a
        out *= self.gain
        out += self.offset
        return out

    def to(self, kernels, dtype) -> "NodeVariation":
        return NodeVariation(kernels.asarray(self.gain, dtype),
                             kernels.asarray(self.offset, dtype))


class Readout:
    """The measurement channel of a Device: ``pre`` for pre-activations, ``loss`` for the
    per-sample losses (module docstring).

    Parameters (the ``[measurement]`` config section): noise_std >= 0, bits in 0..24
    (0 = no ADC), range [lo, hi]; loss_noise_std, loss_bits, loss_range the same for the
    losses.
    """

    def __init__(self, noise_std=0.0, bits=0, range=(-4.0, 4.0), loss_noise_std=0.0,
                 loss_bits=0, loss_range=(0.0, 8.0)):
        def channel(prefix, std, b, r):
            return Channel(
                check_number(f"measurement.{prefix}noise_std", std, 0.0, None),
                check_number(f"measurement.{prefix}bits", b, 0, 24, integer=True,
                             hint="0 = no ADC"),
                _check_range(f"measurement.{prefix}range", r))
        self.pre = channel("", noise_std, bits, range)
        self.loss = channel("loss_", loss_noise_std, loss_bits, loss_range)

    @property
    def active(self) -> bool:
        return self.pre.active or self.loss.active

    def params(self) -> dict:
        return {"noise_std": self.pre.std, "bits": self.pre.bits,
                "range": list(self.pre.range), "loss_noise_std": self.loss.std,
                "loss_bits": self.loss.bits, "loss_range": list(self.loss.range)}


class WeightDevice:
    """How the weights W take the optimiser's proposals (module docstring).

    kind : "ideal" (W = proposal) | "constant_step" | "soft_bounds"
    states : number of levels between the bounds (>= 2); step Delta = (hi - lo)/(states - 1)
    bounds : [lo, hi] in weight units
    asymmetry : a in (-1, 1): up steps Delta (1 + a), down steps Delta (1 - a)
    write_noise : std (weight units) added by each write (a weight that received a pulse)
    seed : key of the pulse roundings and write noise (the run's seed)
    """

    def __init__(self, kind="ideal", states=64, bounds=(-1.0, 1.0), asymmetry=0.0,
                 write_noise=0.0, seed=0):
        self.kind = check_choice("optimizer.device", kind, WEIGHT_DEVICES)
        self.states = check_number("optimizer.states", states, 2, 1_000_000, integer=True,
                                   hint="the number of weight levels between the bounds")
        self.bounds = _check_range("optimizer.bounds", bounds)
        self.asymmetry = check_number("optimizer.asymmetry", asymmetry, -1.0, 1.0,
                                      lo_open=True, hi_open=True)
        self.write_noise = check_number("optimizer.write_noise", write_noise, 0.0, None)
        self.seed = int(check_number("seed", seed, 0, 2**63 - 1, integer=True))

    @property
    def ideal(self) -> bool:
        return self.kind == "ideal"

    @property
    def delta(self) -> float:
        return (self.bounds[1] - self.bounds[0]) / (self.states - 1)

    @property
    def snap(self) -> bool:
        """Whether written weights sit exactly on the states lo + Delta k."""
        return (self.kind == "constant_step" and self.asymmetry == 0.0
                and self.write_noise == 0.0)

    def kernel_args(self) -> tuple:
        """(kind code, Delta, lo, hi, asymmetry, write noise, max pulses, snap) for the
        write kernels (``noisysim.kernels.hardware.write_scalar``)."""
        return (_KIND_CODES[self.kind], self.delta, self.bounds[0], self.bounds[1],
                self.asymmetry, self.write_noise, 4.0 * self.states, self.snap)

    def params(self) -> dict:
        """The config keys (under [optimizer]) that describe the device."""
        if self.ideal:
            return {"device": "ideal"}
        return {"device": self.kind, "states": self.states, "bounds": list(self.bounds),
                "asymmetry": self.asymmetry, "write_noise": self.write_noise}

    def __repr__(self) -> str:
        return f"WeightDevice({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"
