"""Feed-forward networks of dense and convolutional layers: parameters, initialisation,
backpropagation.

Layer l (0-based here, 1-based in the paper) maps its input x_{l-1} to
    x*_{l-1} = x_{l-1} R_l^T          (optional decorrelation, R_l = I at start)
    a_l      = x*_{l-1} W_l^T + b_l   (pre-activation; device noise is added here)
    x_l      = f_l(a_l)
with row-major batches (B, N). A convolutional layer is the same dense layer acting on rows
its input map forms from x_{l-1} (pooling, im2col: ``noisysim.layers``): x_{l-1} there is
the (B L, d) row matrix, a_l the (B L, C_out) result, i.e. the (B, N_l) feature map.
The forward pass with noise lives in ``noisysim.device``; this module owns the parameters
and the exact backward pass shared by the oracle and BP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from . import losses
from .activations import Activation, make_activation
from .arena import Arena
from .errors import NoisysimError, check_choice, check_number
from .kernels import rng
from .kernels.backend import CPU
from .layers import build, dense_maps, is_table_spec

INITIALISERS = ("he_normal", "xavier")
DTYPES = ("float32", "float64")


@dataclass
class LayerParams:
    """Parameters of one layer: W (N_l, N_{l-1}), b (N_l,) or None, R or None; for a conv
    layer W (C_out, d), b (C_out,) and R (d, d), d = C_in k k (``noisysim.layers``)."""

    W: np.ndarray
    b: np.ndarray | None
    R: np.ndarray | None


class LayerGrad(NamedTuple):
    """A gradient (estimate) for one layer: batch mean of d ell / dW and d ell / db."""

    W: np.ndarray
    b: np.ndarray | None


class Network:
    """A feed-forward network of dense and convolutional layers.

    Parameters
    ----------
    widths : sequence of int, or sequence of layer tables
        Layer widths including the input, e.g. ``[784, 500, 10]`` (two dense layers); or
        layer tables (``noisysim.layers.build``) such as ``[{"conv": 16, "kernel": 5},
        {"pool": "max", "size": 2}, {"dense": 10}]``, which need ``input_shape``. Either
        way ``self.widths`` are the node counts (input, then N_l = H_out W_out C_out) and
        ``self.maps`` each layer's input map.
    activation : str, Activation or sequence
        Hidden-layer activation (one for all, or one per hidden layer).
    activation_params : dict
        Parameters of the hidden activation when given by name (e.g. ``{"slope": 0.1}``).
    output_activation : str or Activation
        Applied to the last layer's pre-activation before the loss (default identity).
    bias : bool
        Whether layers have a bias (initialised to zero).
    init : "he_normal" | "xavier" | sequence of arrays
        He-normal: W ~ N(0, 2 / fan_in); Xavier: N(0, 2 / (fan_in + fan_out)); or the
        weight arrays themselves, shapes (N_l, N_{l-1}) ((C_out, d) for a conv layer:
        fan_in = d = C_in k k, fan_out = C_out k k). Draws come from the counter-based
        generator (stream INIT, layer l, element = flat index), so they are reproducible.
    decorrelation : bool
        Give every layer an input decorrelation matrix R_l (identity at start).
    dtype : "float32" | "float64"
    seed : int
    loss : "cross_entropy" | "softmax_mse" | "squared_error" (``noisysim.losses``)
    input_shape : (H, W, C) of the input images; needed by layer tables only
    """

    def __init__(
        self,
        widths: Sequence[int],
        activation: str | Activation | Sequence = "leaky_relu",
        activation_params: dict | None = None,
        output_activation: str | Activation = "identity",
        bias: bool = True,
        init: str | Sequence[np.ndarray] = "he_normal",
        decorrelation: bool = False,
        dtype: str = "float32",
        seed: int = 0,
        loss: str = "cross_entropy",
        input_shape: Sequence[int] | None = None,
    ):
        if is_table_spec(widths):
            self.spec = tuple(dict(t) for t in widths)
            self.widths, self.maps = build(self.spec, input_shape)
        else:
            self.spec = None
            self.widths = _check_widths(widths)
            self.maps = dense_maps(self.widths)
        self.dtype = np.dtype(check_choice("dtype", str(np.dtype(dtype)), DTYPES))
        self.loss = check_choice("loss", loss, losses.LOSSES)
        self.seed = int(check_number("seed", seed, 0, 2**63 - 1, integer=True))
        self.bias = bool(bias)
        self.decorrelation = bool(decorrelation)
        self.activations = _make_activations(
            activation, activation_params or {}, output_activation, self.n_layers
        )
        weights = _initial_weights(init, self.widths, self.maps, self.seed, self.dtype)
        #: every W and b as views of one flat host buffer (``noisysim.arena``); biases 0
        self.parameters = Arena(CPU, tuple((w.shape, (w.shape[0],) if self.bias else None)
                                           for w in weights), self.dtype)
        self.layers = []
        for w, views in zip(weights, self.parameters.layers):
            views.W[...] = w
            self.layers.append(LayerParams(
                W=views.W, b=views.b,
                R=np.eye(w.shape[1], dtype=self.dtype) if self.decorrelation else None))

    @property
    def n_layers(self) -> int:
        return len(self.widths) - 1

    @property
    def n_nodes(self) -> int:
        """Number of nodes that carry noise: all layers except the input, output included."""
        return int(sum(self.widths[1:]))

    @property
    def is_conv(self) -> bool:
        """Whether some layer is not a plain dense layer (a conv, or pooling)."""
        return not all(m.identity for m in self.maps)

    def __repr__(self) -> str:
        acts = ",".join(a.name for a in self.activations)
        layers = f"layers={list(self.spec)}, " if self.spec is not None else ""
        return (f"Network({layers}widths={list(self.widths)}, activations=[{acts}], loss={self.loss!r}, "
                f"bias={self.bias}, decorrelation={self.decorrelation}, dtype={self.dtype})")

    # -- parameters as data -------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """All parameters by name (W_0, b_0, R_0, W_1, ...), as copies."""
        out = {}
        for l, p in enumerate(self.layers):
            out[f"W_{l}"] = p.W.copy()
            if p.b is not None:
                out[f"b_{l}"] = p.b.copy()
            if p.R is not None:
                out[f"R_{l}"] = p.R.copy()
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for l, p in enumerate(self.layers):
            for name in ("W", "b", "R"):
                current = getattr(p, name)
                if current is None:
                    continue
                value = np.asarray(state[f"{name}_{l}"])
                if value.shape != current.shape:
                    raise NoisysimError(
                        f"parameter {name}_{l} must have shape {current.shape}, got {value.shape}"
                    )
                current[...] = value

    # -- exact derivatives --------------------------------------------------------------
    def backward(
        self,
        inputs: Sequence[np.ndarray],
        pre: Sequence[np.ndarray],
        dout: np.ndarray,
        surrogate: bool = False,
        nodes=None,
        activity: Sequence[np.ndarray] | None = None,
    ) -> list[LayerGrad]:
        """Backpropagate per-sample output gradients through one pass.

        inputs[l] = x*_{l-1} (B L_l, d_l) (a dense layer: (B, N_{l-1})), pre[l] = a_l
        (B, N_l), dout = d ell_n / d x_L (B, N_L); activity[l] = x_l (B, N_l), needed
        below a max pool (``Measurement.activity``). Returns batch-mean gradients. With
        ``surrogate`` the activations' straight-through derivatives replace the true ones
        (see ``noisysim.activations``); ``nodes``: per layer the device's NodeVariation or
        None (``node_backprop``).
        """
        return backward(CPU, self.layers, self.activations, inputs, pre, dout, surrogate,
                        nodes, self.maps, activity)

    def loss_grad(self, outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return losses.loss_grad(self.loss, outputs, targets)


def node_backprop(kernels, act, g, a, node, surrogate=False):
    """g * d x / d a of one layer's nodes at pre-activations a: g * f'(a), or, when the
    nodes vary (``node``: a noisysim.hardware.NodeVariation), g * f'(u) * gain with
    u = gain a + offset rounded as the forward pass rounds it. Returns the product (in g's
    array on the CPU, a new one on the GPU)."""
    if node is None:
        return kernels.backprop(act, g, a, surrogate)
    u = node.inputs(a, kernels.empty(a.shape, a.dtype))
    out = kernels.backprop(act, g, u, surrogate)
    out *= node.gain
    return out


def node_derivative(kernels, act, a, node):
    """d x / d a of one layer's nodes at a: f'(a), or gain f'(gain a + offset)."""
    if node is None:
        return kernels.derivative(act, a)
    return kernels.derivative(act, node.inputs(a, kernels.empty(a.shape, a.dtype))) * node.gain


