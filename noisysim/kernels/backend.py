"""The backend interface: what the engine calls, implemented once per kernel set.

The engine (``Device.measure``, the rules' estimates, the optimisers, decorrelation and the
training step) is written once against a ``Kernels`` object. ``CPU`` (this module) runs numba
njit kernels and numpy's BLAS on host arrays; ``noisysim.kernels.cuda_backend.CudaKernels``
runs numba.cuda kernels and cuBLAS (through CuPy) on device arrays. Every operation that is
not a matrix product is one call here, fused where the data allows:

memory      ``xp`` (the array module: matrix products, views, slicing), ``asarray`` (host ->
            backend), ``to_host`` (backend -> host numpy; a read on the GPU), ``empty``,
            ``zeros``, ``eager`` (True when host reads cost nothing)
forward     ``perturb`` (draw N(0, sigma^2) node perturbations, add bias and perturbation),
            ``add_bias_and_perturbation``, ``activation``, ``add_noise`` (a device noise
            model; its state lives on the backend: ``noise_state`` / ``noise_state_to_host``),
            ``loss``, ``loss_grad``
backward    ``backprop`` (g * f'(a)), ``derivative``, ``column_sums`` (bias gradients)
rules       ``squared_norms`` and ``node_gradient`` of ``Vectors`` (node-space directions:
            injected perturbations or measured activity changes), ``loss_scale``
step        ``step_stats`` (loss, loss changes, accuracy), ``sum_squares`` (gradient norms and
            non-finite elements), ``adam_update`` / ``sgd_update`` (with update norms,
            parameter flags, clipping), ``decorrelation_step``, ``record`` (the step's
            verdict, see ``noisysim.kernels.step``), ``host_blocked``
hardware    ``readout`` (the measurement channel), ``weight_write`` and ``program_weights``
            (non-ideal weight devices): ``noisysim.hardware``
conv        convolutional layers (``noisysim.layers``), images NHWC-flat (R, H W C), every
            array 2-D C-contiguous in the network dtype, ``shape`` = (H, W, C) the INPUT
            image shape, ``kind`` "max" | "avg", results written into ``out``:
            ``im2col(x, shape, k, stride, pad, out)``         x (R, H W C) -> (R L, k k C)
            ``col2im(cols, shape, k, stride, pad, out)``      its adjoint -> (R, H W C)
            ``pool_forward(x, shape, kind, size, stride, out)``        -> (R, H_o W_o C)
            ``pool_backward(g, x, shape, kind, size, stride, out)``    -> (R, H W C)
            (``noisysim.kernels.conv`` documents the layout; tests/naive_conv.py the twins)

The statistics of a step go into one float64 array on the backend (``noisysim.kernels.step``
documents the layout) and the host reads it when it needs it: every step on the CPU, only on
logged steps on the GPU, whose kernels apply the step's guards themselves.
"""

from __future__ import annotations

import math

import numpy as np

from . import conv, cpu, step
from . import hardware as _hw
from .cpu import adam_update as _adam_update
from .cpu import decorrelation_delta as _decorrelation_delta

_EMPTY = {c: np.zeros(0, dtype=c) for c in "fd"}
#: loss name -> (per-row loss kernel, gradient kernel); squared_error's gradient is numpy
_CPU_LOSSES = {"cross_entropy": (cpu.cross_entropy, cpu.cross_entropy_grad),
               "softmax_mse": (cpu.softmax_mse, cpu.softmax_mse_grad),
               "squared_error": (cpu.squared_error, None)}
_EMPTY3 = {c: np.zeros((0, 0, 0), dtype=c) for c in "fd"}


class Vectors:
    """Node-space directions of K passes for a node rule, read from a (P, B, N) array:
    ``source[first + j]`` (``diff=False``: injected perturbations) or
    ``source[first + j] - source[0]`` (``diff=True``: measured activity changes da),
    j < count. Backends read them where they lie; ``value()`` materialises them once."""

    __slots__ = ("source", "first", "count", "diff", "_value")

    def __init__(self, source, first: int, count: int, diff: bool):
        self.source, self.first, self.count, self.diff = source, int(first), int(count), diff
        self._value = None

    def value(self):
        """The (K, B, N) directions as an array (a view when ``diff`` is False)."""
        if self._value is None:
            v = self.source[self.first:self.first + self.count]
            self._value = v - self.source[0] if self.diff else v
        return self._value


