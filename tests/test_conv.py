"""Convolutional layers (issue 14): kernels, forward, exact gradient, estimators, config."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from noisysim.decorrelation import Decorrelator
from noisysim.device import Device, exact_gradient
from noisysim.kernels.backend import CPU
from noisysim.network import Network

import naive_conv
import naive_core
from test_rules import (
    COS_MIN, assert_projections_anp_biased_np_inp_not, cosine, draws_needed, layer_vector,
    mean_estimate,
)

# (H, W, C, k, stride, pad): square and not, C > 1, stride 2, padding, kernel = image
CONV_SHAPES = [(5, 5, 1, 3, 1, 0), (6, 7, 3, 3, 2, 1), (4, 9, 2, 2, 1, 2), (7, 5, 4, 5, 3, 2),
               (3, 3, 2, 3, 1, 0), (8, 6, 1, 1, 1, 0)]
# (H, W, C, size, stride): disjoint, overlapping (stride < size), ragged edges, C > 1
POOL_SHAPES = [(4, 4, 1, 2, 2), (5, 7, 3, 3, 1), (6, 5, 2, 2, 1), (7, 7, 2, 3, 2),
               (3, 5, 1, 3, 3)]
# float32 results of sums: the kernels add in float64 and round once, so the error against
# the float64 twin is at most half an ulp of the result (2^-24 relative) plus the float64
# sum's own error, n 2^-53 sum|terms| <= 1e-12 here (n <= 25 terms of size < 10).
F32 = dict(rtol=2.0 ** -24, atol=1e-12)
F64 = dict(rtol=1e-12, atol=1e-12)


def _images(rng, R, H, W, C, dtype, ties=False):
    x = rng.standard_normal((R, H * W * C))
    if ties:  # few distinct values: max-pool windows with several maxima
        x = np.round(x)
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("H,W,C,k,s,p", CONV_SHAPES)
def test_im2col_and_col2im_equal_the_naive_twins(H, W, C, k, s, p, dtype):
    rng = np.random.default_rng(H * 100 + W * 10 + C)
    R = 3
    x = _images(rng, R, H, W, C, dtype)
    L = naive_conv.out_size(H, k, s, p) * naive_conv.out_size(W, k, s, p)
    cols = np.full((R * L, k * k * C), np.nan, dtype=dtype)
    CPU.im2col(x, (H, W, C), k, s, p, cols)
    np.testing.assert_array_equal(cols, naive_conv.im2col(x, (H, W, C), k, s, p))  # copies
    g = rng.standard_normal(cols.shape).astype(dtype)
    out = np.full(x.shape, np.nan, dtype=dtype)
    CPU.col2im(g, (H, W, C), k, s, p, out)
    np.testing.assert_allclose(out, naive_conv.col2im(g, (H, W, C), k, s, p),
                               **(F64 if dtype == "float64" else F32))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("H,W,C,size,s", POOL_SHAPES)
def test_pooling_and_its_backward_equal_the_naive_twins(H, W, C, size, s, kind, dtype):
    rng = np.random.default_rng(H * 100 + W * 10 + size)
    R = 3
    x = _images(rng, R, H, W, C, dtype, ties=True)
    Ho, Wo = naive_conv.out_size(H, size, s, 0), naive_conv.out_size(W, size, s, 0)
    out = np.full((R, Ho * Wo * C), np.nan, dtype=dtype)
    CPU.pool_forward(x, (H, W, C), kind, size, s, out)
    tol = F64 if dtype == "float64" else F32
    np.testing.assert_allclose(out, naive_conv.pool(x, (H, W, C), kind, size, s), **tol)
    g = rng.standard_normal(out.shape).astype(dtype)
    back = np.full(x.shape, np.nan, dtype=dtype)
    CPU.pool_backward(g, x, (H, W, C), kind, size, s, back)
    np.testing.assert_allclose(back, naive_conv.pool_backward(g, x, (H, W, C), kind, size, s),
                               **tol)


def test_col2im_is_the_adjoint_of_im2col():
    """<im2col(x), g> == <x, col2im(g)> for random x, g (float64, up to rounding)."""
    rng = np.random.default_rng(0)
    shape, k, s, p = (6, 7, 3), 3, 2, 1
    x = rng.standard_normal((2, 6 * 7 * 3))
    L = naive_conv.out_size(6, k, s, p) * naive_conv.out_size(7, k, s, p)
    cols = np.empty((2 * L, k * k * 3))
    CPU.im2col(x, shape, k, s, p, cols)
    g = rng.standard_normal(cols.shape)
    back = np.empty_like(x)
    CPU.col2im(g, shape, k, s, p, back)
    assert np.vdot(cols, g) == pytest.approx(np.vdot(x, back), rel=1e-12)


KERNEL_SCRIPT = textwrap.dedent(
    """
    import hashlib, numpy as np
    from noisysim.kernels.backend import CPU
    h = hashlib.sha256()
    rng = np.random.default_rng(1)
    # 64 images of 24 x 24 x 8: above PARALLEL_MIN_SIZE, so the parallel kernels run
    shape, R = (24, 24, 8), 64
    x = np.round(rng.standard_normal((R, 24 * 24 * 8)), 1).astype(np.float32)
    cols = np.empty((R * 22 * 22, 72), np.float32)
    CPU.im2col(x, shape, 3, 1, 0, cols)
    back = np.empty_like(x)
    CPU.col2im(cols, shape, 3, 1, 0, back)
    for kind in ("max", "avg"):
        out = np.empty((R, 11 * 11 * 8), np.float32)
        CPU.pool_forward(x, shape, kind, 3, 2, out)
        g = np.empty_like(x)
        CPU.pool_backward(out, x, shape, kind, 3, 2, g)
        for a in (out, g):
            h.update(a.tobytes())
    for a in (cols, back):
        h.update(a.tobytes())
    print(h.hexdigest())
    """
)


def test_conv_kernels_give_the_same_bytes_with_one_and_two_threads():
    digests = []
    for threads in (1, 2):
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, "-c", KERNEL_SCRIPT], env=env, text=True,
                             capture_output=True, check=True, timeout=600)
        digests.append(out.stdout.strip().splitlines()[-1])
    assert len(digests[0]) == 64 and digests[0] == digests[1]


# --------------------------------------------------------------------------- networks

# 6x6x2 -> conv 3 k3 p1 -> 6x6x3 -> maxpool 2 -> 3x3x3 -> conv 2 k2 -> 2x2x2
#       -> avgpool 2 s1 -> 1x1x2 -> dense 3: conv, both pools, stride/padding, a dense head
TINY = [{"conv": 3, "kernel": 3, "padding": 1}, {"pool": "max", "size": 2},
        {"conv": 2, "kernel": 2}, {"pool": "avg", "size": 2, "stride": 1}, {"dense": 3}]
TINY_SHAPE = (6, 6, 2)


# 5x5x1 -> conv 2 k2 -> 4x4x2 -> maxpool 2 s1 (overlapping) -> 3x3x2 -> conv 2 k2 -> 2x2x2
#       -> avgpool 2 -> 1x1x2 -> dense 3: few nodes, so that NP's variance stays small
SMALL = [{"conv": 2, "kernel": 2}, {"pool": "max", "size": 2, "stride": 1},
         {"conv": 2, "kernel": 2}, {"pool": "avg", "size": 2}, {"dense": 3}]
SMALL_SHAPE = (5, 5, 1)


def tiny_convnet(decorrelation=True, seed=1, spec=TINY, shape=TINY_SHAPE):
    """A float64 tanh convnet; with decorrelation its R matrices are not the identity."""
    net = Network(spec, input_shape=shape, activation="tanh", dtype="float64", seed=seed,
                  decorrelation=decorrelation)
    g = np.random.default_rng(seed + 10)
    for p in net.layers:
        p.b[:] = 0.1 * g.normal(size=p.b.shape)
        if p.R is not None:
            p.R[:] = np.eye(p.R.shape[0]) + 0.1 * g.normal(size=p.R.shape)
    return net


def tiny_batch(net, B=4, seed=0, positive=False):
    """B inputs (|N(0, 1)| like image intensities when ``positive``), labels 0, 1, ..."""
    x = np.random.default_rng(seed).normal(size=(B, net.widths[0]))
    return np.abs(x) if positive else x, np.arange(B) % net.widths[-1]


def naive_forward(net, x):
    """Direct convolution (tests/naive_conv.py) with folded weights W R, tanh hidden units:
    per layer the patch rows x* (what the weight gradient multiplies), the pre-activations
    and the activities."""
    h, stars, pres, acts = np.asarray(x, np.float64), [], [], []
    for l, (m, p) in enumerate(zip(net.maps, net.layers)):
        src = h if m.pool is None else naive_conv.pool(h, m.shape, m.pool, m.pool_size,
                                                      m.pool_stride)
        R = np.eye(m.patch_size) if p.R is None else p.R
        if m.is_conv:
            rows = naive_conv.im2col(src, m.pooled_shape, m.kernel, m.stride, m.padding)
            a = naive_conv.conv(src, m.pooled_shape, p.W @ R, p.b, m.kernel, m.stride,
                                m.padding)
        else:
            rows = src
            a = src @ (p.W @ R).T + p.b
        stars.append(rows @ R.T)
        pres.append(a)
        h = np.tanh(a) if l < net.n_layers - 1 else a
        acts.append(h)
    return stars, pres, acts


def naive_backward(net, x, y):
    """Per-sample node deltas d ell_n / d a_l (B, N_l) of the cross-entropy loss and the
    batch-mean gradients, by the chain rule through naive_conv's col2im and pool_backward."""
    stars, pres, acts = naive_forward(net, x)
    B = x.shape[0]
    z = pres[-1] - pres[-1].max(axis=1, keepdims=True)
    delta = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    delta[np.arange(B), y] -= 1.0
    deltas, grads = [None] * net.n_layers, [None] * net.n_layers
    for l in range(net.n_layers - 1, -1, -1):
        m, p = net.maps[l], net.layers[l]
        deltas[l] = delta
        rows = delta.reshape(stars[l].shape[0], -1)
        grads[l] = (rows.T @ stars[l] / B, rows.sum(axis=0) / B)
        if l == 0:
            break
        up = rows @ p.W @ (np.eye(m.patch_size) if p.R is None else p.R)
        if m.is_conv:
            up = naive_conv.col2im(up, m.pooled_shape, m.kernel, m.stride, m.padding)
        if m.pool is not None:
            up = naive_conv.pool_backward(up, acts[l - 1], m.shape, m.pool, m.pool_size,
                                          m.pool_stride)
        delta = up * (1.0 - acts[l - 1] ** 2)
    return deltas, grads


