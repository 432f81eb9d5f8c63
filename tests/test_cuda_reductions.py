"""Deterministic float reductions of the CUDA kernels (issue 10: same seed, same trajectory
bit for bit).

The norms and sums the kernels accumulate into the step's statistics (||g||^2, ||Delta
p||^2, ||Delta R||^2, the weight device's clipped amount) go through
``noisysim.kernels.cuda._grid_sum``: a fixed tree within a block, then the blocks'
partials reduced in a fixed order by the block that finishes last, added once to the
statistic. A float atomic add per block would add them in the order blocks finish, which
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
    n = _n()
    return (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 7, n)).astype(dtype)


def _ticket_is_reset(like):
    from noisysim.kernels.cuda_launch import _reduction_scratch

    ticket = _reduction_scratch(like)[1]
    host = ticket.copy_to_host() if hasattr(ticket, "copy_to_host") else np.asarray(ticket)
    return int(host[0]) == 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sum_squares_sums_in_the_fixed_grid_order(dtype):
    from noisysim.kernels import cuda as C

    K = kernels("cuda")
    x = _terms(np.random.default_rng(1), dtype)
    stats = K.asarray(np.array([START, 0.0]))
    C.sum_squares(K.asarray(x), stats, 0, 1)
    got = K.to_host(stats)
    assert got[1] == 0.0
    _assert_reduced(got[0], x.astype(np.float64) ** 2)


def test_grid_sum_adds_the_blocks_total_once():
    """The statistic gets START + (block 0 + block 1), not (START + block 0) + block 1 (an
    add per block): with START = block 0 = 0.390625 and block 1 = 2^52 (float64 spacing 1
    there) the first rounds to 2^52, the second keeps 0.78125 as 2^52 + 1."""
    from noisysim.kernels import cuda as C
    from noisysim.kernels.cuda_launch import THREADS

    K = kernels("cuda")
    x = np.zeros(_n())
    x[0], x[THREADS] = 0.625, 2.0 ** 26  # thread 0 of block 0, thread 0 of block 1
    stats = K.asarray(np.array([0.390625, 0.0]))
    C.sum_squares(K.asarray(x), stats, 0, 1)
    assert K.to_host(stats)[0] == 2.0 ** 52
    assert _ticket_is_reset(stats)


def test_sum_squares_counts_non_finite_elements():
    from noisysim.kernels import cuda as C

    K = kernels("cuda")
    x = np.arange(_n(), dtype=np.float64)
    x[[3, 20, 30]] = [np.nan, np.inf, -np.inf]
    stats = K.asarray(np.zeros(2))
    C.sum_squares(K.asarray(x), stats, 0, 1)
    assert K.to_host(stats)[1] == 3.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sgd_update_norm_sums_in_the_fixed_grid_order(dtype):
    from noisysim.kernels import cuda as C

    K = kernels("cuda")
    rng = np.random.default_rng(2)
    n = _n()
    p, g = rng.standard_normal(n).astype(dtype), _terms(rng, dtype)
    lr = dtype(0.3)
    stats = K.asarray(np.array([START, 0.0]))
    dp = K.asarray(p)
    C.sgd_update(dp, K.asarray(g), None, K.asarray(np.ones(1, dtype)),
                 K.asarray(np.ones(1, np.int32)), 0.0, 0.0, False, lr, stats, 0, 1)
    delta = lr * g  # the kernel's delta, in the dtype
    np.testing.assert_array_equal(K.to_host(dp), p - delta)
    _assert_reduced(K.to_host(stats)[0], delta.astype(np.float64) ** 2)
    assert _ticket_is_reset(stats)


def test_adam_update_norm_sums_in_the_fixed_grid_order():
    from noisysim.kernels import cuda as C

    K = kernels("cuda")
    rng = np.random.default_rng(3)
    n = _n()
    p, g, m = rng.standard_normal(n), _terms(rng, np.float64), rng.standard_normal(n)
    v = rng.random(n)
    b1, b2, inv_c2, eps, lr_c1 = 0.9, 0.999, 1.0 / (1.0 - 0.999 ** 3), 1e-8, 0.01
    stats = K.asarray(np.array([START, 0.0]))
    C.adam_update(K.asarray(p), K.asarray(g), K.asarray(m), K.asarray(v),
                  K.asarray(np.ones(1)), K.asarray(np.ones(1, np.int32)), b1, 1.0 - b1, b2,
                  1.0 - b2, inv_c2, eps, lr_c1, stats, 0, 1)
    # the kernel's delta, operation by operation (float64)
    mi = m * b1 + (1.0 - b1) * g
    vi = v * b2 + (1.0 - b2) * (g * g)
    delta = (mi * lr_c1) / (np.sqrt(vi * inv_c2) + eps)
    _assert_reduced(K.to_host(stats)[0], delta ** 2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_decorrelation_norm_sums_in_the_fixed_grid_order(dtype):
    from noisysim.kernels import cuda as C
    from noisysim.kernels import step

    K = kernels("cuda")
    rng = np.random.default_rng(4)
    d = 6  # R (6, 6): 36 elements over both blocks
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
INTEGER_ATOMICS = {("_grid_sum", "ticket", "0"), ("_sum_squares", "out", "bad_idx"),
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
