"""Layer specs of convolutional networks: what each parametrised layer does to its input.

Images are NHWC-flat: a batch of (H, W, C) maps is a (B, H W C) array, element (i, j, c) at
column (i W + j) C + c, so every node of a feature map is one column and a layer's nodes
N_l = H_out W_out C_out (noise, perturbations, read-out work per node unchanged).

Every parametrised layer l (dense or conv) is a dense layer acting on *rows* that its
``InputMap`` forms from the activity x_{l-1} (B, N_{l-1}) of the layer below:

1. optional pooling (max or average over size x size windows with a stride, no padding):
   x_{l-1} -> (B, H_p W_p C);
2. dense: the pooled rows themselves (flattening is the identity on NHWC-flat rows),
   L = 1 position, d = H_p W_p C;
   conv (kernel k, stride s, padding p): im2col, one patch row per (sample, position),
   L = H_out W_out positions, d = k k C, H_out = (H_p + 2 p - k) // s + 1.

Then, for rows X (B L, d): x* = X R^T (R (d, d), one per layer, shared by the positions),
a = x* W^T + b with W (C_out, d), b (C_out,): the (B L, C_out) result is, in memory, the
(B, L C_out) = (B, N_l) pre-activation. A conv weight gradient is therefore a sum over
positions of the per-row outer products: g_W = delta_rows^T X*.

``build`` turns the config's layer list (widths, or tables such as ``{conv = 32, kernel =
3, padding = 1}``, ``{pool = "max", size = 2}``, ``{dense = 10}``) into widths and maps,
validating it once with one-line errors that name the layer and the sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import NoisysimError

POOL_KINDS = ("max", "avg")
#: keys each kind of layer table accepts (the kind's own key first)
LAYER_KEYS = {"conv": ("conv", "kernel", "stride", "padding"),
              "pool": ("pool", "size", "stride"),
              "dense": ("dense",)}


def out_size(n: int, k: int, stride: int, pad: int) -> int:
    """Positions along one axis: (n + 2 pad - k) // stride + 1."""
    return (n + 2 * pad - k) // stride + 1


