"""Activations, losses, the stacked forward pass and the oracle against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest

import naive_core as naive
from noisysim.activations import ACTIVATIONS, make_activation
from noisysim.device import Device, exact_gradient
from noisysim.errors import NoisysimError
from noisysim.kernels import rng
from noisysim.losses import loss, loss_grad
from noisysim.network import Network
from noisysim.noise import make_noise

ACT_PARAMS = {
    "leaky_relu": {"slope": 0.1},
    "hardtanh": {"lo": -0.5, "hi": 0.7},
    "step": {"threshold": 0.2},
    "quantize": {"levels": 5, "lo": -1.0, "hi": 1.0},
}
CONTINUOUS = ["identity", "relu", "leaky_relu", "tanh", "sigmoid", "hardtanh"]


def _data(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def gemm_bound(W, x, dtype):
    """Componentwise rounding bound of x @ W.T in `dtype`: gamma_n * (|x| @ |W|.T).

    Standard dot-product error analysis (Higham, Accuracy and Stability, 3.1): the computed
    sum of n products differs from the exact one by at most gamma_n * sum |w_i x_i|, with
    gamma_n = n u / (1 - n u), u = eps / 2; +1 term for the bias addition.
    """
    n = W.shape[1] + 1
    u = np.finfo(dtype).eps / 2
    gamma = n * u / (1 - n * u)
    return gamma * (np.abs(x) @ np.abs(W).T + 1e-30)


# "table" (a measured curve read from a file) is tested in test_hardware.py against np.interp.
FORMULAS = [n for n in ACTIVATIONS if n != "table"]


@pytest.mark.parametrize("name", FORMULAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_matches_naive(name, dtype):
    act = make_activation(name, **ACT_PARAMS.get(name, {}))
    a = _data((6, 50)).astype(dtype) * 2
    a[0, :5] = [0.0, 0.2, -1.0, 1.0, 0.7]  # kinks and thresholds
    seed, layer, time = 4, 2, 9
    got = act.forward(a, seed=seed, layer=layer, time=time)
    k = rng.key(np.uint64(seed), np.uint64(rng.STREAM_ACTIVATION), np.uint64(time), np.uint64(layer))
    u = np.array([rng.uniform(k, np.uint64(i)) for i in range(a.size)]).reshape(a.shape)
    want = naive.activation(name, a, act.params, u)
    # Elementwise functions: a few ulps of the result (tanh/sigmoid go through libm).
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)
    for surrogate in (False, True):
        d = act.surrogate(a) if surrogate else act.derivative(a)
        dn = naive.derivative(name, a, act.params, surrogate)
        np.testing.assert_allclose(d, dn, rtol=8 * np.finfo(dtype).eps, atol=8 * np.finfo(dtype).eps)


@pytest.mark.parametrize("name", FORMULAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backprop_equals_upstream_times_derivative_bit_for_bit(name, dtype):
    # The fused in-place g * f'(a) of the backward pass against the two-step product.
    act = make_activation(name, **ACT_PARAMS.get(name, {}))
    a = _data((6, 50)).astype(dtype) * 2
    a[0, :5] = [0.0, 0.2, -1.0, 1.0, 0.7]  # kinks and thresholds
    g = _data((6, 50), 3).astype(dtype)
    for surrogate in (False, True):
        d = act.surrogate(a) if surrogate else act.derivative(a)
        want = g * d
        got = act.backprop(g.copy(), a, surrogate)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want)
    with pytest.raises(NoisysimError, match="C-contiguous"):  # in place: a copy would be lost
        act.backprop(g.T, a.T)


def test_discontinuous_true_derivative_is_zero_and_surrogate_is_not():
    a = np.linspace(-0.9, 0.9, 37)[None]
    for name in ("step", "sign", "quantize", "binary_stochastic"):
        act = make_activation(name)
        assert not act.continuous
        assert np.all(act.derivative(a) == 0)
        assert np.any(act.surrogate(a) != 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_match_naive(dtype):
    z = (_data((12, 5)) * 3).astype(dtype)
    labels = np.arange(12) % 5
    targets = _data((6, 5), 1)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(loss("cross_entropy", z, labels), naive.cross_entropy(z, labels),
                               rtol=20 * eps, atol=20 * eps)
    np.testing.assert_allclose(loss_grad("cross_entropy", z, labels),
                               naive.cross_entropy_grad(z, labels), atol=8 * eps)
    # Six targets broadcast over two stacked passes of six rows.
    np.testing.assert_allclose(loss("squared_error", z, targets),
                               naive.squared_error(z, np.tile(targets, (2, 1))), rtol=20 * eps)
    # softmax_mse: six labels broadcast over two passes; p and the loss are O(1) sums of a
    # few rounded terms (exp in the logits' dtype), so a few tens of eps
    six = labels[:6]
    np.testing.assert_allclose(loss("softmax_mse", z, six),
                               naive.softmax_mse(z, np.tile(six, 2)), rtol=20 * eps,
                               atol=20 * eps)
    np.testing.assert_allclose(loss_grad("softmax_mse", z, six),
                               naive.softmax_mse_grad(z, np.tile(six, 2)), atol=20 * eps)
    assert loss_grad("softmax_mse", z, six).dtype == dtype


def test_softmax_mse_gradient_matches_central_differences():
    """d ell / d z by central differences on float64 logits: truncation h^2 / 6 times a
    third derivative of order 1 (h = 1e-5: ~2e-11) plus rounding ~eps / h ~ 2e-11, so
    1e-8 leaves a wide margin; a wrong term in the gradient is O(1e-2)."""
    z = _data((7, 4), 5) * 2
    y = np.arange(7) % 4
    grad = loss_grad("softmax_mse", z, y)
    h = 1e-5
    fd = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        up, down = z.copy(), z.copy()
        up[idx] += h
        down[idx] -= h
        r = idx[0]
        fd[idx] = (loss("softmax_mse", up, y)[r] - loss("softmax_mse", down, y)[r]) / (2 * h)
    np.testing.assert_allclose(grad, fd, atol=1e-8)
    assert np.abs(grad).max() > 1e-2  # not a trivially zero gradient


def _net(dtype, act="tanh", decorrelation=True, loss_name="cross_entropy", widths=(7, 6, 5, 4)):
    net = Network(widths, activation=act, dtype=dtype, decorrelation=decorrelation,
                  loss=loss_name, seed=3)
    r = np.random.default_rng(5)
    for p in net.layers:
        p.b[:] = r.normal(size=p.b.shape) * 0.1
        if p.R is not None:
            p.R[:] = np.eye(p.R.shape[0]) + 0.1 * r.normal(size=p.R.shape)
    return net


def _check_layerwise(net, m, x, shifts):
    """Each layer of each pass against the naive layer applied to the kernel's own input."""
    dtype = net.dtype
    for p in range(m.n_passes):
        h = x.astype(np.float64)
        for l, params in enumerate(net.layers):
            x_star = h @ params.R.T.astype(np.float64) if params.R is not None else h
            bound_r = gemm_bound(params.R, h, dtype) if params.R is not None else 0
            np.testing.assert_array_less(np.abs(m.inputs[l][p] - x_star), bound_r + 1e-300)
            xs = m.inputs[l][p].astype(np.float64)
            a = xs @ params.W.T.astype(np.float64) + params.b + shifts[l][p]
            np.testing.assert_array_less(np.abs(m.pre[l][p] - a),
                                         gemm_bound(params.W, xs, dtype) + 2 * np.finfo(dtype).eps * np.abs(shifts[l][p]) + 1e-300)
            h = naive.activation(net.activations[l].name, m.pre[l][p].astype(np.float64),
                                 net.activations[l].params)
        out = m.outputs[p].astype(np.float64)
        np.testing.assert_allclose(out, h, rtol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("perturb", ["nodes", "layer", "each_layer"])
def test_stacked_forward_matches_naive(dtype, perturb):
    net = _net(dtype)
    device = Device(net, seed=11)
    x = _data((9, 7)).astype(dtype)
    y = np.arange(9) % 4
    K = 2
    values = [_data((K, 9, w), 10 + l) * 0.1 for l, w in enumerate(net.widths[1:])]
    if perturb == "layer":
        values = [v if l == 1 else None for l, v in enumerate(values)]
    m = device.measure(x, y, perturb=perturb, samples=K, layer=1, values=values)
    P = m.n_passes
    shifts = []
    for l, w in enumerate(net.widths[1:]):
        s = np.zeros((P, 9, w))
        passes = [p for p in range(1, P) if m.perturbed_layer[p] in (-1, l)]
        if values[l] is not None:
            s[passes] = values[l]
        shifts.append(s)
    np.testing.assert_array_equal(m.injected[1], shifts[1].astype(dtype))
    _check_layerwise(net, m, x, shifts)
    # Pass-through of layers before the perturbed one: bitwise copies of the reference.
    for p in range(1, P):
        k = m.perturbed_layer[p]
        for l in range(max(k, 0)):
            np.testing.assert_array_equal(m.pre[l][p], m.pre[l][0])
    np.testing.assert_allclose(
        m.losses, naive.cross_entropy(m.outputs.reshape(-1, 4), np.tile(y, P)).reshape(P, 9),
        rtol=20 * np.finfo(dtype).eps, atol=20 * np.finfo(dtype).eps)


def test_weight_perturbation_matches_naive():
    net = _net("float64", decorrelation=False)
    device = Device(net)
    x = _data((5, 7))
    y = np.arange(5) % 4
    psi = [_data((1,) + p.W.shape, l) * 0.01 for l, p in enumerate(net.layers)]
    psi_b = [_data((1, p.W.shape[0]), 20 + l) * 0.01 for l, p in enumerate(net.layers)]
    m = device.measure(x, y, perturb="weights", values=psi, bias_values=psi_b)
    acts = [(a.name, a.params) for a in net.activations]
    _, pres, _ = naive.forward([p.W + psi[l][0] for l, p in enumerate(net.layers)],
                               [p.b + psi_b[l][0] for l, p in enumerate(net.layers)],
                               None, acts, x)
    for l in range(net.n_layers):
        np.testing.assert_allclose(m.pre[l][1], pres[l], rtol=1e-12, atol=1e-14)


def test_drawn_perturbations_follow_the_key_and_sigma():
    net = _net("float64", decorrelation=False)
    device = Device(net, seed=7)
    x = _data((4, 7))
    m = device.measure(x, np.zeros(4, dtype=int), perturb="nodes", sigma=0.5)
    expect = 0.5 * rng.normal_array(7, rng.STREAM_PERTURB, 1, 2, (4, 4))
    np.testing.assert_array_equal(m.injected[2][1], expect)
    assert np.all(m.injected[2][0] == 0)
    assert device.clock == 2


@pytest.mark.parametrize("noise", [None, "none"])
def test_no_noise_makes_perturbed_passes_equal_reference(noise):
    net = _net("float32")
    device = Device(net, noise=make_noise(noise) if noise else None, seed=1)
    x = _data((6, 7)).astype(np.float32)
    m = device.measure(x, np.arange(6) % 4, perturb="none", samples=3, clean_pass=False)
    for p in range(1, 4):
        assert m.losses[p].tobytes() == m.losses[0].tobytes()
        for l in range(net.n_layers):
            assert m.pre[l][p].tobytes() == m.pre[l][0].tobytes()


@pytest.mark.parametrize("act", CONTINUOUS)
@pytest.mark.parametrize("loss_name", ["cross_entropy", "softmax_mse", "squared_error"])
def test_oracle_matches_central_differences(act, loss_name):
    net = _net("float64", act=act, loss_name=loss_name, widths=(5, 4, 3))
    x = _data((6, 5), 2)
    y = _data((6, 3), 3) if loss_name == "squared_error" else np.arange(6) % 3
    grads = exact_gradient(net, x, y)
    device = Device(net)
    h = 1e-6
    for l, p in enumerate(net.layers):
        for name, g in (("W", grads[l].W), ("b", grads[l].b)):
            (fd,) = naive.central_differences([getattr(p, name)],
                                              lambda: device.loss(x, y).mean(), h)
            # Central differences: truncation O(h^2 f''') plus rounding O(eps |f| / h)
            # ~ 1e-16 * 1 / 1e-6 = 1e-10; kinks of relu/hardtanh are avoided by the data.
            np.testing.assert_allclose(g, fd, atol=1e-8, rtol=1e-6)


def test_oracle_matches_naive_backprop_with_decorrelation():
    net = _net("float64")
    x = _data((8, 7))
    y = np.arange(8) % 4
    grads = exact_gradient(net, x, y)
    acts = [(a.name, a.params) for a in net.activations]
    W = [p.W for p in net.layers]
    ins, pres, out = naive.forward(W, [p.b for p in net.layers], [p.R for p in net.layers], acts, x)
    want = naive.backprop(W, [p.R for p in net.layers], acts, ins, pres,
                          naive.cross_entropy_grad(out, y))
    for g, (gw, gb) in zip(grads, want):
        np.testing.assert_allclose(g.W, gw, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(g.b, gb, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: Network([3, 0, 2]), r"width of layer 1 must be in \[1, inf\], got 0"),
        (lambda: Network([3]), "at least an input and an output"),
        (lambda: Network([3, 2], dtype="float16"), "dtype must be one of"),
        (lambda: Network([3, 2], activation="relux"), "did you mean 'relu'"),
        (lambda: make_activation("quantize", levels=1), r"quantize levels must be in \[2, inf\]"),
        (lambda: make_activation("leaky_relu", alpha=1), "no parameter 'alpha'"),
        (lambda: Device(Network([3, 2])).measure(np.full((2, 3), np.nan), [0, 1]),
         r"inputs must be finite, found nan at index \(0, 0\)"),
        (lambda: Device(Network([3, 2])).measure(np.ones((2, 4)), [0, 1]),
         r"inputs must have shape \(batch, 3\)"),
        (lambda: Device(Network([3, 2])).measure(np.ones((2, 3)), [0, 1], perturb="layer", layer=2),
         r"layer must be in \[0, 0\], got 2"),
        (lambda: Device(Network([3, 2])).measure(np.ones((2, 3)), [0, 1], sigma=-1.0),
         r"sigma must be in \[0, inf\], got -1.0"),
        (lambda: Device(Network([3, 2])).measure(np.ones((2, 3)), [0, 5]),
         r"class labels must be in \[0, 1\]"),
    ],
)
def test_bad_input_errors_name_parameter_value_and_range(build, match):
    with pytest.raises(NoisysimError, match=match):
        build()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(57600, 16), (6400, 32), (100, 10), (1000, 1024), (3, 1)])
def test_column_sums_are_numpys_axis_0_sums_bit_for_bit(shape, dtype):
    """The CPU bias-gradient kernel adds row after row, numpy's order for rows.sum(axis=0)
    on a C-contiguous array, so trajectories stay the same bits (a conv layer's rows)."""
    from noisysim.kernels.backend import CPU

    rows = (np.random.default_rng(3).standard_normal(shape) * 10).astype(dtype)
    got = CPU.column_sums(rows)
    want = rows.sum(axis=0, dtype=dtype)
    assert got.dtype == dtype
    assert got.tobytes() == want.tobytes()
