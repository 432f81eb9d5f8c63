"""Deterministic float reductions of the CUDA kernels (issue 10: same seed, same trajectory
bit for bit).

The norms and sums the kernels accumulate into the step's statistics (||g||^2, ||Delta
p||^2, ||Delta R||^2, the weight device's clipped amount) go through a fixed tree within a
block, then the blocks' partials reduced in a fixed order by the block that finishes last,
added once to the statistic: ``noisysim.kernels.cuda._grid_sum`` for one array, one row of
partials per segment for the arenas of the gradients and the parameters
(``noisysim.arena``), whose segments' totals go to their layers' statistics in segment
order. A float atomic add per block would add them in the order blocks finish, which
varies on a GPU. Checked here under numba's CUDA simulator (NOISYSIM_CUDA_HARDWARE=1 runs
them on a GPU):

- each reduction equals a plain-numpy evaluation of exactly that order, bit for bit, and
  np.sum within the bound of two summation orders; the statistic gets the grid's total
  once (an add per block into it rounds differently, shown on designed values);
- no float atomic add is left in the kernels (a static check of their source);
- the ticket that elects the last block is back at 0 after every launch.
The launch budgets of a step are tests/test_engine.py's; the machine code of the kernels
tests/test_cuda_compile.py's.
"""

from __future__ import annotations

import ast
import math
import os

import numpy as np
import pytest

from backends import kernels

# the simulator runs the generator's uint64 arithmetic in numpy, which warns as it wraps
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = 0.1  # the statistic's value before the kernel adds to it


def _n():
    """Elements of a test reduction: more than one block (37 in the simulator: 2 blocks of
    8 threads, the grid stride loops twice)."""
    from noisysim.kernels.cuda_launch import THREADS

    return 4 * THREADS + 5


def _grid_order(terms, blocks):
    """The block sums of float64 ``terms`` as ``_block_sum`` forms them on a grid of
    ``blocks`` blocks of T threads: thread g of G = blocks T adds terms g, g + G, ... from
    0.0; each block halves its threads' sums as a tree (thread t += thread t + step,
    step = T/2, T/4, ..., 1)."""
    from noisysim.kernels.cuda_launch import THREADS

    G = blocks * THREADS
    per_thread = np.zeros(G)
    for g in range(G):
        acc = 0.0
        for i in range(g, len(terms), G):
            acc += float(terms[i])
        per_thread[g] = acc
    sums = []
    for b in range(blocks):
        buf = per_thread[b * THREADS:(b + 1) * THREADS].copy()
        step = THREADS // 2
        while step > 0:
            buf[:step] += buf[step:2 * step]
            step //= 2
        sums.append(buf[0])
    return sums


def _grid_sum(terms):
    """``_grid_sum``'s total for a launch over len(terms) items: the blocks' sums, then
    those partials reduced the same way by the one block that finishes last."""
    from noisysim.kernels.cuda_launch import _blocks

    (total,) = _grid_order(_grid_order(terms, _blocks(len(terms))), 1)
    return total


def _assert_reduced(got, terms):
    """got == START + _grid_sum(terms), exactly; and within the bound of two orders of
    summation of np.sum's result: 2 (n + 1) u sum|t| (n - 1 additions each, plus the one
    into START, each rounding once, first order in u = 2^-53)."""
    terms = np.asarray(terms, dtype=np.float64)
    assert got == START + _grid_sum(terms)
    bound = 2 * (terms.size + 1) * 2.0 ** -53 * (START + np.abs(terms).sum())
    assert abs(got - (START + np.sum(terms))) <= bound


def _terms(rng, dtype):
    """Values over many orders of magnitude, so that the order of summation shows."""
    return _terms_n(rng, dtype, _n())


def _terms_n(rng, dtype, n):
    return (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 7, n)).astype(dtype)