@dataclass(frozen=True)
class InputMap:
    """How layer l forms its rows from the activity below, of image shape ``shape``
    (H, W, C) (a dense chain: (1, 1, N)). ``pool`` None or "max" | "avg" with
    ``pool_size``, ``pool_stride``; ``kernel`` 0 for a dense layer, else the conv's k with
    ``stride`` and ``padding``."""

    shape: tuple
    pool: str | None = None
    pool_size: int = 0
    pool_stride: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0

    @property
    def is_conv(self) -> bool:
        return self.kernel > 0

    @property
    def identity(self) -> bool:
        """The rows are the activity itself (a dense layer without pooling: every MLP)."""
        return self.pool is None and not self.is_conv

    @property
    def pooled_shape(self) -> tuple:
        H, W, C = self.shape
        if self.pool is None:
            return self.shape
        return (out_size(H, self.pool_size, self.pool_stride, 0),
                out_size(W, self.pool_size, self.pool_stride, 0), C)

    @property
    def positions(self) -> int:
        """L: rows per sample (1 for a dense layer)."""
        if not self.is_conv:
            return 1
        H, W, _ = self.pooled_shape
        return (out_size(H, self.kernel, self.stride, self.padding)
                * out_size(W, self.kernel, self.stride, self.padding))

    @property
    def patch_size(self) -> int:
        """d: the width of a row (the fan-in of every node)."""
        H, W, C = self.pooled_shape
        return self.kernel * self.kernel * C if self.is_conv else H * W * C

    def out_shape(self, channels: int) -> tuple:
        """Image shape of the layer's output with ``channels`` output channels."""
        if not self.is_conv:
            return (1, 1, channels)
        H, W, _ = self.pooled_shape
        return (out_size(H, self.kernel, self.stride, self.padding),
                out_size(W, self.kernel, self.stride, self.padding), channels)

    def fan_out(self, channels: int) -> int:
        """Xavier's fan-out: the nodes one input element reaches, C_out k k (conv)."""
        return channels * self.kernel * self.kernel if self.is_conv else channels

    def forward(self, K, x, out, scratch) -> None:
        """out (R L, d) = the rows of the activity x (R, N_{l-1}); ``scratch(shape)`` gives
        a work array (the pooled images, when a conv follows a pool). Not for identity
        maps (their rows are x itself)."""
        if self.is_conv:
            src = x
            if self.pool is not None:
                src = scratch((x.shape[0], int(np.prod(self.pooled_shape))))
                K.pool_forward(x, self.shape, self.pool, self.pool_size, self.pool_stride, src)
            K.im2col(src, self.pooled_shape, self.kernel, self.stride, self.padding, out)
        else:
            K.pool_forward(x, self.shape, self.pool, self.pool_size, self.pool_stride, out)

    def backward(self, K, g, x, dtype):
        """The adjoint of ``forward`` at the activity x (R, N_{l-1}): row gradients
        g (R L, d) -> (R, N_{l-1}). Max pooling routes each window's gradient to its first
        maximum (the one the forward pass took); the identity map returns g."""
        rows = x.shape[0]
        if self.is_conv:
            pooled = K.empty((rows, int(np.prod(self.pooled_shape))), dtype)
            K.col2im(xp_contiguous(K, g), self.pooled_shape, self.kernel, self.stride,
                     self.padding, pooled)
            g = pooled
        if self.pool is None:
            return g
        out = K.empty(x.shape, dtype)
        K.pool_backward(xp_contiguous(K, g), x, self.shape, self.pool, self.pool_size,
                        self.pool_stride, out)
        return out

    def tangent(self, K, dx, x):
        """The map's derivative (forward mode) at the activity x (B, N_{l-1}) applied to
        tangents dx (T, B, N_{l-1}): (T, B L, d). Everything but max pooling is linear; max
        pooling passes on the tangent of each window's first maximum."""
        xp, dtype = K.xp, dx.dtype
        T, B = dx.shape[0], dx.shape[1]
        flat = xp.ascontiguousarray(dx.reshape(T * B, -1))
        if self.pool == "max":
            H, W, C = self.shape
            size, stride = self.pool_size, self.pool_stride
            Hp, Wp, _ = self.pooled_shape
            win = K.empty((B * Hp * Wp, size * size * C), dtype)
            K.im2col(x, self.shape, size, stride, 0, win)  # windows as rows, columns (u, v, c)
            first = xp.argmax(win.reshape(-1, size * size, C), axis=1)  # first maximum
            twin = K.empty((T * B * Hp * Wp, size * size * C), dtype)
            K.im2col(flat, self.shape, size, stride, 0, twin)
            picked = xp.take_along_axis(twin.reshape(T, -1, size * size, C),
                                        first[None, :, None, :], axis=2)
            flat = xp.ascontiguousarray(picked.reshape(T * B, -1))
        elif self.pool == "avg":
            pooled = K.empty((T * B, int(np.prod(self.pooled_shape))), dtype)
            K.pool_forward(flat, self.shape, "avg", self.pool_size, self.pool_stride, pooled)
            flat = pooled
        if self.is_conv:
            rows = K.empty((T * B * self.positions, self.patch_size), dtype)
            K.im2col(flat, self.pooled_shape, self.kernel, self.stride, self.padding, rows)
            flat = rows
        return flat.reshape(T, B * self.positions, self.patch_size)


def xp_contiguous(K, a):
    """a as a C-contiguous 2-D array (the kernels' contract); a view when it already is."""
    return K.xp.ascontiguousarray(a)


def dense_maps(widths: Sequence[int]) -> tuple:
    """The maps of an MLP: identity on rows of widths[l] nodes."""
    return tuple(InputMap(shape=(1, 1, int(n))) for n in widths[:-1])


def is_table_spec(spec) -> bool:
    """Whether a layer list is in table form (conv/pool/dense tables), not widths."""
    return (isinstance(spec, (list, tuple)) and len(spec) > 0
            and any(isinstance(s, Mapping) for s in spec))


def describe(entry) -> str:
    """A layer table as the error messages name it: "conv 64, kernel 5"."""
    if not isinstance(entry, Mapping):
        return repr(entry)
    return ", ".join(f"{k} {v}" for k, v in entry.items())