def backward(kernels, layers, activations, inputs, pre, dout, surrogate=False, nodes=None,
             maps=None, activity=None, out=None):
    """``Network.backward`` on any backend: ``layers`` (LayerParams of the backend's arrays),
    ``activations`` per layer, the pass's inputs x*_{l-1} (rows) and pre-activations a_l,
    the per-sample output gradient dout (B, N_L); ``nodes`` per layer a NodeVariation or
    None (the device's activation gains and offsets; None: none), the input maps (None: an
    MLP) and the activities x_l (needed by max pooling). Returns batch-mean gradients
    (LayerGrad), written into ``out`` (per layer a LayerGrad of arrays) when given.

    delta = (1/B) d ell / d a_l: the batch mean's 1/B is applied once, to the (B, N_L)
    output gradient, and carried down linearly, never to an (N, N') product. A conv layer
    views delta as rows (B L, C_out): g_W = rows^T x* sums over positions; the upstream
    row gradient rows W R goes back through the input map (col2im, pooling's backward).
    """
    K, xp = kernels, kernels.xp
    dtype = layers[0].W.dtype
    n = dout.shape[0]
    grads: list[LayerGrad] = [None] * len(layers)  # type: ignore[list-item]
    delta = xp.ascontiguousarray(dout, dtype=dtype) * dtype.type(1.0 / n)
    nodes = nodes or (None,) * len(layers)
    delta = node_backprop(K, activations[-1], delta, pre[-1], nodes[-1], surrogate)
    for l in range(len(layers) - 1, -1, -1):
        p = layers[l]
        rows = delta.reshape(inputs[l].shape[0], -1)  # (B L, C_out); delta itself when L = 1
        if out is None:
            gW = xp.matmul(rows.T, inputs[l]).astype(dtype, copy=False)
            gb = K.column_sums(rows.astype(dtype, copy=False)) if p.b is not None else None
        else:
            gW = xp.matmul(rows.T, inputs[l], out=out[l].W)
            gb = K.column_sums(rows, out=out[l].b) if p.b is not None else None
        grads[l] = LayerGrad(gW, gb)
        if l > 0:
            upstream = xp.matmul(rows, p.W)
            if p.R is not None:
                upstream = xp.matmul(upstream, p.R)
            if maps is not None and not maps[l].identity:
                upstream = maps[l].backward(K, upstream, activity[l - 1], dtype)
            delta = node_backprop(K, activations[l - 1], upstream, pre[l - 1], nodes[l - 1],
                                  surrogate)
    return grads


