"""numba.cuda twins of the CPU kernels (rng.py, noise.py, cpu.py) and the GPU-only kernels of
the training step (perturbation statistics, optimisers, decorrelation).

One source of truth: the scalar functions of the CPU modules (the counter-based generator,
``activation_scalar``, ``derivative_scalar``, ``pow_geometric``) are not rewritten here.
``_device_twins`` compiles their ``.py_func`` with ``cuda.jit(device=True)`` inside a copy of
their module's globals in which every sibling scalar function is replaced by its device twin,
so a twin never calls a CPU dispatcher. Where the CPU kernel's structure (prange over blocks
of nodes, per-block scratch buffers) does not map to a GPU, the twin here is a grid-stride
kernel that calls the same scalar device functions in the same arithmetic order.

Bit-exactness. Draws and everything computed from them with + - * / sqrt (noise values,
scaled perturbations, Adam/SGD/decorrelation updates given the same inputs) equal the CPU's
bit for bit, because

* every kernel is compiled by ``cuda_compile.exact_kernel``: ``fastmath=False``, NVVM's
  ``-fma=0`` and no link-time optimisation, so neither NVVM nor nvJitLink contracts
  a * b + c into an FMA, which the CPU twin (``fastmath=False``) never does;
* values are promoted exactly as the CPU kernels promote them: the CPU reads a float32
  element and combines it with float64 scalars, so the twins read ``float(a[i])``. (This
  also keeps the simulator honest: under NEP 50 a numpy float32 scalar plus a Python float
  stays float32.)

libm-based math (tanh, exp, log in activations and losses) and every reduction whose order
differs from numpy's (sums over nodes and samples, and all matrix products, which go to
cuBLAS) agree with the CPU to floating-point tolerance only. The kernels' own float
reductions still repeat bit for bit from run to run: each sums in an order fixed by the
launch configuration (``_block_sum`` within a block, ``_grid_sum`` across blocks), never
by float atomics, whose order is the order blocks happen to finish in. Atomic adds remain
only for counts (integers, exact in float64 in any order) and for ``_grid_sum``'s ticket.

Arrays are anything numba.cuda accepts: numba device arrays, CuPy arrays (through the CUDA
array interface, without the implicit stream synchronisation), or numpy arrays under the
simulator. Keys are derived on the device from (seed, stream, time, layer) for runs of
consecutive pass times, so a launch copies nothing to the GPU; a pass time is the device's
pass clock plus an offset (``cuda_launch.clocked``), and the update count and step number
are device counters too, so a steady-state step launches the same arguments every time (a
CUDA graph can replay it: ``noisysim.gpu.graph``). All kernels are grid-stride loops, so
their results do not depend on the launch configuration.
"""

from __future__ import annotations

import math
import types
import warnings

import numpy as np
from numba import cuda

from . import cpu, rng
from . import noise as _noise
from . import step as _stepmod
from .cuda_compile import SIMULATED, exact_kernel
from .cuda_launch import (MAX_BLOCKS, _dummy, _flat, _nb, _reduction_scratch,  # noqa: F401
                          _segment_blocks, _segment_scratch, _u64, clocked, counted,
                          counter, counter_value, launch, runs)

_SHARED = 256  # shared-memory slots of the block reductions (>= THREADS)

if SIMULATED:
    # Plain-Python uint64 arithmetic wraps as intended but numpy warns about it.
    warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)


# ---------------------------------------------------------------------------- device twins


def _max2(a, b):
    # Python's max(a, b) (the first of equals); numba's CUDA target fails to type the
    # builtin's varargs overload (numba 0.68), so the twins get these instead.
    return b if b > a else a


def _min2(a, b):
    return b if b < a else a


_d_max2 = cuda.jit(device=True)(_max2)
_d_min2 = cuda.jit(device=True)(_min2)


def _device_twins(module, names) -> dict:
    """cuda.jit(device=True) twins of ``module``'s njit functions ``names``, compiled from
    their .py_func in shared globals where the siblings are twins too (and two-argument
    ``min`` / ``max`` are device functions with Python's semantics)."""
    g = dict(module.__dict__)
    g["max"] = _d_max2
    g["min"] = _d_min2
    out = {}
    for name in names:
        f = getattr(module, name).py_func
        h = types.FunctionType(f.__code__, g, f.__name__, f.__defaults__, f.__closure__)
        h.__qualname__ = f"{f.__qualname__}_cuda"
        h.__module__ = f.__module__
        out[name] = g[name] = cuda.jit(device=True)(h)
    return out


_RNG = _device_twins(rng, ("mix64", "key", "random_bits", "_unit_from_bits", "uniform",
                           "_log_unit", "_sin_kernel", "_cos_kernel", "_sincos_turn",
                           "_box_muller", "normal_pair", "normal"))
_CPU = _device_twins(cpu, ("_sigmoid", "activation_scalar", "derivative_scalar"))
_NOISE = _device_twins(_noise, ("pow_geometric", "flip_probability"))
_STEP = _device_twins(_stepmod, ("grad_sq", "grad_bad", "update_sq", "param_bad", "decor_sq",
                                  "decor_bad",
                                  "grad_norm_sq", "verdict", "blocked", "record"))

d_key = _RNG["key"]
d_uniform = _RNG["uniform"]
d_normal = _RNG["normal"]
d_normal_pair = _RNG["normal_pair"]
d_activation = _CPU["activation_scalar"]
d_derivative = _CPU["derivative_scalar"]
d_pow_geometric = _NOISE["pow_geometric"]
d_flip_probability = _NOISE["flip_probability"]
d_grad_norm_sq = _STEP["grad_norm_sq"]
d_blocked = _STEP["blocked"]
d_record = _STEP["record"]
d_decor_sq = _STEP["decor_sq"]
d_decor_bad = _STEP["decor_bad"]
d_grad_sq = _STEP["grad_sq"]
d_grad_bad = _STEP["grad_bad"]
d_update_sq = _STEP["update_sq"]
d_param_bad = _STEP["param_bad"]
_BEFORE_UPDATE = _stepmod.BEFORE_UPDATE