def test_layer_shapes_and_weights_of_the_tiny_convnet():
    net = tiny_convnet()
    assert net.widths == (72, 108, 8, 3)
    assert [p.W.shape for p in net.layers] == [(3, 18), (2, 12), (3, 2)]
    assert [p.R.shape for p in net.layers] == [(18, 18), (12, 12), (2, 2)]


def test_conv_forward_equals_direct_convolution():
    net = tiny_convnet()
    x, y = tiny_batch(net)
    m = Device(net).measure(x, y)
    stars, pres, acts = naive_forward(net, x)
    for l in range(net.n_layers):
        np.testing.assert_allclose(m.inputs[l][0], stars[l], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(m.pre[l][0], pres[l], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(m.activity[l][0], acts[l], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(Device(net).infer(x), acts[-1], rtol=1e-12, atol=1e-12)


def test_exact_conv_gradient_equals_naive_backprop_and_finite_differences():
    net = tiny_convnet()
    x, y = tiny_batch(net)
    G = exact_gradient(net, x, y)
    _, naive = naive_backward(net, x, y)
    for g, (gW, gb) in zip(G, naive):
        np.testing.assert_allclose(g.W, gW, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(g.b, gb, rtol=1e-10, atol=1e-13)
    # Central differences, h = 1e-5: truncation h^2 |f'''| / 6 ~ 1e-11 and rounding
    # eps |f| / h ~ 1e-11 for a loss of O(1); max-pool windows keep their maximum (the
    # gaps between window values, ~0.1, dwarf the moves of ~1e-5).
    dev, h = Device(net), 1e-5
    for l, p in enumerate(net.layers):
        for name in ("W", "b"):
            (fd,) = naive_core.central_differences([getattr(p, name)],
                                                   lambda: dev.loss(x, y).mean(), h)
            np.testing.assert_allclose(getattr(G[l], name), fd, rtol=0, atol=1e-8)


# --------------------------------------------------------------------------- estimators
#
# The number of draws follows tests/test_rules.py (read its derivation first): the mean of
# D draws is G + e with E||e||^2 = V / D, and cos >= 0.95 needs D >= (V / ||G||^2) /
# (1 / 0.95^2 - 1), times the 99.9% quantile of chi2_k / k (k = 1 for node rules, k = n_l
# for WP and FG). A conv layer's per-sample estimate is M_n c: the node vector c (N_l) of
# sample n mapped to parameters by M_n (node (position, o) adds x~_pos = (x*_pos, 1) to
# row o of (W, b)), so ||M_n||_F^2 = C_out sum_pos ||x~_pos||^2 and M_n delta_{l,n} =
# g_{l,n}, the sample's exact gradient. With Cov(c) from test_rules.py:
#   NP  Cov c = ||delta||^2 I + delta delta^T (delta over all layers):
#       V_l = sum_n (||delta_n||^2 ||M_n||^2 + ||g_{l,n}||^2) / B^2
#   INP c = N (u . delta_l) u, u uniform on the sphere of R^N (N = N_l), E[u u^T] = I / N,
#       E[(u . d)^2 u u^T] = (||d||^2 I + 2 d d^T) / (N (N + 2)):
#       V_l = sum_n (N / (N + 2) (||delta_l||^2 ||M_n||^2 + 2 ||g_{l,n}||^2)
#                    - ||g_{l,n}||^2) / B^2
#   (both reduce to test_rules.py's formulas for a dense layer, ||M_n||^2 = N_l ||x~||^2)
#   ANP has NP's magnitude; WP, FG as in test_rules.py (parameters are parameters).
# The decorrelated forms (dnp, dinp, danp) run the same estimators on x* = rows R^T: the
# network here has R != I in every layer.

def variance_ratios(name, net, x, y, G):
    Gv = [layer_vector(g) for g in G]
    if name in ("wp", "fg"):
        total = sum(g @ g for g in Gv)
        return [(g.size * total + g @ g) / (g @ g) for g in Gv]
    deltas, _ = naive_backward(net, x, y)
    stars, _, _ = naive_forward(net, x)
    B = x.shape[0]
    out = []
    for l, m in enumerate(net.maps):
        N, C_out, V = net.widths[l + 1], net.layers[l].W.shape[0], 0.0
        rows = stars[l].reshape(B, m.positions, -1)
        for n in range(B):
            M2 = C_out * (np.sum(rows[n] ** 2) + m.positions)
            d = deltas[l][n].reshape(m.positions, C_out)
            g2 = np.sum((d.T @ rows[n]) ** 2) + np.sum(d.sum(axis=0) ** 2)
            dl2 = np.sum(deltas[l][n] ** 2)
            if name == "inp":
                V += N / (N + 2) * (dl2 * M2 + 2 * g2) - g2
            else:
                V += sum(np.sum(dd[n] ** 2) for dd in deltas) * M2 + g2
        out.append(V / B**2 / (Gv[l] @ Gv[l]))
    return out


def isotropic_convnet():
    """ANP is biased (README "ANP's bias"; tests/test_rules.py): to first order its mean
    is sum_{j<=l} J_lj J_lj^T delta_l, J_lj = d a_l / d a_j, which points along delta_l
    only when J J^T is proportional to I. As tests/test_rules.py does for MLPs, ANP is
    checked where that holds: 1x1 convolutions and a dense head with orthonormal rows
    (W W^T = I), disjoint max pooling (P P^T = I) and average pooling (P P^T = I / 4),
    tanh near its linear range (inputs 0.2 |N(0, 1)|), no R. On SMALL, the net the other
    rules use, ANP's mean over the same D = 3041 draws reaches cosines (0.997, 0.988,
    0.812): its dense head credits noise from the conv layers below (conv patches and
    overlapping windows make J J^T far from isotropic), the bias, reproduced, not fixed. One sample: with two,
    cancellations between their gradients make D ~100x larger."""
    spec = [{"conv": 3, "kernel": 1}, {"pool": "max", "size": 2}, {"conv": 2, "kernel": 1},
            {"pool": "avg", "size": 2}, {"dense": 2}]
    g = np.random.default_rng(1)
    Ws = [np.linalg.qr(g.normal(size=(n_in, n_out)))[0].T
          for n_out, n_in in [(3, 3), (2, 3), (2, 2)]]
    net = Network(spec, input_shape=(4, 4, 3), activation="tanh", dtype="float64", init=Ws)
    return net, 0.2 * np.abs(g.normal(size=(1, 48))), np.arange(1)


@pytest.mark.parametrize("name", ["np", "inp", "anp", "wp", "fg"])
def test_mean_conv_estimate_aligns_with_exact_gradient(name):
    # positive inputs: conv gradients that sum over positions cancel less (V / ||G||^2,
    # and with it D, is ~100x smaller than for centred inputs on this net)
    net = tiny_convnet(spec=SMALL, shape=SMALL_SHAPE)
    x, y = tiny_batch(net, B=2, seed=1, positive=True)
    if name == "anp":
        net, x, y = isotropic_convnet()
    G = exact_gradient(net, x, y)
    dofs = [layer_vector(g).size if name in ("wp", "fg") else 1 for g in G]
    D = max(draws_needed(r, k) for r, k in zip(variance_ratios(name, net, x, y, G), dofs))
    est = mean_estimate(name, net, x, y, D)
    cos = [cosine(layer_vector(e), layer_vector(g)) for e, g in zip(est, G)]
    print(f"{name}: D = {D}, cosines per layer {np.round(cos, 4).tolist()}")
    assert min(cos) >= COS_MIN, (name, D, cos)


def test_conv_anp_projection_is_biased_np_and_inp_are_not():
    """As tests/test_rules.py's MLP test: the mean of 20 x 500 estimates on SMALL projected
    per layer on the exact gradient (noisysim.audit.gradient_projection). Group means are
    near normal, so (rho - 1) / stderr is Student t with 19 degrees of freedom and
    |t| <= t_{0.9995, 19} = 3.88 holds for an unbiased rule with probability 0.999 per
    layer (the finite-difference bias at sigma = 1e-4 is O(sigma^2), far below the
    standard errors of ~0.02). ANP credits upstream noise to layer l, so its projection
    must leave that bound in every layer."""
    net = tiny_convnet(spec=SMALL, shape=SMALL_SHAPE)
    x, y = tiny_batch(net, B=2, seed=1, positive=True)
    assert_projections_anp_biased_np_inp_not(net, x, y)


# --------------------------------------------------------------------------- decorrelation

def test_patch_decorrelation_contracts_off_diagonal_energy_as_theory_says():
    """One conv layer's R (shared by positions) learning from its patch rows x* = X R^T.

    Theory (kappa = 0): with S* = mean x* x*^T = D + O (D diagonal, O off-diagonal), one
    step R <- (I - lr O) R gives S*' = (I - lr O) S* (I - lr O), whose off-diagonal part is
    O - lr (O D + D O) - 2 lr offdiag(O^2) + O(lr^2 O^3): for D = I each element shrinks
    by (1 - 2 lr), so after T steps the off-diagonal energy ||O||_F^2 is
    (1 - 2 lr)^(2 T) times the start. Bounds on the corrections, relative to the energy:
    |D_ii - 1| <= delta changes each factor by <= 2 lr delta, 4 T lr delta in all over T
    steps (delta grows by <= 2 lr ||O||_2^2 per step, from diag(O^2)); the O^2 term
    changes each step's norm by <= 2 lr ||O||_2, 4 T lr ||O_0||_2 in energy (||O||_2
    only shrinks). The images are weakly correlated (||O_0||_2 ~ 0.03) so the bound is
    tight enough to tell the rule from one whose step is 20% off.
    """
    g = np.random.default_rng(0)
    n, H = 4000, 8
    z = g.normal(size=(n, H + 1, H + 1))
    img = z[:, :H, :H] + 0.01 * (z[:, 1:, :H] + z[:, :H, 1:])  # neighbours correlate
    img /= img.std()
    net = Network([{"conv": 2, "kernel": 3}], input_shape=(H, H, 1), dtype="float64",
                  decorrelation=True, loss="squared_error")
    dec = Decorrelator(lr=0.05)
    x = img.reshape(n, -1)
    y = np.zeros((n, net.widths[-1]))

    def second_moments():
        xs = Device(net).measure(x, y).inputs[0][0]
        return xs.T @ xs / xs.shape[0], xs

    S, _ = second_moments()
    off0 = S - np.diag(np.diag(S))
    delta0 = np.abs(np.diag(S) - 1).max()
    norm2 = np.linalg.norm(off0, 2)
    T, lr = 10, dec.lr
    for _ in range(T):
        dec.update(net.layers[0].R, second_moments()[1])
    S, _ = second_moments()
    off = S - np.diag(np.diag(S))
    ratio = np.sum(off**2) / np.sum(off0**2)
    theory = (1 - 2 * lr) ** (2 * T)
    tol = 4 * T * lr * (delta0 + 2 * T * lr * norm2**2) + 4 * T * lr * norm2
    print(f"energy ratio {ratio:.4f}, theory {theory:.4f}, tolerance {tol:.3f} (relative)")
    assert abs(ratio / theory - 1) <= tol
    # the check is sharp: a rule whose step were 20% larger would be outside the bound
    assert abs((1 - 2.4 * lr) ** (2 * T) / theory - 1) > tol


def test_positions_option_keeps_every_s_th_patch_row():
    rows = np.arange(40.0).reshape(20, 2)
    np.testing.assert_array_equal(Decorrelator(1e-3, positions=3).patch_rows(CPU, rows),
                                  rows[::3])
    assert Decorrelator(1e-3).patch_rows(CPU, rows) is rows


# --------------------------------------------------------------------------- config, CLI

CONVNET = """\
name = "convnet"
seed = 0

[model]
layers = [{conv = 8, kernel = 3, padding = 1}, {pool = "max", size = 2},
          {conv = 16, kernel = 3, padding = 1}, {pool = "avg", size = 2}, {dense = 10}]

[rule]
name = "bp"

[optimizer]
name = "adam"
lr = 1e-2

[data]
name = "digits"
n_train = 500
n_test = 100

[train]
epochs = 4
batch_size = 50
log_every = 1

[backend]
name = "cpu"
"""


def test_table_config_resolves_round_trips_and_bp_trains_a_convnet_on_digits(tmp_path):
    """Digits are 8x8x1: conv 8 (8x8x8) -> max 2 (4x4x8) -> conv 16 (4x4x16) -> avg 2
    (2x2x16) -> dense 10. BP with Adam brings the training loss from ln 10 ~ 2.3 at
    initialisation well down within 40 updates, and the recorded config rebuilds the
    same network."""
    import h5py

    from noisysim.config import config_from_dict, load_config
    from noisysim.experiment import build, run

    (tmp_path / "c.toml").write_text(CONVNET)
    cfg = load_config(tmp_path / "c.toml")
    assert cfg.model.input_shape == (8, 8, 1)  # from the data set, recorded
    assert config_from_dict(cfg.to_dict()) == cfg
    (tmp_path / "again.toml").write_text(cfg.to_toml())
    assert load_config(tmp_path / "again.toml").to_dict() == cfg.to_dict()
    net = build(cfg.to_dict()).network
    assert net.widths == (64, 512, 256, 10)
    result, path = run(cfg.to_dict(), tmp_path / "runs")
    with h5py.File(path) as f:
        loss = f["train/loss"][:]
    assert loss[0] > 2.0 and loss[-5:].mean() < 0.5 * loss[0], loss
    assert result.status == "completed"


BAD_SPECS = {
    "unknown kind": ("model.layers=[{fc = 4}, {dense = 10}]",
                     "model.layers[0] (fc 4): unknown layer kind 'fc'"),
    "missing kernel": ("model.layers=[{conv = 4}, {dense = 10}]",
                       "model.layers[0] (conv 4): missing kernel"),
    "pool at the end": ("model.layers=[{conv = 4, kernel = 3}, {pool = \"max\", size = 2}]",
                        "the last layer is a pool"),
    "shape does not fit": ("model.layers=[{conv = 4, kernel = 3}, {conv = 4, kernel = 7}, "
                           "{dense = 10}]",  # digits: 8x8x1 -> 6x6x4
                           "model.layers[1] (conv 4, kernel 7): input 6x6x4 is smaller than "
                           "the kernel; use padding or a smaller kernel"),
    "no image shape": ("data.name=\"teacher\"", "dataset 'teacher' has no image shape"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_layer_specs_give_one_line_and_exit_2(case, tmp_path):
    setting, message = BAD_SPECS[case]
    (tmp_path / "c.toml").write_text(CONVNET)
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "noisysim.cli", "run", "c.toml", "--set",
                        setting], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1, (p.returncode, p.stderr)
    assert message in lines[0] and "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists()