def _ticket_is_reset(like):
    from noisysim.kernels.cuda_launch import _reduction_scratch

    ticket = _reduction_scratch(like)[1]
    host = ticket.copy_to_host() if hasattr(ticket, "copy_to_host") else np.asarray(ticket)
    return int(host[0]) == 0


def _layout():
    """A two-layer arena (noisysim.arena): W_0 (5, T + 2), b_0 (5,), W_1 (2, 5), no b_1
    (T threads per block): three segments, the first spanning more than one block."""
    from noisysim.kernels.cuda_launch import THREADS

    return (((5, THREADS + 2), (5,)), ((2, 5), None))


def _size():
    from noisysim.kernels.cuda_launch import THREADS

    return 5 * (THREADS + 2) + 5 + 10


def _arena(K, values, dtype):
    from noisysim.arena import Arena

    arena = Arena(K, _layout(), dtype)
    arena.flat[...] = K.asarray(np.asarray(values, dtype=dtype))
    return arena


def _segment_totals(terms, arena):
    """Each segment's total as the arena kernels form it: the grid (``_segment_blocks``
    blocks) strides over the segment from its start, each block's tree, then the last block
    reduces the segment's row of partials as ``_grid_sum`` reduces its one row."""
    from noisysim.kernels.cuda_launch import _segment_blocks

    blocks = _segment_blocks(arena.size)
    out = []
    for _, start, size in arena.segments:
        (total,) = _grid_order(_grid_order(terms[start:start + size], blocks), 1)
        out.append(total)
    return out


def _assert_per_layer(stats, index, terms, arena):
    """stats[index(l)] == START + its segments' totals added in segment order, exactly,
    and within the bound of two summation orders of np.sum over the layer's terms."""
    terms = np.asarray(terms, dtype=np.float64)
    totals = _segment_totals(terms, arena)
    for l in range(arena.n_layers):
        want = START
        mine = [i for i, seg in enumerate(arena.segments) if seg[0] == l]
        for i in mine:
            want += totals[i]
        assert stats[index(l)] == want, l
        layer_terms = np.concatenate([terms[arena.segments[i][1]:][:arena.segments[i][2]]
                                      for i in mine])
        bound = 2 * (layer_terms.size + 1) * 2.0 ** -53 * (START + np.abs(layer_terms).sum())
        assert abs(stats[index(l)] - (START + np.sum(layer_terms))) <= bound


def _stats_at_start(index):
    from noisysim.kernels import step

    stats = np.zeros(step.size(2))
    for l in range(2):
        stats[index(l)] = START
    return stats


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gradient_norms_sum_each_layer_in_the_fixed_grid_order(dtype):
    from noisysim.kernels import step

    K = kernels("cuda")
    arena = _arena(K, _terms_n(np.random.default_rng(1), dtype, _size()), dtype)
    index = lambda l: step.grad_sq(2, l)  # noqa: E731
    stats = K.asarray(_stats_at_start(index))
    K.gradient_norms(arena, stats, K.asarray(step.new_failure()), 2, None)
    got = K.to_host(stats)
    assert got[step.grad_bad(2, 0)] == got[step.grad_bad(2, 1)] == 0.0
    _assert_per_layer(got, index, K.to_host(arena.flat).astype(np.float64) ** 2, arena)
    assert _ticket_is_reset(stats)


def test_gradient_norms_count_non_finite_elements_per_layer_and_close_the_gate():
    from noisysim.kernels import step

    K = kernels("cuda")
    x = np.arange(_size(), dtype=np.float64)
    w0 = _layout()[0][0][0] * _layout()[0][0][1]
    x[[3, w0 - 1, w0 + 2]] = [np.nan, np.inf, -np.inf]  # W_0, W_0, b_0
    x[-1] = np.nan                                      # W_1
    stats = K.asarray(np.zeros(step.size(2)))
    K.gradient_norms(_arena(K, x, np.float64), stats, K.asarray(step.new_failure()), 2, None)
    got = K.to_host(stats)
    assert (got[step.grad_bad(2, 0)], got[step.grad_bad(2, 1)]) == (3.0, 1.0)
    assert int(K.to_host(K._gate(np.float64)[1])[0]) == 0


