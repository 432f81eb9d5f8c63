"""Optimisers: turn gradient estimates into parameter updates, W <- W - lr * step(g).

Every learning rule in noisysim produces a batch-mean estimate g of dLoss/dW (and dLoss/db)
per layer (a list of ``LayerGrad``); an optimiser turns it into an update applied in place
to the layer's ``W`` and ``b``. The decorrelation matrix ``R`` is never touched here (see
``noisysim.decorrelation``).

One update, in this order (all arithmetic in the parameters' dtype)::

    ||g||   = sqrt(sum over all layers of ||g_W||_F^2 + ||g_b||^2)     (global gradient norm)
    s       = min(1, clip / ||g||)     when clip > 0, else 1             (global-norm clipping)
    g       <- s * g
    g       <- g + weight_decay * p    (SGD only; coupled L2 on W and b, PyTorch convention)
    step    = rule below;  Delta p = lr_t * step;  p <- p - Delta p

lr_t is the learning rate of update t = 1, 2, ...: lr (schedule "constant", the default) or
lr (1 + cos(pi (t - 1) / T)) / 2 (schedule "cosine", over the run's T updates: the
``horizon`` the Trainer sets; it starts at lr and falls towards 0, Loshchilov & Hutter's
SGDR without restarts). It depends on t alone, so a resumed run continues bit for bit.

SGD (PyTorch convention, no dampening; velocity v starts at zero, so v_1 = g_1)::

    momentum = 0 :   step = g
    momentum mu  :   v <- mu v + g;   step = v            (heavy ball)
    nesterov     :   v <- mu v + g;   step = g + mu v

Adam (Kingma & Ba 2015, with bias correction; t = 1, 2, ... counts updates)::

    m <- beta1 m + (1 - beta1) g           v <- beta2 v + (1 - beta2) g^2
    m_hat = m / (1 - beta1^t)              v_hat = v / (1 - beta2^t)
    step  = m_hat / (sqrt(v_hat) + eps)

The state is data (optax style): ``SGDState`` / ``AdamState`` NamedTuples holding the update
count and one ``LayerGrad``-shaped pair of arrays per layer and moment. For speed the state
arrays are updated in place (layers can hold millions of weights); ``state_dict()`` returns
copies and ``load_state_dict()`` restores them, so a run resumed from a checkpoint continues
bit for bit. Usage::

    opt = make_optimizer("adam", lr=1e-4, clip=1.0)
    opt.init(net.layers, arena=net.parameters)
    scalars = opt.update(net.layers, grads)   # {"update_norm_l0": ..., "clip_scale": ...}

Arenas (``noisysim.arena``). The moments, the gradients (``opt.gradients``, which the rules
write when the engine hands them its views) and, given ``arena``, the parameters are each one
flat buffer, so the gradient norms and the update are one kernel each for all layers: the
launches of a GPU step do not grow with the number of layers. Parameters that are not views
of ``arena`` (or given without one) are copied into the optimiser's own arena before each
update and back after it; the arithmetic is the same either way.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from .arena import Arena
from .errors import NoisysimError, check_choice, check_number
from .hardware import WeightDevice
from .kernels import step as _step
from .kernels.backend import CPU
from .network import LayerGrad, LayerParams


#: learning-rate schedules (module docstring)
SCHEDULES = ("constant", "cosine")


class SGDState(NamedTuple):
    """State of SGD: ``count`` updates applied so far (np.int64); ``velocity`` one
    ``LayerGrad(W, b)`` of momentum buffers per layer (same shapes and dtype as the
    parameters), or ``None`` without momentum."""

    count: np.int64
    velocity: tuple[LayerGrad, ...] | None


class AdamState(NamedTuple):
    """State of Adam: ``count`` = t, updates applied so far (np.int64); ``m`` and ``v`` the
    first and raw second moment estimates, one ``LayerGrad(W, b)`` per layer."""

    count: np.int64
    m: tuple[LayerGrad, ...]
    v: tuple[LayerGrad, ...]


class Optimizer:
    """Common shell: validation, clipping, applying the update, logging, checkpoints.

    Subclasses define ``name``, ``_slot_names`` (the state's per-layer array fields),
    ``_init_state`` and ``_apply`` (one parameter array's update, through the kernel set's
    fused update kernel).
    """

    name = ""
    _slot_names: tuple[str, ...] = ()

    def __init__(self, lr: float, clip: float | None = None, schedule: str = "constant"):
        self.lr = check_number("lr", lr, 0.0, None, lo_open=True,
                               hint="the learning rate must be positive")
        self.schedule = check_choice("schedule", schedule, SCHEDULES)
        #: the run's number of updates T (the cosine schedule's length; set by the Trainer)
        self.horizon: int | None = None
        if clip is None or (not isinstance(clip, bool) and clip == 0
                            and isinstance(clip, (int, float, np.integer, np.floating))):
            self.clip = None
        else:
            self.clip = check_number("clip", clip, 0.0, None, lo_open=True,
                                     hint="the maximal global gradient norm; 0 or None = off")
        self.state: SGDState | AdamState | None = None
        self._slots: dict[str, Arena] = {}
        #: how the weights take the proposed update (noisysim.hardware; "ideal": as given)
        self.weight_device = WeightDevice()
        self._previous: list = []  # per layer: W before the update (non-ideal devices)
        self._layout: tuple[tuple[tuple[int, ...], tuple[int, ...] | None, np.dtype], ...] = ()
        #: the parameters' arena, and whether it is the optimiser's own copy of them
        self._params: Arena | None = None
        self._staged = False
        #: the rules' gradient estimates, one arena (``estimate(..., out=opt.gradients.layers)``)
        self.gradients: Arena | None = None

    def lr_at(self, count: int) -> float:
        """The learning rate of update ``count`` (1, 2, ...): see the module docstring."""
        if self.schedule == "constant":
            return self.lr
        if not self.horizon:
            raise NoisysimError(
                f"the {self.schedule} schedule needs the run's number of updates: set "
                "optimizer.horizon (a Trainer sets it to its total steps)")
        t = min(count - 1, self.horizon)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * t / self.horizon))

    def _schedule_option(self) -> dict:
        return {} if self.schedule == "constant" else {"schedule": self.schedule}

    # -- state ---------------------------------------------------------------------------
    def init(self, params: Sequence[LayerParams], kernels=CPU,
             arena: Arena | None = None) -> SGDState | AdamState:
        """Create a fresh state (count 0, zero moments) shaped like ``params``, on the
        backend ``kernels`` (the parameters' own: numpy arrays for the CPU, device arrays
        for the GPU); returns it and keeps it as ``self.state``. ``arena``: the
        ``noisysim.arena.Arena`` whose views ``params`` W and b are (``Network.parameters``,
        ``Device.parameters``), updated in place by one launch; without it the optimiser
        keeps its own copy (module docstring)."""
        self.kernels = kernels
        params = list(params)
        if not params:
            raise NoisysimError("optimizer init needs at least one layer, got an empty list")
        self._layout = tuple(
            (p.W.shape, None if p.b is None else p.b.shape, p.W.dtype) for p in params
        )
        for l, p in enumerate(params):
            if p.W.dtype not in (np.float32, np.float64):
                raise NoisysimError(f"W_{l} must be float32 or float64, got {p.W.dtype}")
            if p.b is not None and p.b.dtype != p.W.dtype:
                raise NoisysimError(f"b_{l} must have W_{l}'s dtype {p.W.dtype}, got {p.b.dtype}")
        self._staged = arena is None or not arena.holds(params)
        self._params = Arena.like(kernels, params) if self._staged else arena
        self.gradients = Arena.like(kernels, params)
        self.state = self._init_state(params)
        if not self.weight_device.ideal:  # the device holds the initial weights
            self._previous = [kernels.empty(p.W.shape, p.W.dtype) for p in params]
            for p in params:
                kernels.program_weights(self.weight_device, p.W)
        return self.state

    def _zeros(self, params: Sequence[LayerParams]) -> Arena:
        """Zero arrays shaped like ``params``: the views of a new arena, kept as
        ``self._slots[...]`` by the caller."""
        return Arena.like(self.kernels, params)

    def _slot(self, name: str) -> Arena | None:
        """The arena of a state slot (m, v, velocity), None when the slot is unused."""
        return self._slots.get(name)

    def _init_state(self, params):  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray | np.int64]:
        """Copies of the state: ``step`` (np.int64, updates applied so far) and one array
        per slot, layer and parameter, named ``{slot}_{W|b}_{l}`` (e.g. ``m_W_0``)."""
        state = self._require_state()
        out: dict[str, np.ndarray | np.int64] = {"step": np.int64(state.count)}
        for slot in self._slot_names:
            layers = getattr(state, slot)
            if layers is None:
                continue
            for l, pair in enumerate(layers):
                out[f"{slot}_W_{l}"] = np.array(self.kernels.to_host(pair.W))
                if pair.b is not None:
                    out[f"{slot}_b_{l}"] = np.array(self.kernels.to_host(pair.b))
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` (after ``init`` with parameters of the same shapes).

        Every key must be present with the right shape; values are copied into the
        state's arrays (cast to the parameters' dtype).
        """
        current = self._require_state()
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise NoisysimError(
                f"{self.name} optimizer state must have keys {sorted(expected)}; "
                f"missing {missing}, unexpected {extra} (was it saved by another optimizer "
                "or for another network?)"
            )
        for key, ref in expected.items():
            if key == "step":
                continue
            value = np.asarray(state[key])
            if value.shape != ref.shape:
                raise NoisysimError(
                    f"optimizer state {key} must have shape {ref.shape}, got {value.shape}"
                )
        step = state["step"]
        if isinstance(step, np.ndarray) and step.shape == ():
            step = step[()]
        count = check_number("optimizer state step", step, 0, None, integer=True)
        for slot in self._slot_names:
            layers = getattr(current, slot)
            if layers is None:
                continue
            for l, pair in enumerate(layers):
                pair.W[...] = self.kernels.asarray(state[f"{slot}_W_{l}"], pair.W.dtype)
                if pair.b is not None:
                    pair.b[...] = self.kernels.asarray(state[f"{slot}_b_{l}"], pair.b.dtype)
        self.state = current._replace(count=np.int64(count))

    def _require_state(self):
        if self.state is None:
            raise NoisysimError(
                f"{self.name} optimizer has no state: call init(params) before update, "
                "state_dict or load_state_dict"
            )
        return self.state

    # -- update --------------------------------------------------------------------------
    def update(
        self, params: Sequence[LayerParams], grads: Sequence[LayerGrad]
    ) -> dict[str, float]:
        """Apply one update in place to every layer's W and b (never R).

        Returns scalars to log: ``update_norm_l{l}`` = ||Delta W_l||_F including the bias
        (sqrt(||Delta W_l||_F^2 + ||Delta b_l||^2)), NaN when a parameter of layer l is not
        finite after the update (the run has diverged: see ``nonfinite_layer``);
        ``grad_norm`` (global norm of the gradients before clipping) and ``clip_scale``
        (the factor s applied to them, 1.0 when not clipped). Raises ``NoisysimError``
        before touching anything if the gradients are not finite (the run has diverged)
        or do not match the parameters.
        """
        state = self._require_state()
        arrays = self._pairs(params, grads)
        K, L = self.kernels, len(self._layout)
        stats, failure = K.zeros(_step.size(L), np.float64), _step.new_failure()
        if not K.eager:
            failure = K.asarray(failure)
        self.gradient_norms(grads, stats, failure)
        host = K.to_host(stats)
        grad_norm = math.sqrt(_step.grad_norm_sq(host, L))
        if not math.isfinite(grad_norm):
            bad = next((f"gradient {name}_{l} is not finite" for l, name, _, g in arrays
                        if host[_step.grad_bad(L, l)] > 0 and not np.all(np.isfinite(
                            K.to_host(g)))), f"gradient norm overflows ({grad_norm})")
            raise NoisysimError(
                f"{bad} at update {int(state.count) + 1}: the run diverged; lower the "
                "learning rate or enable clip"
            )
        self.apply(params, grads, stats, failure)
        host = K.to_host(stats)
        out = {}
        for l in range(L):
            bad = host[_step.param_bad(L, l)] > 0
            out[f"update_norm_l{l}"] = math.nan if bad else math.sqrt(host[_step.update_sq(L, l)])
        out["grad_norm"] = grad_norm
        out["clip_scale"] = CPU.clip_scale(host, L, self.clip)
        if not self.weight_device.ideal:
            out["weight_writes"] = float(host[_step.writes(L)])
            out["weight_clipped"] = float(host[_step.clipped(L)])
        return out

    def gradient_norms(self, grads, stats, failure) -> None:
        """The engine's first half of an update: copy ``grads`` into ``self.gradients``
        (nothing to copy for the arena's own views), add each layer's squared norm and
        non-finite elements to ``stats`` (``noisysim.kernels.step``) and decide on the
        backend whether the update may run and by what factor it is clipped. One launch on
        the GPU; reads nothing back."""
        self._require_state()
        self.gradients.load(grads)
        self.kernels.gradient_norms(self.gradients, stats, failure, len(self._layout),
                                    self.clip)

    def apply(self, params, grads, stats, failure) -> None:
        """The engine's update: every layer's W and b in place, from the gradients that
        ``gradient_norms`` measured into ``stats`` (``grads``: those same gradients),
        unless the step is blocked (a non-finite loss or gradient, or an earlier failure in
        ``failure``). Adds the update norms and the non-finite parameter flags to
        ``stats``; reads nothing back."""
        K, L = self.kernels, len(self._layout)
        state = self._require_state()
        if K.update_gate(stats, failure, L, self.clip, self._params.dtype):
            return
        self.gradients.load(grads)
        P = self._params
        if self._staged:
            P.load(params)
        count = int(state.count) + 1
        device = self.weight_device
        if not device.ideal:  # W lives in the weight device: keep what it holds
            for l, views in enumerate(P.layers):
                self._previous[l][...] = views.W
        self._update(K, P, count, stats)
        if not device.ideal:  # the proposal in W becomes what the device writes
            for l, views in enumerate(P.layers):
                K.weight_write(device, views.W, self._previous[l], count, l, stats,
                               failure, L)
        if self._staged:
            P.store(params)
        self.state = self.state._replace(count=np.int64(count))

    def _pairs(self, params, grads) -> list[tuple[int, str, np.ndarray, np.ndarray]]:
        """Validate and flatten to (layer, "W"|"b", parameter, gradient in its dtype)."""
        params, grads = list(params), list(grads)
        if len(params) != len(self._layout):
            raise NoisysimError(
                f"{self.name} optimizer was initialised for {len(self._layout)} layers, "
                f"got parameters for {len(params)}"
            )
        if len(grads) != len(params):
            raise NoisysimError(
                f"need one gradient per layer ({len(params)}), got {len(grads)}"
            )
        out = []
        for l, (p, g, layout) in enumerate(zip(params, grads, self._layout)):
            for name, value, grad, shape in (("W", p.W, g.W, layout[0]),
                                             ("b", p.b, g.b, layout[1])):
                if value is None and grad is None:
                    continue
                if value is None or grad is None:
                    raise NoisysimError(
                        f"layer {l}: parameter {name} is {'absent' if value is None else 'present'}"
                        f" but its gradient is {'absent' if grad is None else 'present'}"
                    )
                grad = self.kernels.xp.asarray(grad)
                if value.shape != shape or grad.shape != shape:
                    raise NoisysimError(
                        f"{name}_{l} and its gradient must have shape {shape} (as at init), "
                        f"got {value.shape} and {grad.shape}"
                    )
                if value.dtype != layout[2]:
                    raise NoisysimError(
                        f"{name}_{l} must keep dtype {layout[2]} (as at init), got {value.dtype}"
                    )
                out.append((l, name, value, grad.astype(value.dtype, copy=False)))
        return out

    def _update(self, K, params: Arena, count: int, stats) -> None:  # pragma: no cover
        """One fused update of every parameter in ``params`` from ``self.gradients``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    def options(self) -> dict:
        """The hyperparameters, as accepted by ``make_optimizer(self.name, **options)``."""
        raise NotImplementedError  # pragma: no cover


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

    See the module docstring for the equations (PyTorch's convention, dampening 0).
    """

    name = "sgd"
    _slot_names = ("velocity",)

    def __init__(self, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, clip: float | None = None,
                 schedule: str = "constant"):
        super().__init__(lr, clip, schedule)
        self.momentum = check_number("momentum", momentum, 0.0, 1.0, hi_open=True)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise NoisysimError(f"nesterov must be true or false, got {nesterov!r}")
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0.0:
            raise NoisysimError(
                "nesterov=True needs momentum in (0, 1), got momentum=0.0; set a momentum "
                "(e.g. 0.9) or nesterov=False"
            )
        self.weight_decay = check_number("weight_decay", weight_decay, 0.0, None)

    def options(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay, "clip": self.clip,
                **self._schedule_option()}

    def _init_state(self, params) -> SGDState:
        self._slots = {"velocity": self._zeros(params)} if self.momentum > 0.0 else {}
        velocity = tuple(self._slots["velocity"].layers) if self._slots else None
        return SGDState(count=np.int64(0), velocity=velocity)

    def _update(self, K, params, count, stats) -> None:
        K.sgd_update(params, self.gradients, self._slot("velocity"), self, count, stats,
                     len(self._layout))


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba 2015); equations in the module docstring."""

    name = "adam"
    _slot_names = ("m", "v")

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 clip: float | None = None, schedule: str = "constant"):
        super().__init__(lr, clip, schedule)
        self.beta1 = check_number("beta1", beta1, 0.0, 1.0, hi_open=True)
        self.beta2 = check_number("beta2", beta2, 0.0, 1.0, hi_open=True)
        self.eps = check_number("eps", eps, 0.0, None, lo_open=True,
                                hint="eps keeps the step finite where v_hat = 0")

    def options(self) -> dict:
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "clip": self.clip, **self._schedule_option()}

    def _init_state(self, params) -> AdamState:
        self._slots = {"m": self._zeros(params), "v": self._zeros(params)}
        return AdamState(count=np.int64(0), m=tuple(self._slots["m"].layers),
                         v=tuple(self._slots["v"].layers))

    def _update(self, K, params, count, stats) -> None:
        # One fused pass over the arena (kernels.cpu.adam_update per array, or the CUDA
        # kernel over all of them) with the same rounding as the equations; bias
        # corrections in float64, then cast.
        K.adam_update(params, self.gradients, self._slot("m"), self._slot("v"), self, count,
                      stats, len(self._layout))


def nonfinite_layer(scalars: dict) -> int | None:
    """The first layer whose ``update_norm_l{l}`` in ``update``'s scalars is not finite
    (a parameter of it became inf or NaN), else None."""
    l = 0
    while f"update_norm_l{l}" in scalars:
        if not math.isfinite(scalars[f"update_norm_l{l}"]):
            return l
        l += 1
    return None


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam}
_OPTIONS = {
    "sgd": ("lr", "momentum", "nesterov", "weight_decay", "clip", "schedule"),
    "adam": ("lr", "beta1", "beta2", "eps", "clip", "schedule"),
}


def make_optimizer(name: str, weight_device: WeightDevice | None = None,
                   **options) -> Optimizer:
    """Build an optimiser by name: ``"sgd"`` or ``"adam"``.

    Options
    -------
    sgd  : lr (> 0, required), momentum in [0, 1) (default 0), nesterov (default False,
           needs momentum > 0), weight_decay >= 0 (default 0), clip
    adam : lr (> 0, required), beta1 in [0, 1) (0.9), beta2 in [0, 1) (0.999),
           eps > 0 (1e-8), clip
    clip : maximal global gradient norm over all layers' W and b; 0 or None (default) = off.
    schedule : "constant" (default) or "cosine" (needs ``horizon``, the run's updates).

    weight_device : noisysim.hardware.WeightDevice applied to every proposed W (default:
           ideal, W = proposal).

    Unknown names or options raise ``NoisysimError`` listing the valid ones.
    """
    check_choice("optimizer", name, OPTIMIZERS)
    valid = _OPTIONS[name]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise NoisysimError(
            f"unknown option {unknown[0]!r} for optimizer {name!r}; valid options: "
            f"{', '.join(valid)}"
        )
    if "lr" not in options:
        raise NoisysimError(f"optimizer {name!r} needs lr (the learning rate, > 0)")
    opt = OPTIMIZERS[name](**options)
    if weight_device is not None:
        opt.weight_device = weight_device
    return opt
