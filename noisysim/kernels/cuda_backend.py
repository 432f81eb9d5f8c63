"""The GPU kernel set: numba.cuda kernels (``noisysim.kernels.cuda``) and cuBLAS through CuPy.

``CudaKernels`` implements the interface of ``noisysim.kernels.backend`` on device arrays:
CuPy arrays on a GPU, numpy arrays under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``,
the tests on machines without a GPU), where numpy also stands in for CuPy. Matrix products
and reductions that BLAS does well (column sums, second moments) go to ``xp``; everything
else is one fused kernel. Draws and everything computed from them with + - * / sqrt equal
the CPU's bit for bit; libm functions and reductions agree to floating-point tolerance
(``noisysim.kernels.cuda`` says why).

Nothing here reads the device by itself: the step's guards (``noisysim.kernels.step``) run
in the kernels, so ``eager`` is False and the engine reads the step's statistics only when
it records them. ``counters`` counts host -> device copies and device -> host reads (with
``noisysim.kernels.cuda_launch.LAUNCHES``, the tests' budget of a steady-state step).
"""

from __future__ import annotations

import numpy as np

from .. import noise as _noise
from ..errors import NoisysimError
from . import cpu, rng
from . import cuda as K
from . import cuda_conv as _conv
from . import step as _step
from . import cuda_hardware as _H
from . import hardware as _hw
from .backend import CPU, Vectors

if K.SIMULATED:
    xp = np
else:  # pragma: no cover - needs a GPU
    import cupy as xp

#: the noise models with a CUDA kernel (every model of noisysim.noise)
_NOISE_KINDS = (_noise.NoNoise, _noise.GaussianNoise, _noise.MultiplicativeNoise,
                _noise.BernoulliNoise, _noise.CentredBernoulliNoise, _noise.TelegraphNoise,
                _noise.SMTJNoise, _noise._OUBase, _noise.TraceNoise)

#: loss name -> (per-row loss kernel, gradient kernel), the twins of the CPU's
_CUDA_LOSSES = {"cross_entropy": (K.cross_entropy, K.cross_entropy_grad),
                "softmax_mse": (K.softmax_mse, K.softmax_mse_grad),
                "squared_error": (K.squared_error, K.squared_error_grad)}