def test_gradient_norms_add_each_layers_total_once():
    """The statistic gets START + (block 0 + block 1), not (START + block 0) + block 1 (an
    add per block): with START = block 0 = 0.390625 and block 1 = 2^52 (float64 spacing 1
    there) the first rounds to 2^52, the second keeps 0.78125 as 2^52 + 1."""
    from noisysim.kernels import step
    from noisysim.kernels.cuda_launch import THREADS

    K = kernels("cuda")
    x = np.zeros(_size())
    x[0], x[THREADS] = 0.625, 2.0 ** 26  # W_0: thread 0 of block 0, thread 0 of block 1
    stats = np.zeros(step.size(2))
    stats[step.grad_sq(2, 0)] = 0.390625
    stats = K.asarray(stats)
    K.gradient_norms(_arena(K, x, np.float64), stats, K.asarray(step.new_failure()), 2, None)
    assert K.to_host(stats)[step.grad_sq(2, 0)] == 2.0 ** 52
    assert _ticket_is_reset(stats)


@pytest.mark.parametrize("clip", [None, 1e9, 2.0])
def test_gradient_norms_set_the_gate_and_the_clip_scale_from_all_layers(clip):
    from noisysim.kernels import step

    K = kernels("cuda")
    x = np.random.default_rng(6).standard_normal(_size())
    stats = K.asarray(np.zeros(step.size(2)))
    K.gradient_norms(_arena(K, x, np.float64), stats, K.asarray(step.new_failure()), 2, clip)
    scale, gate = (K.to_host(a)[0] for a in K._gate(np.float64))
    norm = np.sqrt(step.grad_norm_sq(K.to_host(stats), 2))
    assert gate == 1
    assert scale == (clip / norm if clip is not None and norm > clip else 1.0)
    assert clip != 2.0 or scale < 1.0  # the designed case clips


def _open_gate(K, dtype):
    scale, gate = K._gate(dtype)
    scale[...] = 1
    gate[...] = 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sgd_update_norm_sums_each_layer_in_the_fixed_grid_order(dtype):
    from noisysim.kernels import step
    from noisysim.optim import SGD

    K = kernels("cuda")
    rng = np.random.default_rng(2)
    p, g = rng.standard_normal(_size()).astype(dtype), _terms_n(rng, dtype, _size())
    params, grads = _arena(K, p, dtype), _arena(K, g, dtype)
    index = lambda l: step.update_sq(2, l)  # noqa: E731
    stats = K.asarray(_stats_at_start(index))
    _open_gate(K, dtype)
    K.sgd_update(params, grads, None, SGD(lr=0.3), 1, stats, 2)
    delta = dtype(0.3) * g  # the kernel's delta, in the dtype
    np.testing.assert_array_equal(K.to_host(params.flat), p - delta)
    _assert_per_layer(K.to_host(stats), index, delta.astype(np.float64) ** 2, params)
    assert _ticket_is_reset(stats)


