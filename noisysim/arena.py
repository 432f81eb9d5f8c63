"""Parameter arenas: the W and b of every layer as views of one flat buffer.

An ``Arena`` lays out W_0, b_0, W_1, b_1, ... (absent biases skipped, each C-contiguous)
back to back in one 1-D array of the network's dtype on a backend. ``arena.layers[l]`` is a
``LayerGrad(W, b)`` of views into ``arena.flat``, so writing a view writes the arena and an
operation on ``arena.flat`` touches every parameter at once. The engine keeps four of them
alike: the parameters (the Network's on the host, the Device's on the GPU), the rules'
gradient estimates and the optimiser's moments, so that an optimiser update, the gradient
norms and the non-finite checks are one kernel launch for all layers (apex's and PyTorch's
fused optimisers do the same) instead of one per array.

``segments`` are (layer, offset, size) of each array in layout order; kernels that report
per layer (the norms of ``noisysim.kernels.step``) read them as two int64 tables,
``starts`` (n + 1 offsets) and ``seg_layer`` (n layers), copied to the backend once per
arena (``tables``). The decorrelation matrices R are not in an arena: decorrelation
updates each R by its own matrix products.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import NoisysimError

#: one layer's array shapes: (W shape, b shape or None)
Layout = tuple[tuple[tuple[int, ...], tuple[int, ...] | None], ...]


class Arena:
    """One flat buffer of ``dtype`` on the backend ``kernels`` holding arrays of ``layout``
    (per layer the W shape and the b shape or None), zero-filled."""

    def __init__(self, kernels, layout: Layout, dtype):
        from .network import LayerGrad

        self.kernels = kernels
        self.layout = tuple((tuple(w), None if b is None else tuple(b)) for w, b in layout)
        self.dtype = np.dtype(dtype)
        segments, offset = [], 0
        for l, shapes in enumerate(self.layout):
            for shape in shapes:
                if shape is not None:
                    size = int(np.prod(shape, dtype=np.int64))
                    segments.append((l, offset, size))
                    offset += size
        self.segments: tuple[tuple[int, int, int], ...] = tuple(segments)
        self.size = offset
        self.flat = kernels.zeros(offset, self.dtype)
        views, i = [], 0
        for w_shape, b_shape in self.layout:
            pair = []
            for shape in (w_shape, b_shape):
                if shape is None:
                    pair.append(None)
                    continue
                _, start, size = self.segments[i]
                pair.append(self.flat[start:start + size].reshape(shape))
                i += 1
            views.append(LayerGrad(*pair))
        self.layers = views
        self.starts = np.array([s[1] for s in segments] + [offset], dtype=np.int64)
        self.seg_layer = np.array([s[0] for s in segments], dtype=np.int64)
        self._tables = None

    @classmethod
    def like(cls, kernels, arrays: Sequence, dtype=None) -> "Arena":
        """An arena with the shapes of ``arrays`` (LayerParams or LayerGrad per layer), in
        their W's dtype unless ``dtype`` is given."""
        arrays = list(arrays)
        if not arrays:
            raise NoisysimError("an arena needs at least one layer, got an empty list")
        layout = tuple((p.W.shape, None if p.b is None else p.b.shape) for p in arrays)
        return cls(kernels, layout, arrays[0].W.dtype if dtype is None else dtype)

    @property
    def n_layers(self) -> int:
        return len(self.layout)

    def tables(self):
        """(starts, seg_layer) on the backend, copied there once."""
        if self._tables is None:
            self._tables = (self.kernels.asarray(self.starts),
                            self.kernels.asarray(self.seg_layer))
        return self._tables

    def segment(self, i: int):
        """The flat view of segment i."""
        _, start, size = self.segments[i]
        return self.flat[start:start + size]

    def holds(self, arrays: Sequence) -> bool:
        """Whether every W and b of ``arrays`` is this arena's own view (the same object)."""
        arrays = list(arrays)
        if len(arrays) != len(self.layers):
            return False
        return all(a is v for p, mine in zip(arrays, self.layers)
                   for a, v in ((p.W, mine.W), (p.b, mine.b)))

    def load(self, arrays: Sequence) -> None:
        """Copy each W and b of ``arrays`` that is not already this arena's view into it
        (cast to the arena's dtype)."""
        for p, mine in zip(arrays, self.layers):
            for a, v in ((p.W, mine.W), (p.b, mine.b)):
                if a is not None and a is not v:
                    v[...] = a

    def store(self, arrays: Sequence) -> None:
        """Copy the arena's values into the W and b of ``arrays`` that are not its views."""
        for p, mine in zip(arrays, self.layers):
            for a, v in ((p.W, mine.W), (p.b, mine.b)):
                if a is not None and a is not v:
                    a[...] = v