def build(spec, input_shape) -> tuple[tuple, tuple]:
    """(widths, maps) of a layer list in table form on inputs of image shape (H, W, C).

    widths = (H W C, N_1, ..., N_L) with N_l = H_out W_out C_out; maps[l] the InputMap of
    parametrised layer l. Raises a one-line NoisysimError for an unknown kind, a missing
    or bad key, a pool that is not followed by a conv or dense layer, or a shape that does
    not fit.
    """
    shape = _check_input_shape(input_shape)
    widths, maps = [int(np.prod(shape))], []
    pending: dict | None = None  # a pool waiting for the layer that consumes it
    for i, entry in enumerate(spec):
        where = f"model.layers[{i}] ({describe(entry)})"
        kind = _kind(entry, where)
        if kind == "pool":
            if pending is not None:
                raise NoisysimError(f"{where}: two pools in a row; merge them into one pool "
                                    "of a larger size")
            size = _int(entry, "size", where, None, 1)
            stride = _int(entry, "stride", where, size, 1)
            if entry["pool"] not in POOL_KINDS:
                raise NoisysimError(f"{where}: pool must be one of {', '.join(POOL_KINDS)}, "
                                    f"got {entry['pool']!r}")
            H, W, C = shape
            if size > H or size > W:
                raise NoisysimError(f"{where}: input {H}x{W}x{C} is smaller than the pool "
                                    "window; use a smaller size")
            pending = dict(pool=entry["pool"], pool_size=size, pool_stride=stride)
            continue
        n_out = _int(entry, kind, where, None, 1)
        if kind == "dense":
            m = InputMap(shape=shape, **(pending or {}))
        else:
            k = _int(entry, "kernel", where, None, 1)
            m = InputMap(shape=shape, kernel=k, stride=_int(entry, "stride", where, 1, 1),
                         padding=_int(entry, "padding", where, 0, 0), **(pending or {}))
            H, W, C = m.pooled_shape
            if H + 2 * m.padding < k or W + 2 * m.padding < k:
                pad = f" with padding {m.padding}" if m.padding else ""
                raise NoisysimError(f"{where}: input {H}x{W}x{C}{pad} is smaller than the "
                                    "kernel; use padding or a smaller kernel")
        pending = None
        maps.append(m)
        shape = m.out_shape(n_out)
        widths.append(int(np.prod(shape)))
    if pending is not None:
        raise NoisysimError("model.layers: the last layer is a pool; a pool must be followed "
                            "by a conv or dense layer (end with e.g. {dense = 10})")
    if not maps:
        raise NoisysimError("model.layers lists no conv or dense layer; end with e.g. "
                            "{dense = 10}")
    return tuple(widths), tuple(maps)


def _check_input_shape(shape) -> tuple:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise NoisysimError(f"a network in table form needs the input image shape (H, W, C) "
                            f"of positive sizes, got {shape!r}; use an image data set or set "
                            "model.input_shape = [H, W, C]")
    return shape


def _kind(entry, where) -> str:
    if not isinstance(entry, Mapping):
        raise NoisysimError(f"{where}: a layer list in table form takes tables like "
                            "{conv = 32, kernel = 3}, {pool = \"max\", size = 2} or "
                            "{dense = 10} only")
    kinds = [k for k in LAYER_KEYS if k in entry]
    if not kinds:
        first = next(iter(entry), None)
        raise NoisysimError(f"{where}: unknown layer kind {first!r}; valid kinds: "
                            f"{', '.join(LAYER_KEYS)}, e.g. {{conv = 16, kernel = 3}}")
    if len(kinds) > 1:
        raise NoisysimError(f"{where}: a layer is one kind, found {' and '.join(kinds)}; "
                            "give each its own table")
    kind = kinds[0]
    unknown = [k for k in entry if k not in LAYER_KEYS[kind]]
    if unknown:
        raise NoisysimError(f"{where}: a {kind} layer has no key {unknown[0]!r}; valid keys: "
                            f"{', '.join(LAYER_KEYS[kind])}")
    return kind


def _int(entry, key, where, default, lo) -> int:
    if key not in entry:
        if default is None:
            given = ", ".join(f"{k} = {v!r}" for k, v in entry.items())
            raise NoisysimError(f"{where}: missing {key}; e.g. {{{given}, {key} = 3}}")
        return default
    v = entry[key]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise NoisysimError(f"{where}: {key} must be an integer >= {lo}, got {v!r}")
    return int(v)