def test_adam_update_norm_sums_each_layer_in_the_fixed_grid_order():
    from noisysim.kernels import step
    from noisysim.optim import Adam

    K = kernels("cuda")
    rng = np.random.default_rng(3)
    n = _size()
    p, g, m = rng.standard_normal(n), _terms_n(rng, np.float64, n), rng.standard_normal(n)
    v = rng.random(n)
    opt = Adam(lr=0.01)
    arenas = [_arena(K, a, np.float64) for a in (p, g, m, v)]
    index = lambda l: step.update_sq(2, l)  # noqa: E731
    stats = K.asarray(_stats_at_start(index))
    _open_gate(K, np.float64)
    K.adam_update(*arenas, opt, 3, stats, 2)
    # the kernel's delta, operation by operation (float64)
    b1, b2 = 0.9, 0.999
    lr_c1, inv_c2 = 0.01 / (1.0 - b1 ** 3), 1.0 / (1.0 - b2 ** 3)
    mi = m * b1 + (1.0 - b1) * g
    vi = v * b2 + (1.0 - b2) * (g * g)
    delta = (mi * lr_c1) / (np.sqrt(vi * inv_c2) + 1e-8)
    np.testing.assert_array_equal(K.to_host(arenas[0].flat), p - delta)
    _assert_per_layer(K.to_host(stats), index, delta ** 2, arenas[0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_decorrelation_norm_sums_in_the_fixed_grid_order(dtype):
    from noisysim.kernels import cuda as C
    from noisysim.kernels import step
    from noisysim.kernels.cuda_launch import THREADS

    K = kernels("cuda")
    rng = np.random.default_rng(4)
    d = int(math.sqrt(3 * THREADS)) + 1  # R (d, d): more elements than two blocks hold
    R = rng.standard_normal((d, d)).astype(dtype)
    delta = K.asarray((rng.standard_normal((d, d)) * 10.0 ** rng.integers(-5, 6, (d, d))
                       ).astype(dtype))
    stats = np.zeros(step.size(1))
    idx = step.decor_sq(1, 0)
    stats[idx] = START
    stats = K.asarray(stats)
    C.decorrelation_delta(delta, K.asarray(rng.random(d).astype(dtype)), K.asarray(R),
                          0.1, 0.2, 0.05, 0.5, stats, K.asarray(step.new_failure()), 1, 0)
    written = K.to_host(delta).astype(np.float64).ravel()  # the delta the kernel formed
    _assert_reduced(K.to_host(stats)[idx], written ** 2)


def test_weight_device_clipped_amount_sums_in_the_fixed_grid_order():
    from noisysim.kernels import cuda_hardware as H
    from noisysim.kernels import hardware, rng

    K = kernels("cuda")
    gen = np.random.default_rng(5)
    n = _n()
    old = gen.uniform(-1.0, 1.0, n)
    p = old + _terms(gen, np.float64)  # most proposals leave [-1, 1]: clipped
    ku, kz = hardware.write_keys(7, 1, 0)
    args = (hardware.CONSTANT_STEP, 0.01, -1.0, 1.0, 0.0, 0.0, 1e9, False)
    stats = K.asarray(np.array([0.0, START]))
    H.weight_write(K.asarray(p), K.asarray(old), args, ku, kz,
                   K.asarray(np.ones(1, np.int32)), stats, 0, 1)
    per_weight = [hardware.write_scalar(old[i], p[i] - old[i], rng.uniform(ku, i), 0.0,
                                        *args) for i in range(n)]
    clipped = np.array([c for _, _, c in per_weight])
    assert np.count_nonzero(clipped) > _n() // 2
    got = K.to_host(stats)
    assert got[0] == sum(pulses for _, pulses, _ in per_weight)  # a count: exact
    _assert_reduced(got[1], clipped)


# Atomic adds that may stay: (kernel, array, index) of integer-valued counts, exact in
# float64 in any order, and _grid_sum's ticket (an int32).
INTEGER_ATOMICS = {("_elect_last", "ticket", "0"),
                   ("_arena_gradient_norms", "stats", "d_grad_bad(n_layers, seg_layer[s])"),
                   ("_weight_write", "stats", "writes_idx")}


def test_no_float_atomic_add_is_left_in_the_cuda_kernels():
    found = set()
    for name in sorted(os.listdir(os.path.join(ROOT, "noisysim", "kernels"))):
        if not (name.startswith("cuda") and name.endswith(".py")):
            continue
        with open(os.path.join(ROOT, "noisysim", "kernels", name)) as f:
            tree = ast.parse(f.read())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for call in ast.walk(fn):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                        and ast.unparse(call.func.value) == "cuda.atomic"):
                    found.add((fn.name, ast.unparse(call.args[0]),
                               ast.unparse(call.args[1])))
    assert found == INTEGER_ATOMICS
