"""The simulated hardware: a network whose nodes carry intrinsic noise the learner cannot read.

``Device.measure`` runs one batch through P forward passes and returns a ``Measurement``:
what a physical experiment could record (inputs, pre-activations, per-sample losses, and the
perturbation the caller asked to inject). The intrinsic noise samples never leave the device.

Passes of one call are stacked so that each layer does one matrix product over the rows of
all passes that need it:

- pass 0 is the reference pass (clean, or noisy when ``clean_pass=False``);
- passes 1..P-1 carry intrinsic noise plus any injected perturbation;
- layer 0 sees the same (noise-free) input in every pass, so its product is computed once;
- a pass that perturbs only layer k (INP) is, like every pass, a new run through the whole
  device: each layer is recomputed with the intrinsic noise of the pass's own time step.
  Where that changes nothing it is skipped: layers below k that neither carry intrinsic
  noise nor draw stochastic activations, and lie above no layer that does, equal the
  reference pass's and are copied from it (exact, and cheaper).

A device with ``hold_upstream=True`` models hardware that can latch (sample and hold) the
activity of the layers below the perturbed one between passes: then a pass that perturbs
only layer k reuses the reference pass's activity below k, noise included, and draws no
fresh noise there. That is a capability to model explicitly, not the default.

One forward pass is one time step of the noise processes: pass p of a call runs at time
``clock + p`` and the clock advances by P. Stateful noise (telegraph, smtj, ou, pink,
trace) carries its state across passes and calls; ``state_dict`` saves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from . import losses
from .arena import Arena
from .errors import NoisysimError, check_choice, check_finite_array, check_number
from .hardware import Readout, Variability
from .kernels import rng
from .kernels.backend import CPU
from .network import LayerParams, Network
from .noise import MultiplicativeNoise, NoNoise, switching_probability

PERTURBATIONS = ("none", "nodes", "layer", "each_layer", "weights")


@dataclass(frozen=True)
class Measurement:
    """What one ``Device.measure`` call recorded, per pass p (pass 0 = reference).

    inputs[l]   (P, B L, d)      decorrelated input rows x*_{l-1} of layer l (layer 0: a
                                 read-only broadcast view, identical in every pass); a
                                 dense layer: (P, B, N_{l-1}); a conv layer: the patch
                                 rows of its input map (``noisysim.layers``)
    pre[l]      (P, B, N_l)      pre-activation a_l as measured (noise included; through
                                 the device's read-out channel when it has one)
    outputs     (P, B, N_L)      network output f_L(a_L), fed to the loss
    losses      (P, B)           per-sample loss ell_n (as measured, like ``pre``)
    targets                      the batch targets
    injected    per layer (P, B, N_l) node perturbation the caller asked for, zero where
                a pass injected nothing; None when no node perturbation was injected
    injected_weights / injected_bias
                per layer (P, N_l, N_{l-1}) / (P, N_l): weight perturbation; else None
    perturbed_layer (P,)         layer a pass perturbed alone, or -1 (all layers / none)
    kernels                      the backend whose arrays these are (None: the CPU's)
    layers                       the parameters the passes ran with (None: the network's)
    nodes       per layer the NodeVariation (activation gain and offset) the passes ran
                with, None without (``noisysim.hardware.Variability``): for the rules that
                differentiate the device (BP, FG); perturbation rules never read it
    activity    per layer (P, B, N_l) outputs x_l = f_l(a_l) (None: not recorded)
    """

    inputs: tuple
    pre: tuple
    outputs: np.ndarray
    losses: np.ndarray
    targets: np.ndarray
    injected: tuple | None
    injected_weights: tuple | None
    injected_bias: tuple | None
    perturbed_layer: np.ndarray
    kernels: object = None
    layers: tuple | None = None
    nodes: tuple | None = None
    activity: tuple | None = None

    @property
    def n_passes(self) -> int:
        return self.losses.shape[0]


class Device:
    """A network on simulated noisy hardware.

    Parameters
    ----------
    network : Network
    noise : None, NoiseModel, or mapping {layer index: NoiseModel}
        Intrinsic noise added to pre-activations. A single model applies to every layer
        (output included) unless ``noise_layers`` selects some.
    noise_layers : "all" or sequence of int
    seed : int
        Key of every draw the device makes (noise, perturbations, stochastic activations).
    readout : None or noisysim.hardware.Readout
        The measurement channel: read-out noise and ADC applied to the pre-activations and
        losses a Measurement reports (the forward computation is unchanged); None or an
        inactive one: the values themselves.
    variability : None or noisysim.hardware.Variability
        Device-to-device variability: per node a fixed factor on the intrinsic noise, a
        fixed switching probability, a fixed activation gain and offset.
    reuse_buffers : bool
        Let ``measure`` write into the arrays of the previous Measurement instead of fresh
        ones (fresh multi-megabyte arrays cost page faults on every call). A Measurement is
        then valid only until the next ``measure`` call: the training engine, which consumes
        each one at once, turns this on; copy what you keep.
    hold_upstream : bool
        The hardware latches the activity of the layers below a perturbed layer between
        passes (a sample-and-hold): a pass that perturbs only layer k reuses the reference
        pass's activity below k and draws no fresh intrinsic noise there. False (the
        default): every pass recomputes every layer that draws intrinsic randomness, or
        lies above one that does, with the noise of its own time step.

    The device runs on a backend (``noisysim.kernels.backend``): the CPU by default, where
    ``layers`` are the network's own parameter arrays. ``use_kernels(K)`` moves the
    parameters and the noise state to another backend (the GPU); ``pull()`` then writes the
    parameters back into the network's arrays and ``push()`` copies them over again.
    """

    def __init__(self, network: Network, noise=None, noise_layers="all", seed: int = 0,
                 reuse_buffers: bool = False, hold_upstream: bool = False,
                 readout: Readout | None = None, variability: Variability | None = None):
        self.network = network
        self.readout = readout if readout is not None and readout.active else None
        self.reuse_buffers = bool(reuse_buffers)
        self.hold_upstream = bool(hold_upstream)
        self._buffers: dict[tuple, np.ndarray] = {}
        self.seed = int(check_number("seed", seed, 0, 2**63 - 1, integer=True))
        self.noise = _noise_by_layer(noise, noise_layers, network.n_layers)
        self.clock = 0
        self.kernels = CPU
        self.layers: list[LayerParams] = network.layers
        #: the layers' W and b as one arena (``noisysim.arena``), on the backend
        self.parameters = network.parameters
        self._noise_state: dict[int, dict] = {
            l: model.init_state(self.seed, l, 0, network.widths[l + 1])
            for l, model in self.noise.items()
        }
        # device-to-device variability (noisysim.hardware.Variability), host copies: per
        # node a fixed factor on its noise, a switching probability, an activation gain
        # and offset
        self.variability = variability if variability is not None and variability.active \
            else None
        self._gain_host = _noise_gains(variability, self.noise, self.seed, network)
        self._p_host = _flip_probabilities(variability, self.noise, self.seed, network)
        self._node_host = ({} if self.variability is None or not variability.nodes_active
                           else {l: variability.nodes(self.seed, l, network.widths[l + 1])
                                 for l in range(network.n_layers)})
        self._to_backend(CPU)

    def random_layers(self) -> tuple[int, ...]:
        """The layers whose activity a perturbed pass must recompute at its own time step
        although nothing is injected there: those that carry intrinsic noise or draw
        stochastic activations (``pass_layout`` adds every layer above them). Empty when
        the hardware holds upstream activity (``hold_upstream``)."""
        if self.hold_upstream:
            return ()
        noisy = {l for l, model in self.noise.items() if not isinstance(model, NoNoise)}
        return tuple(l for l, act in enumerate(self.network.activations)
                     if l in noisy or act.stochastic)

    # -- the backend -----------------------------------------------------------------------
    def use_kernels(self, kernels) -> None:
        """Run on the backend ``kernels``: copies of the parameters and the noise state move
        there (the network keeps its host arrays: see ``pull`` / ``push``)."""
        state = self.state_dict()
        self.kernels = kernels
        self._buffers = {}
        if kernels is CPU:
            self.parameters, self.layers = self.network.parameters, self.network.layers
        else:  # one arena on the backend for W and b, filled by ``push`` with R
            self.parameters = Arena(kernels, self.network.parameters.layout,
                                    self.network.dtype)
            self.layers = [
                LayerParams(views.W, views.b,
                            None if p.R is None else kernels.empty(p.R.shape, p.R.dtype))
                for views, p in zip(self.parameters.layers, self.network.layers)]
            self.push()
        self.load_state_dict(state)
        self._to_backend(kernels)

    def _to_backend(self, kernels) -> None:
        """The backend's copies of the per-node variability (noise factors and activation
        gains and offsets in the network's dtype; switching probabilities in float64, like
        the noise kernels' arithmetic)."""
        dtype = self.network.dtype
        self._gains = {l: kernels.asarray(g, dtype) for l, g in self._gain_host.items()}
        self._node_p = {l: kernels.asarray(p, np.float64) for l, p in self._p_host.items()}
        self._nodes = {l: v.to(kernels, dtype) for l, v in self._node_host.items()}

    def pull(self) -> None:
        """Write the backend's parameters into the network's arrays (no-op on the CPU)."""
        if self.layers is self.network.layers:
            return
        self.network.parameters.flat[...] = self.kernels.to_host(self.parameters.flat)
        for host, dev in zip(self.network.layers, self.layers):
            if host.R is not None:
                host.R[...] = self.kernels.to_host(dev.R)

    def push(self) -> None:
        """Copy the network's parameters to the backend (no-op on the CPU)."""
        if self.layers is self.network.layers:
            return
        self.parameters.flat[...] = self.kernels.asarray(self.network.parameters.flat)
        for host, dev in zip(self.network.layers, self.layers):
            if host.R is not None:
                dev.R[...] = self.kernels.asarray(host.R)

    # -- state as data -------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Clock and noise-process states (copies), for checkpoints; with variability, its
        per-node factors (for the record: they follow from the seed)."""
        state = {
            "clock": np.int64(self.clock),
            "noise": {str(l): self.kernels.noise_state_to_host(self.noise[l], s)
                      for l, s in self._noise_state.items()},
        }
        if self._gain_host:
            state["variability"] = {str(l): g.copy() for l, g in self._gain_host.items()}
        if self._p_host:
            state["variability_p_flip"] = {str(l): p.copy() for l, p in self._p_host.items()}
        for name in ("gain", "offset") if self._node_host else ():
            state[f"variability_{name}"] = {str(l): getattr(v, name).copy()
                                            for l, v in self._node_host.items()}
        return state

    def load_state_dict(self, state: Mapping) -> None:
        self.clock = int(state["clock"])
        self._noise_state = {
            int(l): self.kernels.noise_state(self.noise[int(l)], s)
            for l, s in state["noise"].items()
        }

    # -- the experiment ------------------------------------------------------------------
    def measure(
        self,
        x: np.ndarray,
        targets: np.ndarray,
        perturb: str = "none",
        sigma: float = 0.0,
        samples: int = 1,
        layer: int | None = None,
        values: Sequence | None = None,
        bias_values: Sequence | None = None,
        clean_pass: bool = True,
    ) -> Measurement:
        """Run a batch through a reference pass and perturbed passes.

        perturb : "none" | "nodes" | "layer" | "each_layer" | "weights"
            What the caller injects in the perturbed passes, on top of intrinsic noise:
            nothing; N(0, sigma^2) node perturbations in all layers; in layer ``layer``
            only; in each layer in turn (``samples`` passes per layer, ordered by layer);
            or N(0, sigma^2) weight (and bias) perturbations.
        sigma : std of the injected perturbation (ignored when ``values`` is given).
        samples : number K of perturbed passes (per layer for "each_layer"); 0 runs the
            reference pass alone (what BP needs).
        values : explicit perturbations instead of draws: per layer (K, B, N_l) for node
            kinds (None for an unperturbed layer), (K, N_l, N_{l-1}) for "weights" (with
            optional ``bias_values`` (K, N_l)).
        clean_pass : whether the reference pass is free of intrinsic noise.
        """
        net = self.network
        x = self._check_inputs(x)
        targets = losses.check_targets(net.loss, targets, net.widths[-1])
        if targets.shape[0] != x.shape[0]:
            raise NoisysimError(
                f"targets must have one row per input sample ({x.shape[0]}), got {targets.shape[0]}"
            )
        K = self.kernels
        return self.measure_checked(K.asarray(x), K.asarray(targets), perturb, sigma, samples,
                                    layer, values, bias_values, clean_pass)

    def measure_checked(self, x, targets, perturb="none", sigma=0.0, samples=1, layer=None,
                        values=None, bias_values=None, clean_pass=True) -> Measurement:
        """``measure`` on inputs and targets already checked and on the backend (the
        training engine validates its data set once)."""
        net = self.network
        K, xp = self.kernels, self.kernels.xp
        check_choice("perturb", perturb, PERTURBATIONS)
        sigma = check_number("sigma", sigma, 0.0, None)
        samples = check_number("samples", samples, 0, None, integer=True)
        L = net.n_layers
        if perturb == "layer":
            layer = check_number("layer", layer, 0, L - 1, integer=True,
                                 hint=f"the network has {L} layers (0..{L - 1})")
        batch = x.shape[0]

        P, perturbed_layer, n_rows, n_products = pass_layout(perturb, samples, layer, L,
                                                             self.random_layers())
        times = self.clock + np.arange(P, dtype=np.int64)
        K.set_clock(self.clock)
        node_eps, draws = self._node_perturbations(perturb, sigma, values, perturbed_layer,
                                                   batch)
        w_eps, b_eps = self._weight_perturbations(perturb, sigma, samples, values, bias_values,
                                                  times)

        inputs, pres, acts = [], [], []
        h = x[None]  # the activity below layer 0: the noise-free input, shared by passes
        for l, params in enumerate(self.layers):
            n, k = n_rows[l], n_products[l]
            h = self._layer_input(l, h, k, P)
            inputs.append(h)
            rows = h.shape[1]  # B L
            a = self._buffer(("a", l), (P, batch, net.widths[l + 1]))
            a_rows = a.reshape(P, rows, -1)  # (P, B L, C_out): the same memory
            if w_eps is not None:
                for p in range(P):
                    W = params.W + w_eps[l][p]
                    xp.matmul(h[p], W.T, out=a_rows[p])
                    if b_eps is not None:
                        a_rows[p] += b_eps[l][p]
            else:
                xp.matmul(h[:k].reshape(k * rows, -1), params.W.T,
                          out=a_rows[:k].reshape(k * rows, -1))
                a[k:n] = a[0]
            # per node index b N_l + j == (b L + position) C_out + channel: the draws of the
            # row view are the per-node draws, and the bias broadcasts over channels
            if draws is not None:  # draw eps ~ N(0, sigma^2) and add it with the bias
                K.perturb(a_rows[:n], node_eps[l][:n].reshape(n, rows, -1), params.b, sigma,
                          self.seed, l, times[:n], draws[l][:n])
            else:
                eps = node_eps[l] if node_eps is not None else None
                K.add_bias_and_perturbation(a_rows[:n], params.b,
                                            eps[:n].reshape(n, rows, -1)
                                            if eps is not None else None)
            self._add_noise(l, a, n, times, clean_pass)
            a[n:] = a[0]
            pres.append(a)
            out = self._buffer(("x", l), a.shape)
            self._activate(l, a[:n], out[:n], times[:n])
            out[n:] = out[0]
            acts.append(out)
            h = out

        flat = h.reshape(P * batch, -1)
        loss = K.loss(net.loss, flat, targets).reshape(P, batch)
        if self.readout is not None:
            pres, loss = self._read_out(pres, loss, times)
        K.advance_clock(P)
        self.clock += P
        return Measurement(
            inputs=tuple(inputs),
            pre=tuple(pres),
            outputs=h,
            losses=loss,
            targets=targets,
            injected=None if node_eps is None else tuple(node_eps),
            injected_weights=None if w_eps is None else tuple(w_eps),
            injected_bias=None if b_eps is None else tuple(b_eps),
            perturbed_layer=perturbed_layer,
            kernels=K,
            layers=tuple(self.layers),
            nodes=tuple(self._nodes.get(l) for l in range(L)) if self._nodes else None,
            activity=tuple(acts),
        )

    def infer(self, x: np.ndarray, noisy: bool = False) -> np.ndarray:
        """Network outputs (B, N_L) for one pass: noise-free, or with intrinsic noise.

        A noisy pass is one time step of the hardware (the clock advances); a noise-free
        pass touches no noise state. Host inputs, host outputs, on any backend.
        """
        x = self._check_inputs(x)
        K, xp = self.kernels, self.kernels.xp
        net = self.network
        time = np.array([self.clock], dtype=np.int64)
        K.set_clock(self.clock)
        h = K.asarray(x)[None]
        for l, params in enumerate(self.layers):
            h = self._layer_input(l, h, 1, 1, lambda _, shape: K.empty(shape, net.dtype))
            a = xp.ascontiguousarray(xp.matmul(h, params.W.T), dtype=net.dtype)
            K.add_bias_and_perturbation(a, params.b, None)
            a = a.reshape(1, x.shape[0], -1)
            if noisy:
                self._add_noise(l, a, 1, time, clean_pass=False)
            out = K.empty(a.shape, net.dtype)
            self._activate(l, a, out, time)
            h = out
        if noisy:
            K.advance_clock(1)
            self.clock += 1
        return K.to_host(h[0])

    def loss(self, x: np.ndarray, targets: np.ndarray, noisy: bool = False) -> np.ndarray:
        """Per-sample losses of one inference pass."""
        targets = losses.check_targets(self.network.loss, targets, self.network.widths[-1])
        return losses.loss(self.network.loss, self.infer(x, noisy), targets)

    # -- internals -----------------------------------------------------------------------
    def _check_inputs(self, x) -> np.ndarray:
        x = np.asarray(x)
        n_in = self.network.widths[0]
        if x.ndim != 2 or x.shape[1] != n_in:
            raise NoisysimError(
                f"inputs must have shape (batch, {n_in}) for this network, got {x.shape}"
            )
        if x.shape[0] < 1:
            raise NoisysimError("the batch is empty: pass at least one sample")
        check_finite_array("inputs", x)
        return np.ascontiguousarray(x, dtype=self.network.dtype)

    def _layer_input(self, l, h, k, P, alloc=None):
        """x*_{l-1} (P, B L, d) of layer l from the activity below, h (>= k, B, N_{l-1}):
        the input map's rows (``noisysim.layers``), then x* = rows R^T, for the first k
        passes; the others equal pass 0 (layer 0's input is noise-free: a broadcast view
        of one pass). ``alloc(name, shape)`` gives work arrays (default: ``_buffer``)."""
        K, xp = self.kernels, self.kernels.xp
        alloc = alloc or self._buffer
        m, R = self.network.maps[l], self.layers[l].R
        batch, stored = h.shape[1], 1 if l == 0 else P
        rows = h
        if not m.identity:
            rows = alloc(("rows", l), (stored, batch * m.positions, m.patch_size))
            m.forward(K, h[:k].reshape(k * batch, -1), rows[:k].reshape(-1, m.patch_size),
                      lambda shape: alloc(("pooled", l), shape))
        if R is not None:
            star = alloc(("x*", l), (stored,) + rows.shape[1:])
            xp.matmul(rows[:k].reshape(-1, m.patch_size), R.T,
                      out=star[:k].reshape(-1, m.patch_size))
            rows = star
        if l == 0:
            return xp.broadcast_to(rows[:1], (P,) + rows.shape[1:])
        if rows is not h:
            rows[k:] = rows[0]
        return rows

    def _buffer(self, name, shape):
        """An uninitialised array in the network's dtype; reused across calls if allowed."""
        K = self.kernels
        if not self.reuse_buffers:
            return K.empty(shape, self.network.dtype)
        buf = self._buffers.get(name)
        if buf is None or buf.shape != tuple(shape):
            buf = self._buffers[name] = K.empty(shape, self.network.dtype)
        return buf

    def _activate(self, l, a, out, times) -> None:
        """out = f_l(a) of layer l's nodes, or f_l(gain a + offset) when they vary
        (``noisysim.hardware.NodeVariation``); stochastic draws keyed by ``times``."""
        nodes = self._nodes.get(l)
        if nodes is not None:
            a = nodes.inputs(a, self._buffer(("u", l), a.shape))
        self.kernels.activation(self.network.activations[l], a, out, self.seed, l, times)

    def _read_out(self, pres, loss, times):
        """The measurement channel (``noisysim.hardware.Readout``): the pre-activations of
        layer l read with key layer l, the losses with key layer L, every pass p at its time
        times[p] (each pass is its own reading, also where a layer was held)."""
        K, ro = self.kernels, self.readout
        if ro.pre.active:
            measured = []
            for l, a in enumerate(pres):
                out = self._buffer(("measured", l), a.shape)
                K.readout(ro.pre, a, out, self.seed, l, times)
                measured.append(out)
            pres = measured
        if ro.loss.active:
            out = K.empty(loss.shape, loss.dtype)
            shape = loss.shape + (1,)  # one value per (pass, sample)
            K.readout(ro.loss, loss.reshape(shape), out.reshape(shape), self.seed,
                      self.network.n_layers, times)
            loss = out
        return pres, loss

    def _add_noise(self, l, a, n, times, clean_pass) -> None:
        """Add layer l's intrinsic noise to passes [start, n) of its pre-activations a
        (P, B, N_l), pass p at time times[p]; start = 1 when the reference pass is clean."""
        model = self.noise.get(l)
        start = 1 if clean_pass else 0
        if model is None or n <= start:
            return
        gain = self._gains.get(l)
        node_p = self._node_p.get(l)  # per-node switching probabilities, or None
        if gain is None:
            self.kernels.add_noise(model, a[start:n], times[start:n], self._noise_state[l],
                                   self.seed, l, node_p)
            return
        # variability (noisysim.hardware.Variability): node i adds g_i times its noise
        noise = self._buffer(("noise", l), a[start:n].shape)
        noise[...] = 0
        self.kernels.add_noise(model, noise, times[start:n], self._noise_state[l], self.seed,
                               l, node_p)
        noise *= gain
        a[start:n] += noise

    def _node_perturbations(self, perturb, sigma, values, perturbed_layer, batch):
        """Per layer (P, B, N_l) perturbation arrays, zero where a pass injects nothing,
        and which passes draw N(0, sigma^2) (drawn in the forward loop, fused with the bias
        addition); (None, None) when nothing is injected."""
        if perturb in ("none", "weights") or (values is None and sigma == 0):
            return None, None
        net = self.network
        P = perturbed_layer.shape[0]
        eps_by_layer, draws = [], []
        for l in range(net.n_layers):
            eps = self._buffer(("eps", l), (P, batch, net.widths[l + 1]))
            mask = ((perturbed_layer == l) | (perturbed_layer == -1)) & (np.arange(P) > 0)
            for p in np.flatnonzero(~mask):  # passes that inject nothing
                eps[p] = 0
            if values is not None and values[l] is not None and mask.any():
                v = np.asarray(values[l], dtype=net.dtype)
                _check_shape(f"values[{l}]", v, (int(mask.sum()), batch, net.widths[l + 1]))
                for j, p in enumerate(np.flatnonzero(mask)):
                    eps[p] = self.kernels.asarray(v[j])
            eps_by_layer.append(eps)
            draws.append(mask)
        return eps_by_layer, (None if values is not None else draws)

    def _weight_perturbations(self, perturb, sigma, samples, values, bias_values, times):
        if perturb != "weights":
            return None, None
        net = self.network
        P = 1 + samples
        w_out, b_out = [], []
        for l, params in enumerate(self.layers):
            w = np.zeros((P,) + params.W.shape, dtype=net.dtype)
            b = np.zeros((P, params.W.shape[0]), dtype=net.dtype)
            if values is not None:
                v = np.asarray(values[l], dtype=net.dtype)
                _check_shape(f"values[{l}]", v, (samples,) + params.W.shape)
                w[1:] = v
                if bias_values is not None and params.b is not None:
                    bv = np.asarray(bias_values[l], dtype=net.dtype)
                    _check_shape(f"bias_values[{l}]", bv, (samples, params.W.shape[0]))
                    b[1:] = bv
            elif sigma > 0:
                for p in range(1, P):
                    # One draw of W.size + N_l elements per layer and pass: weights first.
                    z = rng.normal_array(self.seed, rng.STREAM_PERTURB, times[p], l,
                                         (params.W.size + params.W.shape[0],))
                    w[p] = sigma * z[: params.W.size].reshape(params.W.shape)
                    if params.b is not None:
                        b[p] = sigma * z[params.W.size:]
            w_out.append(self.kernels.asarray(w))
            b_out.append(self.kernels.asarray(b))
        return w_out, (b_out if net.bias else None)


def pass_layout(perturb: str, samples: int, layer: int | None, n_layers: int,
                random_layers=()):
    """How the passes of one ``measure`` call are laid out, for every backend.

    Returns (P, perturbed_layer, n_rows, n_products): the number of passes; per pass the
    layer it perturbs alone (-1: all layers or none); per layer the passes it must compute
    (noise, activation), always a prefix of the pass list (pass 0 = reference, then for
    "each_layer" ``samples`` passes per layer in layer order); and, of those, the first
    ``n_products[l]`` whose inputs differ from the reference pass's and need their own
    matrix product. The others copy the reference's product (every pass at layer 0, whose
    input is noise-free) or the reference's whole row (a layer below the one a pass
    perturbs alone, when nothing there differs from the reference).

    random_layers : the layers that draw intrinsic randomness in every pass (noise or
        stochastic activations; ``Device.random_layers``). Every pass recomputes them and
        every layer above them at its own time step, whichever layer it perturbs; with none
        (a deterministic device, or ``hold_upstream``) a pass that perturbs only layer k
        reuses the reference pass below k.
    """
    L = n_layers
    first_random = min(random_layers, default=L)
    P = 1 + (L if perturb == "each_layer" else 1) * samples
    perturbed_layer = np.full(P, -1, dtype=np.int64)
    # moved[l]: passes [0, moved[l]) perturb a layer <= l, so their activity at layer l
    # differs from the reference pass's (a prefix: passes are in layer order)
    if perturb == "layer":
        perturbed_layer[1:] = layer
        moved = [P if l >= layer else 1 for l in range(L)]
    elif perturb == "each_layer":
        perturbed_layer[1:] = np.repeat(np.arange(L), samples)
        moved = [1 + (l + 1) * samples for l in range(L)]
    else:  # every perturbed pass perturbs (or is noisy in) every layer
        moved = [P] * L
    # from the first layer that draws intrinsic randomness up, every pass differs
    n_rows = [P if l >= first_random else m for l, m in enumerate(moved)]
    # layer l's input is layer l - 1's activity; layer 0's is the same in every pass
    n_products = [1] + n_rows[:-1]
    return P, perturbed_layer, n_rows, n_products


def exact_gradient(network: Network, x: np.ndarray, targets: np.ndarray,
                   variability: Variability | None = None, seed: int = 0):
    """The oracle: exact gradient of the batch-mean loss of the noise-free network (with
    ``variability``, the noise-free device of that seed: its nodes' activation gains and
    offsets included).

    For diagnostics (gradient alignment), outside the rule API: it reads the network's
    true derivatives, which no perturbation rule may. Discontinuous activations give their
    true derivative (zero almost everywhere).
    """
    device = Device(network, seed=seed, variability=variability)
    m = device.measure(x, targets)
    pass0 = lambda arrays: [a[0] for a in arrays]  # noqa: E731
    dout = network.loss_grad(m.outputs[0], m.targets)
    return network.backward(pass0(m.inputs), pass0(m.pre), dout, nodes=m.nodes,
                            activity=pass0(m.activity))


def _noise_gains(variability, noise, seed, network) -> dict:
    """{layer: per-node factors g (N_l,) float64} of the noisy layers (empty: none)."""
    if variability is None or variability.amplitude == 0.0:
        return {}
    for l, model in noise.items():
        if isinstance(model, MultiplicativeNoise):
            raise NoisysimError(
                f"noise.variability scales additive noise; layer {l} has multiplicative "
                "noise (already proportional to the signal): drop the variability or use "
                "another noise model")
    return {l: variability.factors(seed, l, network.widths[l + 1]) for l in noise}


def _flip_probabilities(variability, noise, seed, network) -> dict:
    """{layer: per-node switching probabilities (N_l,) float64} (empty: none)."""
    if variability is None or variability.p_flip == 0.0:
        return {}
    out = {}
    for l, model in noise.items():
        p = switching_probability(model)
        if p is None:
            raise NoisysimError(
                f"noise.variability.p_flip varies the switching probability of telegraph, "
                f"smtj, bernoulli and centred_bernoulli noise; layer {l} has {model.name} "
                "noise: drop p_flip from noise.variability or use one of those models")
        out[l] = variability.flip_probabilities(p, seed, l, network.widths[l + 1])
    return out


def _noise_by_layer(noise, noise_layers, n_layers) -> dict:
    if noise is None:
        return {}
    if isinstance(noise, Mapping):
        out = {}
        for l, model in noise.items():
            l = check_number("noise layer", l, 0, n_layers - 1, integer=True,
                             hint=f"the network has {n_layers} layers (0..{n_layers - 1})")
            out[l] = model
        return out
    if noise_layers == "all":
        layers = range(n_layers)
    else:
        layers = [check_number("noise layer", l, 0, n_layers - 1, integer=True,
                               hint=f"the network has {n_layers} layers (0..{n_layers - 1})")
                  for l in noise_layers]
    return {l: noise for l in layers}


def _check_shape(name, array, shape) -> None:
    if array.shape != tuple(shape):
        raise NoisysimError(f"{name} must have shape {tuple(shape)}, got {array.shape}")