class CpuKernels:
    """The CPU kernel set: numba njit kernels (``noisysim.kernels.cpu``, ``.noise``) and
    numpy's BLAS, on host arrays."""

    name = "cpu"
    xp = np
    eager = True  # reading a statistic is free: the engine checks every step

    # -- memory ----------------------------------------------------------------------------
    def asarray(self, a, dtype=None):
        return np.ascontiguousarray(a, dtype=dtype)

    def to_host(self, a) -> np.ndarray:
        """The array itself on the CPU (callers that keep it copy it)."""
        return np.asarray(a)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def gather_batch(self, x, y, order, start, stop):
        """(x[order[start:stop]], y[order[start:stop]]): a training batch in data order."""
        idx = order[start:stop]
        return x[idx], y[idx]

    def set_clock(self, t) -> None:
        """The GPU keeps the pass clock on the device for its kernels; the CPU's kernels
        take the times themselves."""

    def advance_clock(self, n) -> None:
        """See ``set_clock``."""

    def hold_counters(self, values: dict) -> None:
        """The GPU's device counters (the pass clock, the update count, the step, the
        batch's first row) hold ``values`` by name before a step that may be replayed as a
        CUDA graph; the CPU has none."""

    # -- forward ---------------------------------------------------------------------------
    def perturb(self, a, eps, bias, sigma, seed, layer, times, draw) -> None:
        """For every pass p with draw[p]: eps[p] = sigma * normal(key(seed, STREAM_PERTURB,
        times[p], layer), b * N + j); then a += bias and a += eps for those passes (a, eps:
        (n, B, N); rows of passes without a draw are left untouched in eps)."""
        cpu.draw_and_add_perturbation(
            a, eps, bias if bias is not None else _EMPTY[a.dtype.char], bias is not None,
            sigma, np.uint64(seed), np.uint64(layer), times.astype(np.uint64), draw)

    def add_bias_and_perturbation(self, a, bias, eps) -> None:
        """a[p, b, :] += bias, then a += eps (either may be None); a, eps: (n, B, N)."""
        cpu.add_bias_and_perturbation(
            a, bias if bias is not None else _EMPTY[a.dtype.char],
            eps if eps is not None else _EMPTY3[a.dtype.char], bias is not None,
            eps is not None)

    def activation(self, act, a, out, seed, layer, times) -> None:
        """out = f(a) for (n, B, N) stacked passes, pass p's stochastic draws at times[p]."""
        act.apply(a, out, seed, layer, times)

    def add_noise(self, model, a, times, state, seed, layer, node_p=None) -> None:
        """a (n, B, N) += the intrinsic noise of ``model`` at pass times ``times``; node_p:
        None or per-node switching probabilities (``NoiseModel.apply``)."""
        model.apply(a, times, state, seed, layer, node_p)

    def noise_state(self, model, host_state: dict) -> dict:
        return {k: np.array(v) for k, v in host_state.items()}

    def noise_state_to_host(self, model, state: dict) -> dict:
        return {k: v.copy() for k, v in state.items()}

    def loss(self, name, outputs, targets):
        """Per-row loss (R,) float64 of outputs (R, N_L) against B targets (R = P * B)."""
        out = np.empty(outputs.shape[0], dtype=np.float64)
        _CPU_LOSSES[name][0](outputs, targets, out)
        return out

    def loss_grad(self, name, outputs, targets):
        """d ell_r / d outputs_r per row (not divided by the batch size), outputs' dtype."""
        if name == "squared_error":
            reps = outputs.shape[0] // targets.shape[0]
            return (outputs - np.tile(targets, (reps, 1))).astype(outputs.dtype)
        out = np.empty(outputs.shape, dtype=outputs.dtype)
        _CPU_LOSSES[name][1](outputs, targets, out)
        return out

    # -- backward --------------------------------------------------------------------------
    def backprop(self, act, g, a, surrogate):
        """g * f'(a) (or the surrogate): in place in g on the CPU; use the returned array."""
        return act.backprop(g, a, surrogate)

    def derivative(self, act, a):
        """f'(a), a new array of a's shape and dtype."""
        return act.derivative(a)

    # -- rule statistics -------------------------------------------------------------------
    def squared_norms(self, v: Vectors):
        """||v_{j,b}||^2 (K, B) in float64."""
        d = v.value()
        return np.einsum("kbn,kbn->kb", d, d, dtype=np.float64)

    def loss_scale(self, losses, first, count, dtype, sq=None, factor=1.0, divisor=1.0):
        """Per pass and sample coefficient (count, B) of a node rule, with dell =
        losses[first + j] - losses[0]: dell * factor / sq (0 where sq == 0) when ``sq`` is
        given (INP, ANP), else dell / divisor (NP). float64 here; node_gradient rounds it to
        the rule's dtype."""
        dell = losses[first:first + count] - losses[0]
        if sq is None:
            return dell / divisor
        out = np.zeros_like(sq)
        np.divide(dell * factor, sq, out=out, where=sq > 0)
        return out

    def node_gradient(self, scale, v: Vectors, x_ref, has_bias, out=None):
        """(g_W, g_b): g_W = mean_{k,n} scale_{k,n} v_{k,n} x*_n^T, g_b = mean_{k,n}
        scale_{k,n} v_{k,n}, in the dtype of v. The means' 1/(K B) scales the (B, N) factor
        once, never the (N, N') gradient. A conv layer's x_ref holds B L patch rows: c is
        viewed as rows (B L, C_out) and g_W = rows^T x*, g_b = column sums of rows, sums
        over positions with the batch mean still over the B samples. ``out``: a LayerGrad
        of arrays to write g_W and g_b into (the engine's gradient arena), or None."""
        vectors = v.value()
        n_passes, batch = scale.shape
        dtype = vectors.dtype
        c = np.einsum("kb,kbn->bn", scale.astype(dtype), vectors)
        c *= dtype.type(1.0 / (n_passes * batch))
        rows = c.reshape(x_ref.shape[0], -1)  # c itself for a dense layer (L = 1)
        g_W = np.matmul(rows.T, x_ref.astype(dtype, copy=False),
                        out=None if out is None else out.W)
        g_b = self.column_sums(rows, None if out is None else out.b) if has_bias else None
        return g_W, g_b

    def column_sums(self, rows, out=None):
        """rows.sum(axis=0) of a 2-D array, in its dtype (bias gradients), into ``out``
        when given."""
        if out is None:
            out = np.empty(rows.shape[1], rows.dtype)
        cpu.column_sums(np.ascontiguousarray(rows), out)
        return out

    # -- the step's statistics -------------------------------------------------------------
    def step_stats(self, losses, outputs, labels, stats) -> None:
        """LOSS, DL_MEAN, DL_STD, ACCURACY (labels not None), BAD_LOSSES into stats."""
        ref = losses[0]
        stats[step.LOSS] = ref.mean()
        stats[step.BAD_LOSSES] = np.count_nonzero(~np.isfinite(ref))
        if losses.shape[0] > 1:
            dl = losses[1:] - ref
            stats[step.DL_MEAN] = dl.mean()
            stats[step.DL_STD] = dl.std()
        if labels is not None:
            stats[step.ACCURACY] = (outputs.argmax(axis=1) == labels).mean()

    def sum_squares(self, arrays, stats, sq_index, bad_index) -> None:
        """stats[sq_index] += sum of squares of the arrays (None skipped);
        stats[bad_index] += their non-finite elements."""
        for a in arrays:
            if a is None:
                continue
            s = _sum_squares(a)
            stats[sq_index] += s
            if not math.isfinite(s):
                stats[bad_index] += np.count_nonzero(~np.isfinite(a))

    def host_blocked(self, stats, failure, n_layers, upto) -> bool:
        """Whether the host must skip a stage (``step.blocked``); the kernels of a backend
        that is not eager guard themselves and this says False there."""
        return step.blocked(stats, failure, n_layers, upto)

    def record(self, stats, failure, n_layers, step_number) -> None:
        step.record(stats, failure, n_layers, step_number)

    def gradient_norms(self, grads, stats, failure, n_layers, clip) -> None:
        """For each layer l of the arena ``grads`` (``noisysim.arena``): stats[grad_sq(l)]
        += ||g_W_l||^2 + ||g_b_l||^2 and stats[grad_bad(l)] += their non-finite elements
        (the GPU also decides there whether the update may run, and its clip factor)."""
        for i, (l, _, _) in enumerate(grads.segments):
            self.sum_squares([grads.segment(i)], stats, step.grad_sq(n_layers, l),
                             step.grad_bad(n_layers, l))

    def update_gate(self, stats, failure, n_layers, clip, dtype) -> bool:
        """Whether the optimiser must skip this step (the GPU decides on the device)."""
        return step.blocked(stats, failure, n_layers, step.BEFORE_UPDATE)

    @staticmethod
    def clip_scale(stats, n_layers, clip) -> float:
        """min(1, clip / ||g||) from the step's gradient norms (1 without clipping)."""
        norm = math.sqrt(step.grad_norm_sq(stats, n_layers))
        return clip / norm if clip is not None and norm > clip else 1.0

    def adam_update(self, params, grads, m, v, opt, count, stats, n_layers) -> None:
        """One Adam update of every array of the arena ``params`` in place (gradients,
        moments: arenas of the same layout): gradient scaled by the clip factor, bias
        corrections in float64; per layer stats[update_sq(l)] += ||Delta p||^2, or
        stats[param_bad(l)] += 1 when p is no longer finite. The caller checked the gate."""
        scale = self.clip_scale(stats, n_layers, opt.clip)
        correction1 = 1.0 - opt.beta1 ** count
        correction2 = 1.0 - opt.beta2 ** count
        lr_c1, inv_c2 = opt.lr_at(count) / correction1, 1.0 / correction2
        t = params.dtype.type
        for i, (layer, _, _) in enumerate(params.segments):
            g = grads.segment(i)
            if scale != 1.0:
                g = g * t(scale)
            sq = _adam_update(params.segment(i), g, m.segment(i), v.segment(i), opt.beta1,
                              opt.beta2, lr_c1, inv_c2, opt.eps)
            _add_update(stats, n_layers, layer, sq)

    def sgd_update(self, params, grads, velocity, opt, count, stats, n_layers) -> None:
        """One SGD update (momentum, Nesterov, coupled weight decay) of every array of the
        arena ``params`` in place (``velocity``: an arena, or None without momentum)."""
        t = params.dtype.type
        scale = self.clip_scale(stats, n_layers, opt.clip)
        lr = t(opt.lr_at(count))
        for i, (layer, _, _) in enumerate(params.segments):
            p, g = params.segment(i), grads.segment(i)
            if scale != 1.0:
                g = g * t(scale)
            if opt.weight_decay:
                g = g + t(opt.weight_decay) * p
            if velocity is None:
                delta = lr * g
            else:
                mu = t(opt.momentum)
                vel = velocity.segment(i)
                vel *= mu
                vel += g
                delta = lr * (g + mu * vel if opt.nesterov else vel)
            p -= delta
            _add_update(stats, n_layers, layer, _sum_squares(delta) if np.isfinite(p).all()
                        else math.nan)

    def decorrelation_step(self, R, x, lr, kappa, scratch, stats, failure, n_layers,
                           layer) -> None:
        """R <- R - lr [(1 - kappa) C + kappa V] R in place (``noisysim.decorrelation``),
        unless R - Delta R would not be finite: then stats[decor_bad(layer)] = 1 and R is
        left alone; stats[decor_sq(layer)] = ||Delta R||^2."""
        n = x.shape[0]
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite steps are flagged
            second = np.einsum("ni,ni->i", x, x) / R.dtype.type(n)  # diag of D, O(B d)
            np.matmul(x.T, x @ R, out=scratch)                     # B * M, O(B d^2)
            # lr * [(1 - kappa)/B * (B M) + (2 kappa - 1) D R - kappa R], one fused pass
            sq = _decorrelation_delta(scratch, second, R, (1.0 - kappa) / n,
                                      2.0 * kappa - 1.0, kappa, lr)
        if not math.isfinite(sq):
            stats[step.decor_bad(n_layers, layer)] = 1.0
            return
        stats[step.decor_sq(n_layers, layer)] = sq
        R -= scratch

    # -- convolutional layers (noisysim.kernels.conv) -------------------------------------
    def im2col(self, x, shape, k, stride, pad, out) -> None:
        """out (R L, k k C) = patch rows of the images x (R, H W C), shape = (H, W, C)."""
        conv.im2col(x, *shape, k, stride, pad, out)

    def col2im(self, cols, shape, k, stride, pad, out) -> None:
        """out (R, H W C) = the adjoint of ``im2col`` applied to cols (R L, k k C)."""
        conv.col2im(cols, *shape, k, stride, pad, out)

    def pool_forward(self, x, shape, kind, size, stride, out) -> None:
        """out (R, H_out W_out C) = max or mean of each size x size window of x."""
        conv.pool_forward(x, *shape, conv.POOL_KINDS[kind], size, stride, out)

    def pool_backward(self, g, x, shape, kind, size, stride, out) -> None:
        """out (R, H W C) = d sum(g * pool(x)) / dx (max: to each window's first max)."""
        conv.pool_backward(g, x, *shape, conv.POOL_KINDS[kind], size, stride, out)

    # -- hardware realism (noisysim.hardware): read-out channel, weight devices -----------
    def readout(self, channel, src, dst, seed, layer, times) -> None:
        """dst (P, B, N) = the read-out ``channel`` (``noisysim.hardware.Channel``) of src:
        noise at keys (seed, STREAM_READOUT, times[p], layer), element b N + j, then the
        ADC (``noisysim.kernels.hardware.readout_scalar``)."""
        _hw.readout(src, dst, channel.std, channel.levels, channel.range[0], channel.delta,
                    np.uint64(seed), np.uint64(layer), np.asarray(times).astype(np.uint64))

    def weight_write(self, device, p, old, count, layer, stats, failure, n_layers) -> None:
        """p (holding the optimiser's proposal, in place) <- what the weight ``device``
        (``noisysim.hardware.WeightDevice``) writes starting from ``old``, at update
        ``count``; adds the writes and the clipped amount to stats. Runs only after an
        update the gate let through (the caller returns before otherwise)."""
        ku, kz = _hw.write_keys(device.seed, count, layer)
        writes, clipped = _hw.weight_write(p.reshape(-1), old.reshape(-1),
                                           *device.kernel_args(), ku, kz)
        stats[step.writes(n_layers)] += writes
        stats[step.clipped(n_layers)] += clipped

    def program_weights(self, device, p) -> None:
        """The initial weights p (in place) as the device holds them (clamped, snapped)."""
        _hw.program(p.reshape(-1), device.delta, *device.bounds, device.snap)


def _add_update(stats, n_layers, layer, sq) -> None:
    if math.isfinite(sq):
        stats[step.update_sq(n_layers, layer)] += sq
    else:
        stats[step.param_bad(n_layers, layer)] += 1.0


def _sum_squares(a: np.ndarray) -> float:
    """Sum of squared elements, accumulated in the array's dtype (BLAS dot); redone in
    float64 if that overflowed although every value is finite (float32 beyond ~1e19)."""
    flat = np.ascontiguousarray(a).reshape(-1)
    total = float(np.dot(flat, flat))
    if not math.isfinite(total) and a.dtype != np.float64 and np.all(np.isfinite(a)):
        flat = flat.astype(np.float64)
        total = float(np.dot(flat, flat))
    return total


CPU = CpuKernels()


def kernels_for(name: str):
    """The kernel set of a resolved backend name ("cpu" or "cuda")."""
    if name == "cpu":
        return CPU
    from .cuda_backend import CudaKernels

    return CudaKernels.instance()
