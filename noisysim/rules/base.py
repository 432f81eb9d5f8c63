"""What every learning rule shares: options, state as data, and the two update shapes.

A rule is a small object with three faces:

- ``request()``: the keyword arguments of ``Device.measure`` it needs (what to inject,
  how strongly, how many perturbed passes, whether the reference pass is clean);
- ``estimate(measurement, network)``: batch-mean estimates of dLoss/dW and dLoss/db, one
  ``LayerGrad`` per layer, computed from the ``Measurement`` alone (never from the device
  or its intrinsic noise);
- ``state_dict()`` / ``load_state_dict()``: the rule's state as numpy scalars and arrays
  (empty for stateless rules).

Pass 0 of a measurement is always the reference: with ``clean_pass=False`` it is itself
noisy and every difference (dell, da) is taken against it, so constant noise offsets
cancel. Weight updates always use the reference pass's (decorrelated) input x*.

Every estimate ends in one of two shapes, each written once here:

- ``node_gradient``: a per-sample estimate c_{k,n} of d ell_n / d a_l from K perturbed
  passes, turned into g_W = mean_{k,n} c_{k,n} x*_{n}^T and g_b = mean_{k,n} c_{k,n}
  (NP, INP, ANP);
- ``direction_gradient``: a scalar s_k per direction v_k in parameter space,
  g = mean_k s_k v_k (WP, forward gradient).
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar, Mapping, NamedTuple

import numpy as np

from ..errors import NoisysimError, check_bool, check_choice, check_number
from ..kernels.backend import CPU, Vectors
from ..network import LayerGrad, Network

SURROGATES = ("none", "ste")


class NoState(NamedTuple):
    """State of a stateless rule."""


class Rule:
    """Base of the learning rules; build one with ``noisysim.rules.make_rule``.

    Subclasses set ``family`` (the paper's name: "np", "inp", ...), ``OPTIONS`` (option
    name -> default), and implement ``request`` and ``estimate``.
    """

    family: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Any]] = {}
    #: whether sigma = 0 is allowed (ANP learns from intrinsic noise alone)
    SIGMA_MAY_BE_ZERO: ClassVar[bool] = False

    def __init__(self, name: str | None = None, **options):
        self.name = name or self.family
        unknown = [k for k in options if k not in self.OPTIONS]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(self.OPTIONS), n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise NoisysimError(
                f"rule {self.name!r} has no option {unknown[0]!r}{guess}; valid options: "
                f"{', '.join(self.OPTIONS)}"
            )
        merged = {**self.OPTIONS, **options}
        self.options = {k: self._check_option(k, v) for k, v in merged.items()}
        self.state = self.initial_state()

    # -- options ------------------------------------------------------------------------
    def _check_option(self, key: str, value: Any) -> Any:
        label = f"{self.name} {key}"
        if key == "sigma":
            hint = ("sigma = 0 learns from intrinsic device noise alone" if
                    self.SIGMA_MAY_BE_ZERO else "the injected perturbation needs a positive std")
            return check_number(label, value, 0.0, None, lo_open=not self.SIGMA_MAY_BE_ZERO,
                                hint=hint)
        if key == "samples":
            return check_number(label, value, 1, None, integer=True,
                                hint="the number of perturbed passes averaged per update")
        if key == "seed":
            return check_number(label, value, 0, 2**63 - 1, integer=True)
        if key in ("clean_pass", "decorrelated"):
            return check_bool(label, value)
        if key == "surrogate":
            return check_choice(label, value, SURROGATES)
        raise AssertionError(f"option {key!r} has no validator")  # a bug in a subclass

    @property
    def decorrelated(self) -> bool:
        """Whether the engine gives the network R matrices and runs decorrelation updates."""
        return bool(self.options.get("decorrelated", False))

    def params(self) -> dict:
        """JSON-able description (recorded in trajectories)."""
        return {"rule": self.name, **self.options}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({self.name!r}, {opts})"

    # -- state as data ------------------------------------------------------------------
    def initial_state(self) -> NamedTuple:
        return NoState()

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in self.state._asdict().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        fields = type(self.state)._fields
        if set(state) != set(fields):
            raise NoisysimError(
                f"rule {self.name!r} state must have the entries {list(fields)}, got "
                f"{sorted(state)}"
            )
        current = self.state._asdict()
        self.state = type(self.state)(
            **{k: np.asarray(state[k], dtype=np.asarray(current[k]).dtype)[()] for k in fields}
        )

    # -- the rule -----------------------------------------------------------------------
    def request(self) -> dict:
        """Keyword arguments for ``Device.measure``: perturb, sigma, samples, clean_pass."""
        raise NotImplementedError

    def estimate(self, m, network: Network, out=None) -> list[LayerGrad]:
        """Batch-mean estimates of dLoss/dW and dLoss/db from a Measurement ``m``.

        ``out``: per layer a ``LayerGrad`` of arrays to write the estimates into (the
        engine hands the optimiser's gradient arena, ``noisysim.arena``); the rules whose
        products can write there do, the others return new arrays, which the optimiser
        copies in. The returned list holds the estimates either way."""
        raise NotImplementedError

    def _require(self, condition: bool, what: str) -> None:
        if not condition:
            req = ", ".join(f"{k}={v!r}" for k, v in self.request().items())
            raise NoisysimError(
                f"rule {self.name!r} needs {what}; measure with Device.measure(x, y, {req})"
            )


def kernels_of(m):
    """The backend (``noisysim.kernels.backend``) whose arrays a Measurement holds."""
    return m.kernels if m.kernels is not None else CPU


def node_gradient(scale: np.ndarray, vectors: np.ndarray, x_ref: np.ndarray,
                  has_bias: bool) -> LayerGrad:
    """g_W = mean_{k,n} scale_{k,n} v_{k,n} x*_{n}^T and g_b = mean_{k,n} scale_{k,n} v_{k,n}.

    scale (K, B): per pass and sample coefficient (e.g. dell / sigma^2); vectors (K, B, N_l):
    node-space directions (eps or da); x_ref (B, N_{l-1}): reference pass input x*_{l-1},
    shared by the K passes, so the mean over passes is taken before the outer product.
    Returns arrays in the dtype of ``vectors`` (host arrays; the rules call the backend's
    ``node_gradient`` on the measurement's arrays).
    """
    return LayerGrad(*CPU.node_gradient(scale, Vectors(vectors, 0, vectors.shape[0], False),
                                        x_ref, has_bias))


def direction_gradient(scale, directions_W, directions_b, xp=np) -> list[LayerGrad]:
    """g_l = mean_k scale_k v_{k,l} for directions v_k in parameter space.

    scale (K,); directions_W per layer (K, N_l, N_{l-1}); directions_b per layer (K, N_l)
    or None (no bias); ``xp`` the arrays' module (numpy, or CuPy on the GPU).
    """
    out = []
    for l, V in enumerate(directions_W):
        s = scale.astype(V.dtype) * V.dtype.type(1.0 / scale.shape[0])  # the mean's 1/K
        g_W = xp.tensordot(s, V, axes=1)
        vb = None if directions_b is None else directions_b[l]
        g_b = None if vb is None else xp.tensordot(s, vb, axes=1)
        out.append(LayerGrad(g_W, g_b))
    return out


def loss_changes(m):
    """dell (P-1, B): per-sample loss of each perturbed pass minus the reference pass's."""
    return m.losses[1:] - m.losses[0]


def reference(arrays) -> list:
    """Pass 0 (the reference pass) of each per-layer (P, B, N) array."""
    return [a[0] for a in arrays]