_BINARY_STOCHASTIC = cpu.BINARY_STOCHASTIC
_NOISE = rng.STREAM_NOISE
_ACTIVATION = rng.STREAM_ACTIVATION


@cuda.jit(device=True)
def _block_sum(buf, value):
    """Sum of ``value`` over the threads of the block (every thread gets it)."""
    tid = cuda.threadIdx.x
    buf[tid] = value
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            buf[tid] += buf[tid + step]
        cuda.syncthreads()
        step //= 2
    total = buf[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def _grid_sum(buf, partials, ticket, value):
    """Sum of ``value`` over every thread of the grid, in an order fixed by the launch
    configuration alone. A float atomic add per block instead would sum in the order the
    blocks happen to finish, which varies from run to run on a GPU (issue 10: same seed,
    same trajectory bit for bit).

    Every thread calls it. Each block reduces its threads' values (``_block_sum``'s tree)
    and thread 0 stores the result in partials[block]; ``_elect_last`` finds the block that
    finishes last, which sums the partials (``_partials_sum``) and resets the ticket for
    the next launch. Returns (True, total) in thread 0 of the last block, (False, value of
    no meaning) in every other thread."""
    total = _block_sum(buf, value)
    tid = cuda.threadIdx.x
    if tid == 0:
        partials[cuda.blockIdx.x] = total
    if not _elect_last(buf, ticket):
        return False, total
    total = _partials_sum(buf, partials, 0)
    if tid == 0:
        ticket[0] = 0
    return tid == 0, total


@cuda.jit(device=True)
def _elect_last(buf, ticket):
    """True in every thread of the block that finishes last, after thread 0 of every block
    stored its partials. Each block's thread 0 makes its stores visible to the grid
    (threadfence) and takes a ticket (an integer atomic); the block that draws the last
    ticket sees every partial. This is the CUDA programming guide's "last block" pattern
    (Memory Fence Functions): a block's store, fence and ticket, seen by the last block
    through its own ticket, barrier and fence, orders that store before the last block's
    loads. The last block resets the ticket to 0 when it is done with the partials."""
    tid = cuda.threadIdx.x
    if tid == 0:
        cuda.threadfence()
        buf[0] = 1.0 if cuda.atomic.add(ticket, 0, 1) == cuda.gridDim.x - 1 else 0.0
    cuda.syncthreads()
    last = buf[0] != 0.0
    cuda.syncthreads()  # every thread has read the flag before buf is reused
    if last:  # the same in every thread of the block: no divergent barrier follows
        cuda.threadfence()
    return last


@cuda.jit(device=True)
def _partials_sum(buf, partials, row):
    """In the last block: the sum of partials[row G + b] over the G blocks, thread t adding
    b = t, t + T, ... (T threads) from 0.0, then the block's tree. (All threads share the
    work, not thread 0 alone: at 65535 blocks a serial sum would be 65535 dependent loads.)
    Every thread gets the total."""
    n_blocks = cuda.gridDim.x
    s = 0.0
    for b in range(cuda.threadIdx.x, n_blocks, cuda.blockDim.x):
        s += partials[row * n_blocks + b]
    return _block_sum(buf, s)


@cuda.jit(device=True)
def _segment_partial(buf, partials, segment, value):
    """Block sum of ``value`` stored as partials[segment G + block] (one row per arena
    segment, ``noisysim.arena``)."""
    total = _block_sum(buf, value)
    if cuda.threadIdx.x == 0:
        partials[segment * cuda.gridDim.x + cuda.blockIdx.x] = total


@cuda.jit(device=True)
def _segments_into_stats(buf, partials, ticket, seg_layer, stats, n_layers, update):
    """After ``_segment_partial`` for every segment: the last block adds each segment's
    total to its layer's statistic, in segment order: stats[update_sq(layer)] (``update``)
    or stats[grad_sq(layer)]. Returns True in thread 0 of the last block (ticket reset)."""
    if not _elect_last(buf, ticket):
        return False
    tid = cuda.threadIdx.x
    for s in range(seg_layer.shape[0]):
        total = _partials_sum(buf, partials, s)
        if tid == 0:
            layer = seg_layer[s]
            idx = d_update_sq(n_layers, layer) if update else d_grad_sq(n_layers, layer)
            stats[idx] += total
    if tid == 0:
        ticket[0] = 0
    return tid == 0


# ------------------------------------------------------------------------------- generator


@exact_kernel
def _fill_uniform(out, key, offset):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = d_uniform(key, offset + i)


@exact_kernel
def _scaled_normal_rows(out, seed, stream, clock, t0, layer, scale, offset):
    """out[r, i] = scale * normal(key(seed, stream, t0 + r, layer), offset + i): one
    Box-Muller pair per thread."""
    t0 = clock[0] + t0  # the pass clock on the device (cuda_launch.clocked)
    n_rows, m = out.shape
    first = offset >> 1
    n_pairs = ((offset + m - 1) >> 1) - first + 1
    for t in range(cuda.grid(1), n_rows * n_pairs, cuda.gridsize(1)):
        r = t // n_pairs
        q = first + t - r * n_pairs
        z0, z1 = d_normal_pair(d_key(seed, stream, t0 + r, layer), q)
        i = 2 * q - offset
        if i >= 0:
            out[r, i] = scale * z0
        if i + 1 < m:
            out[r, i + 1] = scale * z1


# ------------------------------------------------------------------------------ device noise


@cuda.jit(device=True)
def _gauss_add(a, p, i, z, mean, sigma, multiplicative):
    x = float(a[p, i])
    w = x if multiplicative else 1.0
    a[p, i] = x + (mean + w * sigma * z)


@exact_kernel
def _gaussian(a, seed, clock, t0, layer, mean, sigma, multiplicative):
    t0 = clock[0] + t0  # the pass clock on the device (cuda_launch.clocked)
    n_pass, m = a.shape
    n_pairs = (m + 1) >> 1
    for t in range(cuda.grid(1), n_pass * n_pairs, cuda.gridsize(1)):
        p = t // n_pairs
        q = t - p * n_pairs
        z0, z1 = d_normal_pair(d_key(seed, _NOISE, t0 + p, layer), q)
        i = 2 * q
        _gauss_add(a, p, i, z0, mean, sigma, multiplicative)
        if i + 1 < m:
            _gauss_add(a, p, i + 1, z1, mean, sigma, multiplicative)


@exact_kernel
def _bernoulli(a, seed, clock, t0, layer, prob, amplitude, offset, n_sources, centred, node_p,
               width, varied):
    """varied: node i's probability is node_p[i % width] (else ``prob`` everywhere)."""
    t0 = clock[0] + t0  # the pass clock on the device (cuda_launch.clocked)
    n_pass, m = a.shape
    base = 0.0 if centred else offset
    for t in range(cuda.grid(1), n_pass * m, cuda.gridsize(1)):
        p = t // m
        i = t - p * m
        pr = node_p[i % width] if varied else prob
        shift = -n_sources * pr if centred else 0.0
        k = d_key(seed, _NOISE, t0 + p, layer)
        count = 0
        for s in range(n_sources):
            count += 1 if d_uniform(k, i * n_sources + s) < pr else 0
        a[p, i] = float(a[p, i]) + (base + amplitude * (count + shift))


@exact_kernel
def _telegraph(a, seed, clock, t0, layer, last_time, spin, width, n_src, p_flip, amplitude,
               offset, sigma, scale, thermal, node_p, varied):
    """One thread per (slot, node) carries its n_src states through the P passes; varied:
    node i flips with node_p[i % width] (else ``p_flip`` everywhere)."""
    t0 = clock[0] + t0  # the pass clock on the device (cuda_launch.clocked)
    n_pass, m = a.shape
    for i in range(cuda.grid(1), m, cuda.gridsize(1)):
        prev = last_time[i // width]
        pf = node_p[i % width] if varied else p_flip
        for p in range(n_pass):
            n = t0 + p - prev
            prev = t0 + p
            q = d_flip_probability(pf, n)
            k = d_key(seed, _NOISE, t0 + p, layer)
            tot = 0
            zs = 0.0
            for s in range(n_src):
                e = i * n_src + s
                sv = spin[e]
                if d_uniform(k, e) < q:
                    sv = -sv
                spin[e] = sv
                tot += int(sv)
                if thermal:
                    zs += d_normal(k, e)
            # n_src == 1: zs == 0.0 + z == z exactly (Box-Muller never returns a zero)
            a[p, i] = float(a[p, i]) + scale * (offset + amplitude * tot + sigma * zs)


@exact_kernel
def _ou(a, seed, clock, t0, layer, last_time, x, width, n_poles, decay, c1, std, mean):
    """One thread per (slot, node) advances its n_poles OU processes through the P passes."""
    t0 = clock[0] + t0  # the pass clock on the device (cuda_launch.clocked)
    n_pass, m = a.shape
    for i in range(cuda.grid(1), m, cuda.gridsize(1)):
        prev = last_time[i // width]
        for p in range(n_pass):
            n = t0 + p - prev
            prev = t0 + p
            k = d_key(seed, _NOISE, t0 + p, layer)
            acc = 0.0
            xv = 0.0
            for j in range(n_poles):
                f = d_pow_geometric(decay[j], n)[0]
                s2 = d_pow_geometric(decay[j] * decay[j], n)[1]
                g = std[j] * math.sqrt(c1[j] * s2)
                e = i * n_poles + j
                xv = f * x[e] + g * d_normal(k, e)
                x[e] = xv
                acc += xv
            v = xv if n_poles == 1 else acc
            a[p, i] = float(a[p, i]) + (mean + v)


@exact_kernel
def _set_last_time(last_time, n_slots, clock, t):
    t = clock[0] + t  # the pass clock on the device (cuda_launch.clocked)
    for b in range(cuda.grid(1), n_slots, cuda.gridsize(1)):
        last_time[b] = t


@exact_kernel
def _trace(a, trace, clock, t0, per_node, segment, offset, scale):
    t0 = clock[0] + t0  # the pass clock on the device (cuda_launch.clocked)
    n_pass, m = a.shape
    length = trace.shape[0]
    for t in range(cuda.grid(1), n_pass * m, cuda.gridsize(1)):
        p = t // m
        d = t - p * m
        tt = (t0 + p) % length
        idx = ((d % length) * (segment % length) + tt) % length if per_node else tt
        a[p, d] = float(a[p, d]) + (offset + scale * trace[idx])


# ------------------------------------------------------------------- network elementwise


@exact_kernel
def _activation(a, out, code, p0, p1, p2, seed, clock, t0, layer, n_batch):
    t0 = clock[0] + t0  # the pass clock on the device (cuda_launch.clocked)
    rows, width = a.shape
    for t in range(cuda.grid(1), rows * width, cuda.gridsize(1)):
        r = t // width
        j = t - r * width
        u = 0.5
        if code == _BINARY_STOCHASTIC:
            k = d_key(seed, _ACTIVATION, t0 + r // n_batch, layer)
            u = d_uniform(k, (r % n_batch) * width + j)
        out[r, j] = d_activation(code, float(a[r, j]), p0, p1, p2, u)


@exact_kernel
def _derivative(upstream, a, out, code, p0, p1, p2, mode, multiply):
    """out = f'(a), or upstream * f'(a) with f'(a) rounded to out's dtype first (as the CPU
    multiplies two arrays)."""
    rows, width = a.shape
    for t in range(cuda.grid(1), rows * width, cuda.gridsize(1)):
        r = t // width
        j = t - r * width
        out[r, j] = d_derivative(code, float(a[r, j]), p0, p1, p2, mode)
        if multiply:
            out[r, j] = upstream[r, j] * out[r, j]


@exact_kernel
def _add_bias_eps(a, bias, eps, has_bias, has_eps):
    rows, width = a.shape
    for t in range(cuda.grid(1), rows * width, cuda.gridsize(1)):
        r = t // width
        j = t - r * width
        v = a[r, j]
        if has_bias:
            v = v + bias[j]
        if has_eps:
            v = v + eps[r, j]
        a[r, j] = v


@cuda.jit(device=True)
def _softmax_shift_and_norm(logits, r):
    """Twin of cpu._softmax_shift_and_norm: (m, s) of row r, exp taken in float64."""
    n_classes = logits.shape[1]
    m = logits[r, 0]
    for c in range(1, n_classes):
        m = _d_max2(m, logits[r, c])
    s = 0.0
    for c in range(n_classes):
        s += math.exp(float(logits[r, c] - m))
    return m, s


@exact_kernel
def _cross_entropy(logits, labels, out):
    n_rows = logits.shape[0]
    n_labels = labels.shape[0]
    for r in range(cuda.grid(1), n_rows, cuda.gridsize(1)):
        m, s = _softmax_shift_and_norm(logits, r)
        out[r] = float(m) + math.log(s) - float(logits[r, labels[r % n_labels]])


@exact_kernel
def _cross_entropy_grad(logits, labels, out):
    n_rows, n_classes = logits.shape
    n_labels = labels.shape[0]
    for r in range(cuda.grid(1), n_rows, cuda.gridsize(1)):
        m = logits[r, 0]
        for c in range(1, n_classes):
            m = _d_max2(m, logits[r, c])
        s = 0.0
        for c in range(n_classes):
            out[r, c] = math.exp(float(logits[r, c] - m))
            s += float(out[r, c])
        for c in range(n_classes):
            out[r, c] = float(out[r, c]) / s
        y = labels[r % n_labels]
        out[r, y] = float(out[r, y]) - 1.0


@exact_kernel
def _softmax_mse(logits, labels, out):
    n_rows, n_classes = logits.shape
    n_labels = labels.shape[0]
    for r in range(cuda.grid(1), n_rows, cuda.gridsize(1)):
        m, s = _softmax_shift_and_norm(logits, r)
        y = labels[r % n_labels]
        acc = 0.0
        for c in range(n_classes):
            d = math.exp(float(logits[r, c] - m)) / s - (1.0 if c == y else 0.0)
            acc += d * d
        out[r] = acc / n_classes


@exact_kernel
def _softmax_mse_grad(logits, labels, out):
    n_rows, n_classes = logits.shape
    n_labels = labels.shape[0]
    for r in range(cuda.grid(1), n_rows, cuda.gridsize(1)):
        m, s = _softmax_shift_and_norm(logits, r)
        y = labels[r % n_labels]
        total = 0.0
        for c in range(n_classes):
            p = math.exp(float(logits[r, c] - m)) / s
            total += (p - (1.0 if c == y else 0.0)) * p
        scale = 2.0 / n_classes
        for c in range(n_classes):
            p = math.exp(float(logits[r, c] - m)) / s
            out[r, c] = scale * ((p - (1.0 if c == y else 0.0)) * p - p * total)


@exact_kernel
def _squared_error(outputs, targets, out):
    n_rows, width = outputs.shape
    n_t = targets.shape[0]
    for r in range(cuda.grid(1), n_rows, cuda.gridsize(1)):
        t = r % n_t
        s = 0.0
        for c in range(width):
            d = float(outputs[r, c]) - targets[t, c]
            s += d * d
        out[r] = 0.5 * s


@exact_kernel
def _squared_error_grad(outputs, targets, out):
    n_rows, width = outputs.shape
    n_t = targets.shape[0]
    for i in range(cuda.grid(1), n_rows * width, cuda.gridsize(1)):
        r = i // width
        c = i - r * width
        out[r, c] = float(outputs[r, c]) - targets[r % n_t, c]


# --------------------------------------------------------------- perturbation statistics


@exact_kernel
def _diff_sq_norm(pre, first, sq):
    """sq[j, b] += sum_n float64(pre[first + j, b, n] - pre[0, b, n])^2 (one block per row)."""
    buf = cuda.shared.array(_SHARED, np.float64)
    count, batch = sq.shape
    width = pre.shape[2]
    tid = cuda.threadIdx.x
    for row in range(cuda.blockIdx.x, count * batch, cuda.gridDim.x):
        j = row // batch
        b = row - j * batch
        acc = 0.0
        for n in range(tid, width, cuda.blockDim.x):
            d = float(pre[first + j, b, n] - pre[0, b, n])
            acc += d * d
        total = _block_sum(buf, acc)
        if tid == 0:
            sq[j, b] += total


@exact_kernel
def _loss_scale(losses, first, sq, use_sq, factor, divisor, out):
    """out[j, b] (rule dtype) = dell * factor / sq (0 where sq == 0) when use_sq (INP, ANP),
    else dell / divisor (NP); dell = losses[first + j, b] - losses[0, b]."""
    count, batch = out.shape
    for t in range(cuda.grid(1), count * batch, cuda.gridsize(1)):
        j = t // batch
        b = t - j * batch
        d = losses[first + j, b] - losses[0, b]
        if use_sq:
            s = sq[j, b]
            v = (d * factor) / s if s > 0.0 else 0.0
        else:
            v = d / divisor
        out[j, b] = v


@exact_kernel
def _node_coefficients(vec, first, diff, scale, inv, out):
    """out[b, n] = (sum_j scale[j, b] * v_j) * inv with v_j = vec[first+j] - vec[0] (diff)
    or vec[first+j], inv = 1 / (K B) in the dtype; products and sum in the dtype, as the
    CPU's einsum followed by its scaling of the (B, N) factor."""
    count, batch = scale.shape
    width = out.shape[1]
    for t in range(cuda.grid(1), batch * width, cuda.gridsize(1)):
        b = t // width
        n = t - b * width
        r0 = vec[0, b, n]
        v = vec[first, b, n] - r0 if diff else vec[first, b, n]
        acc = scale[0, b] * v
        for j in range(1, count):
            v = vec[first + j, b, n] - r0 if diff else vec[first + j, b, n]
            acc = acc + scale[j, b] * v
        out[b, n] = acc * inv


@exact_kernel
def _step_stats(losses, outputs, labels, has_labels, out):
    """One block, in the layout of ``noisysim.kernels.step``: out[LOSS] = mean losses[0];
    out[DL_MEAN], out[DL_STD] = mean and std of dl = losses[1:] - losses[0];
    out[ACCURACY] = fraction of correct argmax predictions; out[BAD_LOSSES] = non-finite
    reference losses."""
    buf = cuda.shared.array(_SHARED, np.float64)
    n_pass, batch = losses.shape
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    s = 0.0
    bad = 0.0
    correct = 0.0
    for b in range(tid, batch, nt):
        v = losses[0, b]
        s += v
        if not math.isfinite(v):
            bad += 1.0
        if has_labels:
            best = 0
            for c in range(1, outputs.shape[1]):
                if outputs[b, c] > outputs[b, best]:
                    best = c
            if best == labels[b]:
                correct += 1.0
    total = _block_sum(buf, s)
    n_bad = _block_sum(buf, bad)
    n_correct = _block_sum(buf, correct)
    dsum = 0.0
    n_dl = (n_pass - 1) * batch
    for t in range(tid, n_dl, nt):
        k = t // batch
        b = t - k * batch
        dsum += losses[1 + k, b] - losses[0, b]
    dmean = _block_sum(buf, dsum) / n_dl if n_dl > 0 else 0.0
    dvar = 0.0
    for t in range(tid, n_dl, nt):
        k = t // batch
        b = t - k * batch
        d = (losses[1 + k, b] - losses[0, b]) - dmean
        dvar += d * d
    var = _block_sum(buf, dvar) / n_dl if n_dl > 0 else 0.0
    if tid == 0:
        out[0] = total / batch
        out[1] = dmean
        out[2] = math.sqrt(var)
        out[3] = n_correct / batch
        out[4] = n_bad


# --------------------------------------------------------------- optimisers, decorrelation


@exact_kernel
def _arena_gradient_norms(x, starts, seg_layer, stats, failure, n_layers, clip, scale, gate,
                          partials, ticket):
    """Over the gradient arena x (``noisysim.arena``): per segment s of layer l,
    stats[grad_sq(l)] += sum float64(x)^2 (fixed order: each block's tree, then the last
    block sums the blocks' partials) and stats[grad_bad(l)] += its non-finite elements (an
    atomic add by each thread that saw some: a count, exact in any order, and no block
    reduction, which would cost a barrier per segment); then, in the last block, the
    optimiser's gate and clip scale: gate[0] = 0 when the update must not run
    (``step.blocked``), scale[0] = min(1, clip / ||g||) (clip <= 0: 1)."""
    buf = cuda.shared.array(_SHARED, np.float64)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for s in range(seg_layer.shape[0]):
        acc = 0.0
        nb = 0.0
        for i in range(starts[s] + start, starts[s + 1], stride):
            v = float(x[i])
            acc += v * v
            if not math.isfinite(v):
                nb += 1.0
        if nb > 0.0:
            cuda.atomic.add(stats, d_grad_bad(n_layers, seg_layer[s]), nb)
        _segment_partial(buf, partials, s, acc)
    if _segments_into_stats(buf, partials, ticket, seg_layer, stats, n_layers, False):
        gate[0] = 0 if d_blocked(stats, failure, n_layers, _BEFORE_UPDATE) else 1
        norm = math.sqrt(d_grad_norm_sq(stats, n_layers))
        scale[0] = clip / norm if clip > 0.0 and norm > clip else 1.0


@cuda.jit(device=True)
def _update_setup(updates, scale, gate):
    """(t, clip factor, whether it clips, whether the gate is open) of an optimiser update:
    t = updates[0] + 1 from the device's update counter."""
    gscale = scale[0]
    return updates[0] + 1, gscale, gscale != 1.0, gate[0] != 0


@cuda.jit(device=True)
def _step_element(p, i, delta, stats, bad_idx):
    """p[i] -= delta; stats[bad_idx] = 1 when p[i] is no longer finite. Returns
    float64(delta)^2."""
    pi = p[i] - delta
    p[i] = pi
    if not math.isfinite(pi):
        stats[bad_idx] = 1.0
    return float(delta) * float(delta)


@cuda.jit(device=True)
def _update_done(buf, partials, ticket, seg_layer, stats, n_layers, updates, t):
    """The update norms into stats, and the update counter to t (by the last block: every
    block has read it by then)."""
    if _segments_into_stats(buf, partials, ticket, seg_layer, stats, n_layers, True):
        updates[0] = t


@exact_kernel
def _arena_adam(p, g, m, v, starts, seg_layer, n_layers, scale, gate, b1, omb1, b2, omb2,
                updates, first, lr_c1s, inv_c2s, eps, stats, partials, ticket):
    """Adam over the parameter arena p (gradients g, moments m, v: arenas of its layout)
    when gate[0], in the parameters' dtype and in numpy's operation order
    (noisysim.optim.Adam). Update t = updates[0] + 1 (the device's update counter, which
    then holds t, gate or not) takes lr / (1 - beta1^t) and 1 / (1 - beta2^t) from the
    host-made tables lr_c1s[t - first], inv_c2s[t - first]. Per layer
    stats[update_sq(l)] += ||Delta p||^2 (``_segments_into_stats``), stats[param_bad(l)] = 1
    when p is no longer finite."""
    buf = cuda.shared.array(_SHARED, np.float64)
    t, gscale, clipped, active = _update_setup(updates, scale, gate)
    lr_c1 = lr_c1s[t - first]
    inv_c2 = inv_c2s[t - first]
    for s in range(seg_layer.shape[0]):
        acc = 0.0
        for i in range(starts[s] + cuda.grid(1), starts[s + 1] if active else 0,
                       cuda.gridsize(1)):
            gi = g[i] * gscale if clipped else g[i]
            mi = m[i] * b1
            mi = mi + omb1 * gi
            m[i] = mi
            vi = v[i] * b2
            vi = vi + omb2 * (gi * gi)
            v[i] = vi
            denom = math.sqrt(vi * inv_c2)
            denom = denom + eps
            delta = mi * lr_c1
            delta = delta / denom
            acc += _step_element(p, i, delta, stats, d_param_bad(n_layers, seg_layer[s]))
        _segment_partial(buf, partials, s, acc)
    _update_done(buf, partials, ticket, seg_layer, stats, n_layers, updates, t)


@exact_kernel
def _arena_sgd(p, g, vel, has_vel, starts, seg_layer, n_layers, scale, gate, wd, has_wd, mu,
               nesterov, updates, first, lrs, stats, partials, ticket):
    """SGD (momentum, Nesterov, coupled weight decay) over the parameter arena p, as
    noisysim.optim.SGD, when gate[0]; update t = updates[0] + 1 at the rate lrs[t - first];
    the counter, norms and flags as ``_arena_adam``'s."""
    buf = cuda.shared.array(_SHARED, np.float64)
    t, gscale, clipped, active = _update_setup(updates, scale, gate)
    lr = lrs[t - first]
    for s in range(seg_layer.shape[0]):
        acc = 0.0
        for i in range(starts[s] + cuda.grid(1), starts[s + 1] if active else 0,
                       cuda.gridsize(1)):
            gi = g[i] * gscale if clipped else g[i]
            if has_wd:
                gi = gi + wd * p[i]
            step = gi
            if has_vel:
                vi = vel[i] * mu
                vi = vi + gi
                vel[i] = vi
                step = gi + mu * vi if nesterov else vi
            delta = lr * step
            acc += _step_element(p, i, delta, stats, d_param_bad(n_layers, seg_layer[s]))
        _segment_partial(buf, partials, s, acc)
    _update_done(buf, partials, ticket, seg_layer, stats, n_layers, updates, t)


@exact_kernel
def _decorrelation_delta(delta, second, R, c1, c2, kappa, has_kappa, lr, stats, failure,
                         n_layers, layer, partials, ticket):
    """delta <- lr * (c1 * delta + c2 * (second[:, None] * R) - kappa * R) in R's dtype, as
    the CPU's decorrelation step; stats[decor_sq(layer)] += ||delta||^2 (``_grid_sum``),
    stats[decor_bad(layer)] = 1 where R - delta is not finite. Nothing when the step is
    blocked before layer ``layer``'s R."""
    if d_blocked(stats, failure, n_layers, layer):
        return
    L = n_layers
    idx = d_decor_sq(L, layer)
    bad_idx = d_decor_bad(L, layer)
    buf = cuda.shared.array(_SHARED, np.float64)
    d = R.shape[1]
    acc = 0.0
    for t in range(cuda.grid(1), R.shape[0] * d, cuda.gridsize(1)):
        i = t // d
        j = t - i * d
        v = delta[i, j] * c1
        v = v + c2 * (second[i] * R[i, j])
        if has_kappa:
            v = v - kappa * R[i, j]
        v = v * lr
        delta[i, j] = v
        acc += float(v) * float(v)
        if not math.isfinite(R[i, j] - v):
            stats[bad_idx] = 1.0
    last, total = _grid_sum(buf, partials, ticket, acc)
    if last:
        stats[idx] += total


@exact_kernel
def _apply_delta(R, delta, stats, failure, n_layers, layer):
    """R -= delta unless the step is blocked before layer ``layer``'s R or its own step
    was flagged non-finite (flat arrays)."""
    if d_blocked(stats, failure, n_layers, layer):
        return
    if stats[d_decor_bad(n_layers, layer)] > 0.0:
        return
    for i in range(cuda.grid(1), R.shape[0], cuda.gridsize(1)):
        R[i] = R[i] - delta[i]


@exact_kernel
def _gather_batch(x, y, order, rows, n, x_out, y_out, ticket):
    """x_out[r] = x[order[rows[0] + r]], y_out[r] = y[order[rows[0] + r]] for r < n (y, y_out
    2-D); then rows[0] += n (the device's row counter: the next batch's first row)."""
    buf = cuda.shared.array(_SHARED, np.float64)
    first = rows[0]
    width, y_width = x.shape[1], y.shape[1]
    for t in range(cuda.grid(1), n * width, cuda.gridsize(1)):
        r = t // width
        x_out[r, t - r * width] = x[order[first + r], t - r * width]
    for t in range(cuda.grid(1), n * y_width, cuda.gridsize(1)):
        r = t // y_width
        y_out[r, t - r * y_width] = y[order[first + r], t - r * y_width]
    if _elect_last(buf, ticket) and cuda.threadIdx.x == 0:
        rows[0] = first + n
        ticket[0] = 0


@exact_kernel
def _advance(value, n):
    if cuda.grid(1) == 0:
        value[0] = value[0] + n


@exact_kernel
def _record(stats, failure, n_layers, steps):
    """The step's verdict into the failure record; the step number is steps[0] + 1 (the
    device's step counter), which it then holds."""
    if cuda.grid(1) == 0:
        step = steps[0] + 1
        d_record(stats, failure, n_layers, step)
        steps[0] = step


# ============================================================================ host wrappers
# Arrays in and out are device arrays (CuPy / numba; numpy under the simulator). Scalars that
# must keep the parameters' dtype are passed as numpy scalars of that dtype.


# -- generator


def fill_uniform(out, key, element_offset=0) -> None:
    """out[i] = rng.uniform(key, element_offset + i) for a 1-D float32/float64 device array."""
    launch(_fill_uniform, out.shape[0], out, _u64(key), np.int64(element_offset))


def fill_normal_rows(out, seed, stream, times, layer, scale=1.0, element_offset=0) -> None:
    """out[r, i] = scale * rng.normal(rng.key(seed, stream, times[r], layer),
    element_offset + i) for out (R, M), R = len(times); the product is taken in float64
    and rounded once to out's dtype (scale 1: exactly the draws)."""
    m = out.shape[1]
    if m == 0:
        return
    off = int(element_offset)
    n_pairs = ((off + m - 1) >> 1) - (off >> 1) + 1
    for i, clock, t0, count in clocked(times, out):
        launch(_scaled_normal_rows, count * n_pairs, out[i:i + count], _u64(seed),
               _u64(stream), clock, t0, _u64(layer), float(scale), np.int64(off))


# -- device noise (a: (P, B, N) device array; times: host int64 (P,), increasing)


def gaussian_apply(a, times, seed, layer, mean, sigma, multiplicative) -> None:
    for i, clock, t0, count in clocked(times, a):
        a2 = a[i:i + count].reshape(count, -1)
        m = a2.shape[1]
        launch(_gaussian, count * ((m + 1) >> 1), a2, _u64(seed), clock, t0, _u64(layer),
               float(mean), float(sigma), bool(multiplicative))


def bernoulli_apply(a, times, seed, layer, prob, amplitude, offset, n_sources, centred,
                    node_p=None) -> None:
    """node_p: None, or a float64 device array (N,) of per-node probabilities."""
    varied = node_p is not None
    node_p = node_p if varied else _dummy(a, 1, np.float64)
    for i, clock, t0, count in clocked(times, a):
        a2 = a[i:i + count].reshape(count, -1)
        launch(_bernoulli, a2.size, a2, _u64(seed), clock, t0, _u64(layer), float(prob),
               float(amplitude), float(offset), np.int64(n_sources), bool(centred), node_p,
               np.int64(a.shape[2]), varied)


def telegraph_apply(a, times, last_time, spin, seed, layer, p_flip, amplitude, offset, sigma,
                    scale, thermal, node_p=None) -> None:
    """spin (slots >= B, N, n_sources) int8 and last_time (slots,) int64 device arrays,
    updated in place for the first B slots; node_p: None, or a float64 device array (N,)
    of per-node flip probabilities."""
    n_slots, width = a.shape[1], a.shape[2]
    varied = node_p is not None
    node_p = node_p if varied else _dummy(a, 1, np.float64)
    for i, clock, t0, count in clocked(times, a):
        a2 = a[i:i + count].reshape(count, -1)
        launch(_telegraph, a2.shape[1], a2, _u64(seed), clock, t0, _u64(layer), last_time,
               _flat(spin), np.int64(width), np.int64(spin.shape[2]), float(p_flip),
               float(amplitude), float(offset), float(sigma), float(scale), bool(thermal),
               node_p, varied)
        launch(_set_last_time, n_slots, last_time, np.int64(n_slots),
               clock, t0 + np.int64(count - 1))


def ou_apply(a, times, last_time, x, seed, layer, decay, c1, std, mean) -> None:
    """x (slots >= B, N, K) float64 and last_time device arrays, updated in place; decay, c1,
    std (K,) float64 device arrays."""
    n_slots, width = a.shape[1], a.shape[2]
    for i, clock, t0, count in clocked(times, a):
        a2 = a[i:i + count].reshape(count, -1)
        launch(_ou, a2.shape[1], a2, _u64(seed), clock, t0, _u64(layer), last_time,
               _flat(x), np.int64(width), np.int64(x.shape[2]), decay, c1, std, float(mean))
        launch(_set_last_time, n_slots, last_time, np.int64(n_slots),
               clock, t0 + np.int64(count - 1))


def trace_apply(a, times, trace, per_node, segment, offset, scale) -> None:
    """trace: float64 device array (the recording); segment: int >= 1 (per_node)."""
    for i, clock, t0, count in clocked(times, a):
        a2 = a[i:i + count].reshape(count, -1)
        launch(_trace, a2.size, a2, trace, clock, t0, bool(per_node),
               np.int64(max(segment, 1)), float(offset), float(scale))


# -- network


def activation_forward(a, out, code, p0, p1, p2, seed, layer, times) -> None:
    """out[p, b, j] = f(a[p, b, j]) as cpu.activation_forward (a, out: (P, B, N))."""
    n_pass, n_batch, width = a.shape
    runs_ = (clocked(times, a) if code == _BINARY_STOCHASTIC
             else [(0, _dummy(a, 1, np.int64), np.int64(0), n_pass)])  # no draws: no times
    for i, clock, t0, count in runs_:
        rows = count * n_batch
        launch(_activation, rows * width, a[i:i + count].reshape(rows, width),
               out[i:i + count].reshape(rows, width), np.int64(code), float(p0), float(p1),
               float(p2), _u64(seed), clock, t0, _u64(layer), np.int64(n_batch))


def activation_derivative(a, out, code, p0, p1, p2, mode, upstream=None) -> None:
    """out = f'(a) (or the surrogate), or upstream * f'(a) when upstream is given; 2-D."""
    up = upstream if upstream is not None else _dummy(a, 2)
    launch(_derivative, a.size, up, a, out, np.int64(code), float(p0), float(p1), float(p2),
           np.int64(mode), upstream is not None)


def add_bias_and_perturbation(a, bias, eps, has_bias, has_eps) -> None:
    """a[p, b, :] += bias, then a += eps (in a's dtype); a, eps: (P, B, N)."""
    width = a.shape[-1]
    a2 = a.reshape(-1, width)
    launch(_add_bias_eps, a2.size, a2, bias if has_bias else _dummy(a, 1),
           eps.reshape(-1, width) if has_eps else _dummy(a, 2), bool(has_bias),
           bool(has_eps))


def cross_entropy(logits, labels, out) -> None:
    launch(_cross_entropy, logits.shape[0], logits, labels, out)


def cross_entropy_grad(logits, labels, out) -> None:
    launch(_cross_entropy_grad, logits.shape[0], logits, labels, out)


def softmax_mse(logits, labels, out) -> None:
    launch(_softmax_mse, logits.shape[0], logits, labels, out)


def softmax_mse_grad(logits, labels, out) -> None:
    launch(_softmax_mse_grad, logits.shape[0], logits, labels, out)


def squared_error(outputs, targets, out) -> None:
    launch(_squared_error, outputs.shape[0], outputs, targets, out)


def squared_error_grad(outputs, targets, out) -> None:
    launch(_squared_error_grad, outputs.size, outputs, targets, out)


# -- perturbation statistics


def diff_squared_norm(pre, first, sq) -> None:
    """sq[j, b] += ||pre[first + j, b] - pre[0, b]||^2 in float64; sq (count, B)."""
    rows = sq.shape[0] * sq.shape[1]
    launch(_diff_sq_norm, rows, pre, np.int64(first), sq,
           blocks=max(1, min(MAX_BLOCKS, rows)))


def loss_scale(losses, first, out, sq=None, factor=1.0, divisor=1.0) -> None:
    """Per-pass, per-sample coefficient of a node rule, written in out's dtype (count, B):
    dell * factor / sq (0 where sq == 0) when sq is given, else dell / divisor."""
    launch(_loss_scale, out.size, losses, np.int64(first),
           sq if sq is not None else _dummy(losses, 2),
           sq is not None, float(factor), float(divisor), out)


def node_coefficients(vec, first, diff, scale, inv, out) -> None:
    """out[b, n] = inv * sum_j scale[j, b] * (vec[first + j] - vec[0] if diff else
    vec[first + j]); inv a numpy scalar of out's dtype."""
    launch(_node_coefficients, out.size, vec, np.int64(first), bool(diff), scale, inv, out)


def step_stats(losses, outputs, labels, out, has_labels=True) -> None:
    """The loss statistics of a step into out (``noisysim.kernels.step`` layout)."""
    launch(_step_stats, 1, losses, outputs, labels, bool(has_labels), out, blocks=1)


# -- optimisers and decorrelation (guarded by the step's statistics)


def arena_gradient_norms(x, starts, seg_layer, stats, failure, n_layers, clip, scale,
                         gate) -> None:
    """Per layer ||g||^2 and non-finite counts of the gradient arena x (flat; starts and
    seg_layer its segment tables on the device), then the optimiser's gate: one launch."""
    launch(_arena_gradient_norms, x.size, x, starts, seg_layer, stats, failure,
           np.int64(n_layers), float(clip or 0.0), scale, gate,
           *_segment_scratch(stats, seg_layer.shape[0]), blocks=_segment_blocks(x.size))


def arena_adam(p, g, m, v, starts, seg_layer, n_layers, scale, gate, b1, omb1, b2, omb2,
               count, first, lr_c1s, inv_c2s, eps, stats) -> None:
    """Adam update ``count`` over the whole parameter arena: one launch (the tables hold
    updates first, first + 1, ... and cover count; the device's update counter is made to
    hold count - 1 and advances to count)."""
    launch(_arena_adam, p.size, p, g, m, v, starts, seg_layer, np.int64(n_layers), scale,
           gate, b1, omb1, b2, omb2, counter("updates", count - 1, stats), np.int64(first),
           lr_c1s, inv_c2s, eps, stats, *_segment_scratch(stats, seg_layer.shape[0]),
           blocks=_segment_blocks(p.size))
    counted("updates", stats)


def arena_sgd(p, g, vel, starts, seg_layer, n_layers, scale, gate, wd, mu, nesterov, count,
              first, lrs, stats) -> None:
    """SGD update ``count`` over the whole parameter arena (vel: its velocity arena, or
    None; lrs: the rate per update): one launch."""
    t = p.dtype.type
    launch(_arena_sgd, p.size, p, g, vel if vel is not None else _dummy(p, 1),
           vel is not None, starts, seg_layer, np.int64(n_layers), scale, gate, t(wd),
           bool(wd), t(mu), bool(nesterov), counter("updates", count - 1, stats),
           np.int64(first), lrs, stats,
           *_segment_scratch(stats, seg_layer.shape[0]), blocks=_segment_blocks(p.size))
    counted("updates", stats)


def decorrelation_delta(delta, second, R, c1, c2, kappa, lr, stats, failure, n_layers,
                        layer) -> None:
    t = R.dtype.type
    launch(_decorrelation_delta, R.size, delta, second, R, t(c1), t(c2), t(kappa),
           bool(kappa), t(lr), stats, failure, np.int64(n_layers), np.int64(layer),
           *_reduction_scratch(stats))


def apply_delta(R, delta, stats, failure, n_layers, layer) -> None:
    launch(_apply_delta, R.size, _flat(R), _flat(delta), stats, failure, np.int64(n_layers),
           np.int64(layer))


def record(stats, failure, n_layers, step) -> None:
    """Record step ``step``'s verdict (the step number from the device's step counter)."""
    launch(_record, 1, stats, failure, np.int64(n_layers), counter("step", step - 1, stats),
           blocks=1)
    counted("step", stats)


def gather_batch(x, y, order, start, x_out, y_out) -> None:
    """Rows order[start:start + n] of x (N, D) and y (N, ...) into x_out (n, D) and y_out
    (n, ...), n = x_out.shape[0]: one launch, the first row from the device's row counter
    (made to hold ``start``; it advances by n)."""
    n = x_out.shape[0]
    rows = counter("rows", start, x)
    launch(_gather_batch, n * x.shape[1], x, y.reshape(y.shape[0], -1), order, rows,
           np.int64(n), x_out, y_out.reshape(n, -1), _reduction_scratch(x)[1])
    counted("rows", x, n)


def set_clock(like, t) -> None:
    """Make the device's pass clock (counter "clock") hold t (a write only when it does
    not already)."""
    counter("clock", t, like)


def advance_clock(like, n) -> None:
    """The device's pass clock += n: after the passes of a measurement."""
    clock = counter("clock", counter_value("clock", like), like)
    launch(_advance, 1, clock, np.int64(n), blocks=1)
    counted("clock", like, n)