class CudaKernels:
    """The cuda backend's kernel set (one per process: ``CudaKernels.instance()``)."""

    name = "cuda"
    xp = xp
    eager = False  # the kernels guard the step themselves; the host reads when it records
    _instance = None

    def __init__(self):
        self.counters = {"to_device": 0, "to_host": 0}
        self._consts: dict = {}   # per noise model: its constants on the device
        self._gates: dict = {}    # per dtype: (clip scale, gate) of the optimiser update
        self._ones: dict = {}     # per (length, dtype): a ones vector for column sums
        self._schedules: dict = {}  # per optimiser: its per-update constants (``schedule``)
        self._like = None         # a device array: the kind counters are made on
        self._batches: dict = {}  # per batch shape: the gathered batch's buffers
        #: + 1 whenever a step's launches change memory (a new schedule window, batch
        #: buffers): a CUDA graph captured before is stale (noisysim.gpu.graph)
        self.generation = 0

    @classmethod
    def instance(cls) -> "CudaKernels":
        if cls._instance is None:
            import warnings

            from numba.core import config
            from numba.core.errors import NumbaPerformanceWarning

            # Small grids are the price of small layers, not something a user can change:
            # numba-cuda checks occupancy on every new launch configuration unless told not
            # to (the warning filter covers numba's older built-in CUDA target).
            config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
            warnings.filterwarnings("ignore", category=NumbaPerformanceWarning)
            cls._instance = cls()
        return cls._instance

    # -- memory ----------------------------------------------------------------------------
    def asarray(self, a, dtype=None):
        """A C-contiguous device copy of a host array (device arrays pass, converted only
        when the dtype differs)."""
        if isinstance(a, np.ndarray) or np.isscalar(a) or isinstance(a, (list, tuple)):
            self.counters["to_device"] += 1
            if K.SIMULATED:
                return np.array(a, dtype=dtype, order="C", copy=True)
            return xp.ascontiguousarray(xp.asarray(a, dtype=dtype))
        return xp.ascontiguousarray(a, dtype=dtype)

    def to_host(self, a) -> np.ndarray:
        """A host copy of a device array (waits for the work that writes it)."""
        self.counters["to_host"] += 1
        if K.SIMULATED:
            return np.array(a, copy=True)
        return xp.asnumpy(a)

    def empty(self, shape, dtype):
        return xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return xp.zeros(shape, dtype=dtype)

    def gather_batch(self, x, y, order, start, stop):
        """(x[order[start:stop]], y[order[start:stop]]) in buffers kept per shape: one
        launch whose arguments are the same at every full batch (the first row comes from
        a device counter)."""
        n = stop - start
        key = (n, x.shape[1:], x.dtype.str, y.shape[1:], y.dtype.str)
        if key not in self._batches:
            self._batches[key] = (xp.empty((n,) + x.shape[1:], x.dtype),
                                  xp.empty((n,) + y.shape[1:], y.dtype))
            self.generation += 1
        x_out, y_out = self._batches[key]
        K.gather_batch(x, y, order, start, x_out, y_out)
        return x_out, y_out

    def set_clock(self, t) -> None:
        """The device's pass clock holds t: before a measurement (written only when it
        does not already; the kernels read pass times from it)."""
        K.set_clock(self._device_like(), t)

    def advance_clock(self, n) -> None:
        """The device's pass clock += n, after a measurement's n passes (one launch)."""
        K.advance_clock(self._device_like(), n)

    def hold_counters(self, values: dict) -> None:
        """Make each device counter named in ``values`` hold its value, as the plain step
        would (a write only where the host's record differs). A replayed CUDA graph runs no
        host code, so the trainer calls this before every step the graph may run: e.g. the
        row counter goes back to 0 at an epoch's first step."""
        like = self._device_like()
        for name, value in values.items():
            K.counter(name, value, like)

    def _device_like(self):
        if self._like is None:
            self._like = xp.zeros(1)
        return self._like

    def synchronize(self) -> None:
        """Wait for the queued work (for timing)."""
        if not K.SIMULATED:  # pragma: no cover - needs a GPU
            xp.cuda.Device().synchronize()

    # -- forward ---------------------------------------------------------------------------
    def perturb(self, a, eps, bias, sigma, seed, layer, times, draw) -> None:
        for i, count in _true_runs(draw):
            K.fill_normal_rows(eps[i:i + count].reshape(count, -1), seed, rng.STREAM_PERTURB,
                               times[i:i + count], layer, sigma)
        # Rows of passes without a draw hold zeros (Device.measure): adding them is exact.
        K.add_bias_and_perturbation(a, bias, eps, bias is not None, True)

    def add_bias_and_perturbation(self, a, bias, eps) -> None:
        if bias is None and eps is None:
            return
        K.add_bias_and_perturbation(a, bias, eps, bias is not None, eps is not None)

    def activation(self, act, a, out, seed, layer, times) -> None:
        if act.table is not None:  # a measured transfer curve (noisysim.kernels.hardware)
            width = a.shape[-1]
            _H.table_forward(a.reshape(-1, width), out.reshape(-1, width), *self._table(act))
            return
        K.activation_forward(a, out, act.code, *act.kernel_params, seed, layer, times)

    def add_noise(self, model, a, times, state, seed, layer, node_p=None) -> None:
        """a (n, B, N) += noise of the n passes at host int64 ``times``, with the CUDA twin
        of the model's CPU kernel (the same draws at the same keys); node_p: None, or
        per-node switching probabilities (N,) float64 on the device (checked by the
        Device that drew them)."""
        times = np.ascontiguousarray(times, dtype=np.int64)
        if a.size == 0 or isinstance(model, _noise.NoNoise):
            return
        m = model
        if m.stateful:
            self._prepare_state(m, a, times, state, seed, layer)
            state["_last"] = int(times[-1])
        if isinstance(m, _noise.GaussianNoise):
            K.gaussian_apply(a, times, seed, layer, m.mean, m.sigma, False)
        elif isinstance(m, _noise.MultiplicativeNoise):
            K.gaussian_apply(a, times, seed, layer, 0.0, m.sigma, True)
        elif isinstance(m, _noise.CentredBernoulliNoise):
            K.bernoulli_apply(a, times, seed, layer, m.p, m.amplitude, 0.0, m.n_sources, True,
                              node_p)
        elif isinstance(m, _noise.BernoulliNoise):
            K.bernoulli_apply(a, times, seed, layer, m.p, m.amplitude, m.offset, m.n_sources,
                              False, node_p)
        elif isinstance(m, _noise.SMTJNoise):
            K.telegraph_apply(a, times, state["last_time"], state["spin"], seed, layer,
                              m.p_flip, m.amplitude, m.n_sources * m.mean, m.sigma, m.scale,
                              True, node_p)
        elif isinstance(m, _noise.TelegraphNoise):
            K.telegraph_apply(a, times, state["last_time"], state["spin"], seed, layer,
                              m.p_flip, m.amplitude, m.offset, 0.0, 1.0, False, node_p)
        elif isinstance(m, _noise._OUBase):
            consts = self._constants(m, lambda: tuple(self.asarray(c) for c in m._constants))
            K.ou_apply(a, times, state["last_time"], state["x"], seed, layer, *consts, m.mean)
        elif isinstance(m, _noise.TraceNoise):
            trace = self._constants(m, lambda: self.asarray(m.trace))
            length = m.trace.shape[0]
            per_node = m.mode == "per_node"
            segment = (m.segment if m.segment is not None else max(1, length // a.shape[2])
                       ) if per_node else 1
            K.trace_apply(a, times, trace, per_node, segment, m.offset, m.scale)
        else:
            raise NoisysimError(f"noise model {m.name!r} has no cuda kernel; use backend "
                                "'cpu'")

    def _table(self, act):
        """(xs, ys) of a table activation on the device (copied once)."""
        return self._constants(act, lambda: tuple(self.asarray(v) for v in act.table))

    def _constants(self, model, make):
        key = id(model)
        if key not in self._consts or self._consts[key][0] is not model:
            self._consts[key] = (model, make())
        return self._consts[key][1]

    def noise_state(self, model, host_state: dict) -> dict:
        """Device copy of a host noise state, plus ``"_last"``: the latest time any slot has
        seen, kept on the host (the CPU's check that time never goes backwards, without a
        read per call)."""
        if not isinstance(model, _NOISE_KINDS):
            raise NoisysimError(f"noise model {model.name!r} has no cuda kernel; use backend "
                                "'cpu'")
        state = {k: self.asarray(v) for k, v in host_state.items()}
        if model.stateful:
            last = host_state["last_time"]
            state["_last"] = int(np.max(last)) if np.size(last) else -1
        return state

    def noise_state_to_host(self, model, state: dict) -> dict:
        return {k: self.to_host(v) for k, v in state.items() if not k.startswith("_")}

    def _prepare_state(self, model, a, times, state, seed, layer) -> None:
        n_slots, width = a.shape[1], a.shape[2]
        have = state["last_time"].shape[0]
        if n_slots > have:
            new = model.init_state(seed, layer, n_slots, width)
            for k in list(state):
                if not k.startswith("_"):
                    state[k] = xp.concatenate([state[k], self.asarray(new[k][have:])])
        if times.size and times[0] < state["_last"]:
            raise NoisysimError(
                f"{model.name} noise in layer {layer}: pass time {int(times[0])} is before "
                f"the state's last time {state['_last']}; time must not go backwards "
                "(restore an earlier state to replay)")

    def loss(self, name, outputs, targets):
        out = xp.empty(outputs.shape[0], dtype=np.float64)
        _CUDA_LOSSES[name][0](outputs, targets, out)
        return out

    def loss_grad(self, name, outputs, targets):
        out = xp.empty(outputs.shape, dtype=outputs.dtype)
        _CUDA_LOSSES[name][1](outputs, targets, out)
        return out

    # -- backward --------------------------------------------------------------------------
    def backprop(self, act, g, a, surrogate):
        """g * f'(a) (or the surrogate) as a new array (f'(a) rounded to g's dtype first,
        as the CPU rounds it)."""
        mode = cpu.STRAIGHT_THROUGH if surrogate else cpu.TRUE_DERIVATIVE
        out = xp.empty(g.shape, dtype=g.dtype)
        if act.table is not None:
            _H.table_derivative(a, out, *self._table(act), surrogate,
                                upstream=xp.ascontiguousarray(g))
            return out
        K.activation_derivative(a, out, act.code, *act.kernel_params, mode,
                                upstream=xp.ascontiguousarray(g))
        return out

    def derivative(self, act, a):
        out = xp.empty(a.shape, dtype=a.dtype)
        if act.table is not None:
            _H.table_derivative(a.reshape(-1, a.shape[-1]), out.reshape(-1, a.shape[-1]),
                                *self._table(act), False)
            return out
        K.activation_derivative(a.reshape(-1, a.shape[-1]), out.reshape(-1, a.shape[-1]),
                                act.code, *act.kernel_params, cpu.TRUE_DERIVATIVE)
        return out

    # -- rule statistics -------------------------------------------------------------------
    def squared_norms(self, v: Vectors):
        sq = xp.zeros((v.count, v.source.shape[1]), dtype=np.float64)
        if v.diff:
            K.diff_squared_norm(v.source, v.first, sq)
        else:
            d = v.value().astype(np.float64)
            sq += xp.einsum("kbn,kbn->kb", d, d)
        return sq

    def loss_scale(self, losses, first, count, dtype, sq=None, factor=1.0, divisor=1.0):
        out = xp.empty((count, losses.shape[1]), dtype=dtype)
        K.loss_scale(losses, first, out, sq=sq, factor=factor, divisor=divisor)
        return out

    def node_gradient(self, scale, v: Vectors, x_ref, has_bias, out=None):
        """As the CPU's: c = (sum_k scale_k v_k) / (K B) in the dtype (one fused kernel),
        viewed as rows (B L, C_out) of x_ref's row count (a conv layer; c itself when
        L = 1), g_W = rows^T x* (cuBLAS), g_b = column sums of rows (a cuBLAS product with
        ones)."""
        batch, width = v.source.shape[1], v.source.shape[2]
        dtype = v.source.dtype
        c = xp.empty((batch, width), dtype=dtype)
        K.node_coefficients(v.source, v.first, v.diff, scale,
                            dtype.type(1.0 / (v.count * batch)), c)
        rows = c.reshape(x_ref.shape[0], -1)
        g_W = xp.matmul(rows.T, x_ref, out=None if out is None else out.W)
        g_b = xp.matmul(self._ones_vector(rows.shape[0], dtype), rows,
                        out=None if out is None else out.b) if has_bias else None
        return g_W, g_b

    def column_sums(self, rows, out=None):
        """rows.sum(axis=0) of a 2-D array, in its dtype (bias gradients; CuPy's sum), into
        ``out`` when given."""
        return rows.sum(axis=0, dtype=rows.dtype, out=out)

    def _ones_vector(self, n, dtype):
        key = (n, np.dtype(dtype).str)
        if key not in self._ones:
            self._ones[key] = xp.ones(n, dtype=dtype)
        return self._ones[key]

    # -- the step's statistics -------------------------------------------------------------
    def step_stats(self, losses, outputs, labels, stats) -> None:
        K.step_stats(losses, outputs, labels if labels is not None else _dummy_labels(),
                     stats, labels is not None)

    def host_blocked(self, stats, failure, n_layers, upto) -> bool:
        return False  # the kernels evaluate the guards on the device

    def record(self, stats, failure, n_layers, step_number) -> None:
        K.record(stats, failure, n_layers, step_number)

    def gradient_norms(self, grads, stats, failure, n_layers, clip) -> None:
        """Per layer ||g||^2 and non-finite counts of the gradient arena, then the
        optimiser's gate and clip scale on the device: one launch."""
        starts, seg_layer = grads.tables()
        scale, gate = self._gate(grads.dtype)
        K.arena_gradient_norms(grads.flat, starts, seg_layer, stats, failure, n_layers, clip,
                               scale, gate)

    def update_gate(self, stats, failure, n_layers, clip, dtype) -> bool:
        """Never blocks on the host: ``gradient_norms`` set the gate on the device."""
        return False

    def _gate(self, dtype):
        key = np.dtype(dtype).str
        if key not in self._gates:
            self._gates[key] = (xp.ones(1, dtype=dtype), xp.zeros(1, dtype=np.int32))
        return self._gates[key]

    def adam_update(self, params, grads, m, v, opt, count, stats, n_layers) -> None:
        """Adam over the parameter arena, guarded by the gate: one launch."""
        t = params.dtype.type
        scale, gate = self._gate(params.dtype)
        first, (lr_c1s, inv_c2s) = self.schedule(opt, params.dtype, count)
        K.arena_adam(params.flat, grads.flat, m.flat, v.flat, *params.tables(), n_layers,
                     scale, gate, t(opt.beta1), t(1.0 - opt.beta1), t(opt.beta2),
                     t(1.0 - opt.beta2), count, first, lr_c1s, inv_c2s, t(opt.eps), stats)

    def sgd_update(self, params, grads, velocity, opt, count, stats, n_layers) -> None:
        """SGD over the parameter arena, guarded by the gate: one launch."""
        scale, gate = self._gate(params.dtype)
        first, (lrs,) = self.schedule(opt, params.dtype, count)
        K.arena_sgd(params.flat, grads.flat, None if velocity is None else velocity.flat,
                    *params.tables(), n_layers, scale, gate, opt.weight_decay,
                    opt.momentum, opt.nesterov, count, first, lrs, stats)

    #: updates per table of ``schedule``: a new table (and a new CUDA graph) every SCHEDULE
    #: updates; 2 x 65536 float64 values are 1 MiB
    SCHEDULE = 4096 if K.SIMULATED else 65536

    def schedule(self, opt, dtype, count):
        """(first, tables): the per-update constants of ``opt`` for updates t = first ...
        first + SCHEDULE - 1 on the device, so that the kernels read them at the update
        number they take from the device's counter and a step's launch arguments do not
        change. Adam: lr_t / (1 - beta1^t) and 1 / (1 - beta2^t); SGD: lr_t; each rounded
        to the parameters' dtype exactly as the CPU rounds its scalars. A new window (and
        ``generation`` + 1) when ``count`` leaves the current one."""
        t = np.dtype(dtype).type
        key = (id(opt), np.dtype(dtype).str)
        options = (opt.name, tuple(sorted(opt.options().items())), opt.horizon)
        have = self._schedules.get(key)
        if (have is not None and have[0] is opt and have[1] == options
                and have[2] <= count < have[2] + self.SCHEDULE):
            return have[2], have[3]
        first = count
        span = range(first, first + self.SCHEDULE)
        if opt.name == "adam":
            columns = ([t(opt.lr_at(c) / (1.0 - opt.beta1 ** c)) for c in span],
                       [t(1.0 / (1.0 - opt.beta2 ** c)) for c in span])
        else:
            columns = ([t(opt.lr_at(c)) for c in span],)
        tables = tuple(self.asarray(np.array(col, dtype=dtype)) for col in columns)
        self._schedules[key] = (opt, options, first, tables)
        self.generation += 1
        return first, tables

    def decorrelation_step(self, R, x, lr, kappa, scratch, stats, failure, n_layers,
                           layer) -> None:
        n = x.shape[0]
        second = xp.einsum("ni,ni->i", x, x) / R.dtype.type(n)  # diag of D
        xp.matmul(x.T, xp.matmul(x, R), out=scratch)             # B * M
        K.decorrelation_delta(scratch, second, R, (1.0 - kappa) / n, 2.0 * kappa - 1.0,
                              kappa, lr, stats, failure, n_layers, layer)
        K.apply_delta(R, scratch, stats, failure, n_layers, layer)

    # -- convolutional layers (noisysim.kernels.cuda_conv) --------------------------------
    def im2col(self, x, shape, k, stride, pad, out) -> None:
        """out (R L, k k C) = patch rows of the images x (R, H W C), shape = (H, W, C)."""
        _conv.im2col(x, shape, k, stride, pad, out)

    def col2im(self, cols, shape, k, stride, pad, out) -> None:
        """out (R, H W C) = the adjoint of ``im2col`` applied to cols (R L, k k C)."""
        _conv.col2im(cols, shape, k, stride, pad, out)

    def pool_forward(self, x, shape, kind, size, stride, out) -> None:
        """out (R, H_out W_out C) = max or mean of each size x size window of x."""
        _conv.pool_forward(x, shape, kind, size, stride, out)

    def pool_backward(self, g, x, shape, kind, size, stride, out) -> None:
        """out (R, H W C) = d sum(g * pool(x)) / dx (max: to each window's first max)."""
        _conv.pool_backward(g, x, shape, kind, size, stride, out)

    # -- hardware realism (noisysim.hardware): read-out channel, weight devices -----------
    def readout(self, channel, src, dst, seed, layer, times) -> None:
        _H.readout(src, dst, channel.std, channel.levels, channel.range[0], channel.delta,
                  seed, layer, np.asarray(times, dtype=np.int64))

    def weight_write(self, device, p, old, count, layer, stats, failure, n_layers) -> None:
        """As the CPU's, guarded on the device by the optimiser's gate (``update_gate``)."""
        ku, kz = _hw.write_keys(device.seed, count, layer)
        _H.weight_write(p, old, device.kernel_args(), ku, kz, self._gate(p.dtype)[1], stats,
                       _step.writes(n_layers), _step.clipped(n_layers))

    def program_weights(self, device, p) -> None:
        """Once per run: programmed on the host by the CPU kernel, copied back."""
        host = self.to_host(p)
        CPU.program_weights(device, host)
        p[...] = self.asarray(host)


def _true_runs(mask):
    """(start, count) of the maximal runs of True in a host boolean mask."""
    return [(start, count) for _, start, count in K.runs(np.flatnonzero(mask))]


_DUMMY: dict = {}


def _dummy_labels():
    if "labels" not in _DUMMY:
        _DUMMY["labels"] = xp.zeros(1, dtype=np.int64)
    return _DUMMY["labels"]