def _check_widths(widths) -> tuple[int, ...]:
    try:
        widths = tuple(widths)
    except TypeError:
        raise NoisysimError(f"layers must be a list of widths like [784, 500, 10], got {widths!r}")
    if len(widths) < 2:
        raise NoisysimError(
            f"layers must list at least an input and an output width, got {list(widths)}"
        )
    return tuple(
        int(check_number(f"width of layer {i}", w, 1, None, integer=True,
                         hint="every layer needs at least one node"))
        for i, w in enumerate(widths)
    )


def _make_activations(activation, params, output_activation, n_layers) -> list[Activation]:
    n_hidden = n_layers - 1
    if isinstance(activation, (str, Activation)):
        act = make_activation(activation, **params)  # validated even without hidden layers
        hidden = [act] * n_hidden
    else:
        hidden = [make_activation(a) if not isinstance(a, dict) else make_activation(**a)
                  for a in activation]
        if len(hidden) != n_hidden:
            raise NoisysimError(
                f"activation list must have one entry per hidden layer ({n_hidden}), "
                f"got {len(hidden)}"
            )
    return hidden + [make_activation(output_activation)]


def _initial_weights(init, widths, maps, seed, dtype) -> list[np.ndarray]:
    """Per layer W (C_out, d): C_out = widths[l + 1] / L output channels (N_l for a dense
    layer), d the input map's row width."""
    shapes = [(widths[l + 1] // m.positions, m.patch_size) for l, m in enumerate(maps)]
    if not isinstance(init, str):
        arrays = [np.array(w, dtype=dtype) for w in init]
        if [a.shape for a in arrays] != shapes:
            raise NoisysimError(
                f"init arrays must have shapes {shapes}, got {[a.shape for a in arrays]}"
            )
        return arrays
    check_choice("init", init, INITIALISERS)
    out = []
    for l, (channels, fan_in) in enumerate(shapes):
        fan_out = maps[l].fan_out(channels)
        var = 2.0 / fan_in if init == "he_normal" else 2.0 / (fan_in + fan_out)
        z = rng.normal_array(seed, rng.STREAM_INIT, 0, l, (channels, fan_in))
        out.append((np.sqrt(var) * z).astype(dtype))
    return out
