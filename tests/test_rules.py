"""Learning rules: formulas against plain-numpy references, estimators against theory."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.stats

from noisysim.device import Device, Measurement, exact_gradient
from noisysim.errors import NoisysimError
from noisysim.kernels import rng
from noisysim.network import Network
from noisysim.rules import RULES, make_rule

import naive_rules as naive
from backends import host_grads, measurement_on


# --------------------------------------------------------------------------- helpers

def tiny_network(activation="tanh", loss="cross_entropy", decorrelation=True, bias=True):
    """A float64 4-3-3-2 network; with decorrelation its R matrices are not the identity."""
    net = Network([4, 3, 3, 2], activation=activation, output_activation="identity",
                  loss=loss, dtype="float64", seed=11, decorrelation=decorrelation, bias=bias)
    g = np.random.default_rng(5)
    for p in net.layers:
        if p.b is not None:
            p.b[:] = 0.1 * g.normal(size=p.b.shape)
        if p.R is not None:
            p.R[:] = np.eye(p.R.shape[0]) + 0.2 * g.normal(size=p.R.shape)
    return net


def naive_params(net):
    layers = [(p.W.copy(), None if p.b is None else p.b.copy(),
               None if p.R is None else p.R.copy()) for p in net.layers]
    acts = [(a.name, a.params) for a in net.activations]
    return layers, acts


def batch(net, B, seed=0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(B, net.widths[0]))
    if net.loss != "squared_error":
        return x, np.arange(B) % net.widths[-1]
    return x, g.normal(size=(B, net.widths[-1]))


def hand_measurement(net, x, y, node_eps=None, perturbed_layer=None, weight_eps=None,
                     bias_eps=None):
    """A Measurement built with tests/naive_rules.forward, pass 0 clean.

    node_eps[p][l] (B, N_l) or None per perturbed pass p; weight_eps[p][l], bias_eps[p][l]
    for weight perturbation.
    """
    layers, acts = naive_params(net)
    n_pert = len(node_eps) if node_eps is not None else len(weight_eps)
    passes = [naive.forward(layers, acts, x)]
    for p in range(n_pert):
        if node_eps is not None:
            passes.append(naive.forward(layers, acts, x, eps=node_eps[p]))
        else:
            passes.append(naive.forward(layers, acts, x, dW=weight_eps[p],
                                        db=None if bias_eps is None else bias_eps[p]))
    L, B = net.n_layers, x.shape[0]

    def stack(i, l):  # field i (inputs, pre) of layer l over all passes
        return np.stack([ps[i][l] for ps in passes])

    def zero_first(arrs, l):  # pass 0 perturbs nothing
        return np.stack([np.zeros_like(arrs[0][l])] + [a[l] for a in arrs])

    injected = None
    if node_eps is not None:
        filled = [[np.zeros((B, net.widths[l + 1])) if e[l] is None else e[l]
                   for l in range(L)] for e in node_eps]
        injected = tuple(zero_first(filled, l) for l in range(L))
    return Measurement(
        inputs=tuple(stack(0, l) for l in range(L)),
        pre=tuple(stack(1, l) for l in range(L)),
        outputs=np.stack([ps[2] for ps in passes]),
        losses=np.stack([naive.losses(net.loss, ps[2], y) for ps in passes]),
        targets=y,
        injected=injected,
        injected_weights=None if weight_eps is None else
        tuple(zero_first(weight_eps, l) for l in range(L)),
        injected_bias=None if bias_eps is None else
        tuple(zero_first(bias_eps, l) for l in range(L)),
        perturbed_layer=np.array([-1] + list(perturbed_layer if perturbed_layer is not None
                                             else [-1] * n_pert)),
    )


def estimate_on(rule, m, net, backend):
    """``rule.estimate`` of the host measurement ``m`` run on ``backend``, as host arrays."""
    return host_grads(rule.estimate(measurement_on(m, net, backend), net), backend)


def assert_grads_close(got, want, rtol=1e-9, atol=1e-12):
    assert len(got) == len(want)
    for l, (g, (wW, wb)) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g.W, wW, rtol=rtol, atol=atol, err_msg=f"W of layer {l}")
        if wb is None:
            assert g.b is None
        else:
            np.testing.assert_allclose(g.b, wb, rtol=rtol, atol=atol, err_msg=f"b of layer {l}")


def node_values(net, K, B, scale, seed):
    """Fixed node perturbations values[l] (K, B, N_l) from the counter-based generator."""
    return [scale * rng.normal_array(seed, rng.STREAM_USER, 0, l, (K, B, w))
            for l, w in enumerate(net.widths[1:])]


def per_pass(values, k):
    return [v[k] for v in values]


def layer_vector(g):
    return np.concatenate([g.W.ravel()] + ([] if g.b is None else [g.b.ravel()]))


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --------------------------------------------------------------------------- 1. formulas

@pytest.mark.parametrize("decorrelation", [True, False])
def test_np_matches_naive(decorrelation, backend):
    net = tiny_network(decorrelation=decorrelation)
    x, y = batch(net, 5)
    K, sigma = 2, 0.05
    values = node_values(net, K, 5, sigma, seed=1)
    rule = make_rule("np", sigma=sigma, samples=K)
    hand = hand_measurement(net, x, y, node_eps=[per_pass(values, k) for k in range(K)])
    dev = Device(net).measure(x, y, perturb="nodes", samples=K, values=values)
    np.testing.assert_allclose(dev.losses, hand.losses, rtol=1e-12)
    for m in (hand, dev):
        dell = m.losses[1:] - m.losses[0]
        want = naive.np_rule(dell, [per_pass(values, k) for k in range(K)],
                             [m.inputs[l][0] for l in range(net.n_layers)], sigma,
                             net.n_layers)
        assert_grads_close(estimate_on(rule, m, net, backend), want)


def test_np_and_wp_use_the_device_draws(backend):
    net = tiny_network()
    x, y = batch(net, 4)
    for name in ("np", "wp"):
        rule = make_rule(name, sigma=0.01, samples=3)
        m = Device(net, seed=7).measure(x, y, **rule.request())
        dell = m.losses[1:] - m.losses[0]
        if name == "np":
            want = naive.np_rule(dell, [[e[k] for e in m.injected] for k in range(1, 4)],
                                 [m.inputs[l][0] for l in range(3)], 0.01, 3)
        else:
            want = naive.wp_rule(dell.mean(axis=1),
                                 [[w[k] for w in m.injected_weights] for k in range(1, 4)],
                                 [[b[k] for b in m.injected_bias] for k in range(1, 4)], 0.01)
        assert_grads_close(estimate_on(rule, m, net, backend), want)


def test_inp_matches_naive(backend):
    net = tiny_network()
    x, y = batch(net, 5)
    K, L, sigma = 2, 3, 0.05
    values = node_values(net, K, 5, sigma, seed=2)
    rule = make_rule("inp", sigma=sigma, samples=K)
    # pass order: reference, then K passes for layer 0, K for layer 1, ...
    eps = [[values[l][k] if j == l else None for j in range(L)]
           for l in range(L) for k in range(K)]
    hand = hand_measurement(net, x, y, node_eps=eps, perturbed_layer=np.repeat(range(L), K))
    dev = Device(net).measure(x, y, perturb="each_layer", samples=K, values=values)
    np.testing.assert_allclose(dev.losses, hand.losses, rtol=1e-12)
    np.testing.assert_array_equal(dev.perturbed_layer, hand.perturbed_layer)
    for m in (hand, dev):
        assert_grads_close(estimate_on(rule, m, net, backend), naive_inp(m, K, L))


def naive_inp(m, K, L):
    """naive.inp_rule on what the measurement ``m`` recorded (K passes per layer, in layer
    order after the reference pass)."""
    dell = m.losses - m.losses[0]
    by_layer = [list(range(1 + l * K, 1 + (l + 1) * K)) for l in range(L)]
    return naive.inp_rule(
        [[dell[p] for p in passes] for passes in by_layer],
        [[m.pre[l][p] - m.pre[l][0] for p in passes] for l, passes in enumerate(by_layer)],
        [m.inputs[l][0] for l in range(L)])


def test_inp_zero_activity_change_contributes_nothing():
    net = tiny_network()
    x, y = batch(net, 3)
    values = node_values(net, 1, 3, 0.05, seed=3)
    values[1][0, 1] = 0.0  # sample 1 of layer 1 not perturbed: ||da|| = 0
    m = Device(net).measure(x, y, perturb="each_layer", samples=1, values=values)
    g = make_rule("inp").estimate(m, net)
    assert all(np.all(np.isfinite(layer_vector(gl))) for gl in g)
    m0 = Device(net).measure(x[[0, 2]], y[[0, 2]], perturb="each_layer", samples=1,
                             values=[v[:, [0, 2]] for v in values])
    # the batch mean counts sample 1 as a zero estimate
    np.testing.assert_allclose(g[1].W * 3, make_rule("inp").estimate(m0, net)[1].W * 2,
                               rtol=1e-10)


@pytest.mark.parametrize("loss", ["cross_entropy", "squared_error"])
def test_anp_matches_naive_and_never_reads_the_injection(loss, backend):
    net = tiny_network(loss=loss, activation="leaky_relu")
    x, y = batch(net, 5)
    K = 2
    values = node_values(net, K, 5, 0.05, seed=4)
    rule = make_rule("anp", sigma=0.05, samples=K)
    hand = hand_measurement(net, x, y, node_eps=[per_pass(values, k) for k in range(K)])
    dev = Device(net).measure(x, y, perturb="nodes", samples=K, values=values)
    for m in (hand, dev):
        dell = m.losses[1:] - m.losses[0]
        da = [[m.pre[l][p] - m.pre[l][0] for l in range(3)] for p in range(1, K + 1)]
        want = naive.anp_rule(dell, da, [m.inputs[l][0] for l in range(3)])
        assert_grads_close(estimate_on(rule, m, net, backend), want)
        blind = dataclasses.replace(m, injected=None)
        assert_grads_close(estimate_on(rule, blind, net, backend), want)


@pytest.mark.parametrize("bias", [True, False])
def test_wp_matches_naive(bias, backend):
    net = tiny_network(bias=bias)
    x, y = batch(net, 4)
    K, sigma = 3, 0.02
    g = np.random.default_rng(9)
    dW = [[sigma * g.normal(size=p.W.shape) for p in net.layers] for _ in range(K)]
    db = [[sigma * g.normal(size=p.W.shape[0]) for p in net.layers] for _ in range(K)] \
        if bias else None
    rule = make_rule("wp", sigma=sigma, samples=K)
    hand = hand_measurement(net, x, y, weight_eps=dW, bias_eps=db)
    dev = Device(net).measure(
        x, y, perturb="weights", samples=K,
        values=[np.stack([dW[k][l] for k in range(K)]) for l in range(3)],
        bias_values=None if db is None else [np.stack([db[k][l] for k in range(K)])
                                             for l in range(3)])
    np.testing.assert_allclose(dev.losses, hand.losses, rtol=1e-12)
    for m in (hand, dev):
        want = naive.wp_rule((m.losses[1:] - m.losses[0]).mean(axis=1), dW, db, sigma)
        assert_grads_close(estimate_on(rule, m, net, backend), want)


@pytest.mark.parametrize("loss", ["cross_entropy", "softmax_mse", "squared_error"])
def test_bp_matches_finite_differences(loss, backend):
    net = tiny_network(loss=loss)
    x, y = batch(net, 5)
    layers, acts = naive_params(net)
    want = naive.gradient(loss, layers, acts, x, y)
    rule = make_rule("bp")
    m = Device(net).measure(x, y, **rule.request())
    assert m.n_passes == 1
    assert_grads_close(estimate_on(rule, m, net, backend), want, rtol=1e-6, atol=1e-9)
    assert_grads_close(exact_gradient(net, x, y), want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("decorrelation", [True, False])
def test_fg_matches_finite_difference_directional_derivative(decorrelation, backend):
    net = tiny_network(decorrelation=decorrelation)
    x, y = batch(net, 5)
    layers, acts = naive_params(net)
    K = 3
    rule = make_rule("fg", samples=K, seed=3)
    m = Device(net).measure(x, y, **rule.request())
    Vs, vbs = rule.tangents(net, 0)
    assert [V.shape for V in Vs] == [(K,) + p.W.shape for p in net.layers]
    want = naive.fg_rule(net.loss, layers, acts, x, y,
                         [[V[k] for V in Vs] for k in range(K)],
                         [[vb[k] for vb in vbs] for k in range(K)])
    got = estimate_on(rule, m, net, backend)
    assert_grads_close(got, want, rtol=1e-6, atol=1e-9)
    # state is data: the step advanced, and restoring it replays the same tangents
    assert rule.state_dict() == {"step": np.int64(1)}
    other = make_rule("fg", samples=K, seed=3)
    other.load_state_dict({"step": np.int64(0)})
    # on the same backend: a GPU's tanh and cuBLAS sums are not the CPU's to the last bit
    assert_grads_close(estimate_on(other, m, net, backend), [(g.W, g.b) for g in got],
                       rtol=0, atol=0)
    nxt = rule.estimate(m, net)
    assert not np.allclose(nxt[0].W, got[0].W)


def test_rules_follow_the_network_dtype(backend):
    net = Network([4, 3, 2], activation="tanh", dtype="float32", seed=1)
    x, y = batch(net, 4)
    for name in ("bp", "np", "inp", "anp", "wp", "fg"):
        rule = make_rule(name)
        m = Device(net, seed=1).measure(x, y, **rule.request())
        for g in estimate_on(rule, m, net, backend):
            assert g.W.dtype == np.float32 and g.b.dtype == np.float32, name


# --------------------------------------------------------------------------- 2. theory
#
# Each estimator (bar ANP, see below) is unbiased as sigma -> 0. The mean of D independent
# draws is G + e with E||e||^2 = V / D, V the trace of the single-draw covariance, so
# cos(mean, G) ~ 1 / sqrt(1 + V / (D ||G||^2)) and cos >= 0.95 needs
# D >= (V / ||G||^2) / (1 / 0.95^2 - 1). ||e||^2 fluctuates around V / D as V / D *
# chi2_k / k, k the number of directions the variance spreads over; we take D larger by
# the 99.9% quantile of chi2_k / k, so each layer fails with probability < 1e-3. For the
# node rules we assume the worst case k = 1 (factor 10.8); for WP and FG the covariance
# ||G||^2 I + G_l G_l^T is nearly isotropic, k = n_l. V per layer (W and b together,
# x~ = (x*, 1) the input with the bias' constant, delta_n = d ell_n / d a of sample n over
# all layers, delta_{l,n} its layer-l block, B samples with independent noise):
#   NP  c = z (z . delta) with z ~ N(0, I):  Cov = ||delta||^2 I + delta delta^T
#       V_l = sum_n ||x~_n||^2 (N_l ||delta_n||^2 + ||delta_{l,n}||^2) / B^2
#   INP c = N (u . delta_l) u, u uniform on the sphere:  tr Cov = (N_l - 1) ||delta_l||^2
#       V_l = sum_n ||x~_n||^2 (N_l - 1) ||delta_{l,n}||^2 / B^2
#   WP, FG  g = (G . v) v with v ~ N(0, I) over all n_par parameters, shared by the batch:
#       V_l = n_l ||G||^2 + ||G_l||^2   (n_l parameters in layer l)
#   ANP has the magnitude of NP (same dell, ||da||^2 ~ N sigma^2); NP's V stands in.
# The node rules draw independent noise per sample, so D draws of a batch are one batch
# repeated D times; WP and FG share one perturbation per pass, so they take D passes.

COS_MIN = 0.95


def draws_needed(var_ratio: float, dof: int = 1) -> int:
    safety = scipy.stats.chi2.ppf(0.999, dof) / dof
    return math.ceil(safety * var_ratio / (1 / COS_MIN**2 - 1))


def generic_network():
    """6-5-4-3, He-normal, tanh, cross-entropy: no structure the estimators could exploit."""
    net = Network([6, 5, 4, 3], activation="tanh", loss="cross_entropy", dtype="float64",
                  seed=1)
    return net, batch(net, 8, seed=0)


def isotropic_network():
    """6-5-4-3 with orthonormal rows (W W^T = I) and tanh near its linear range.

    ANP is biased: to first order E[dell da_l] = sigma^2 sum_{j<=l} J_lj J_lj^T delta_l
    (J_lj = d a_l / d a_j), the noise of upstream layers reaching layer l. Its direction is
    right when the Jacobians are isotropic (J J^T proportional to I), which this network
    approximates; a generic network gives cosines ~0.9 in some layers (see the report).
    """
    g = np.random.default_rng(3)
    widths = [6, 5, 4, 3]
    Ws = [np.linalg.qr(g.normal(size=(widths[l], widths[l + 1])))[0].T for l in range(3)]
    net = Network(widths, activation="tanh", loss="squared_error", dtype="float64", init=Ws)
    x, y = batch(net, 8, seed=0)
    return net, (0.2 * x, y)


def per_sample_deltas(net, x, y):
    """delta_{l,n} = d ell_n / d a_l (the bias gradient of a one-sample batch)."""
    return [[g.b for g in exact_gradient(net, x[n:n + 1], y[n:n + 1])] for n in range(len(x))]


def variance_ratios(name, net, x, y, G):
    B = x.shape[0]
    if name in ("wp", "fg"):
        total = sum(layer_vector(g) @ layer_vector(g) for g in G)
        return [(layer_vector(g).size * total + layer_vector(g) @ layer_vector(g))
                / (layer_vector(g) @ layer_vector(g)) for g in G]
    deltas = per_sample_deltas(net, x, y)
    x_ref = Device(net).measure(x, y).inputs
    out = []
    for l, g in enumerate(G):
        N_l = net.widths[l + 1]
        V = 0.0
        for n in range(B):
            x2 = x_ref[l][0][n] @ x_ref[l][0][n] + 1.0
            d_l = deltas[n][l] @ deltas[n][l]
            if name == "inp":
                V += x2 * (N_l - 1) * d_l
            else:
                V += x2 * (N_l * sum(d @ d for d in deltas[n]) + d_l)
        out.append(V / B**2 / (layer_vector(g) @ layer_vector(g)))
    return out


def mean_estimate(name, net, x, y, D, sigma=1e-4):
    if name in ("np", "inp", "anp"):
        rule = make_rule(name, sigma=sigma)
        xr = np.tile(x, (D, 1))
        yr = np.tile(y, (D, 1)) if y.ndim == 2 else np.tile(y, D)
        return rule.estimate(Device(net, seed=21).measure(xr, yr, **rule.request()), net)
    if name == "fg":
        rule = make_rule("fg", samples=D, seed=21)
        return rule.estimate(Device(net).measure(x, y, **rule.request()), net)
    # wp: D passes; the draws are made here in one call per layer (the device draws one
    # array per pass, which is slow for thousands of passes) and injected as values.
    z = [rng.normal_array(21, rng.STREAM_USER, 1, l, (D, p.W.size + p.W.shape[0]))
         for l, p in enumerate(net.layers)]
    rule = make_rule("wp", sigma=sigma, samples=D)
    m = Device(net).measure(
        x, y, perturb="weights", samples=D,
        values=[sigma * zl[:, :p.W.size].reshape((D,) + p.W.shape)
                for zl, p in zip(z, net.layers)],
        bias_values=[sigma * zl[:, p.W.size:] for zl, p in zip(z, net.layers)])
    return rule.estimate(m, net)


MEASURED_COSINES: dict = {}


@pytest.mark.parametrize("name", ["np", "inp", "anp", "wp", "fg"])
def test_mean_estimate_aligns_with_exact_gradient(name):
    net, (x, y) = isotropic_network() if name == "anp" else generic_network()
    G = exact_gradient(net, x, y)
    dofs = [layer_vector(g).size if name in ("wp", "fg") else 1 for g in G]
    D = max(draws_needed(r, k) for r, k in zip(variance_ratios(name, net, x, y, G), dofs))
    est = mean_estimate(name, net, x, y, D)
    cos = [cosine(layer_vector(e), layer_vector(g)) for e, g in zip(est, G)]
    MEASURED_COSINES[name] = (D, cos)
    print(f"{name}: D = {D}, cosines per layer {np.round(cos, 4).tolist()}")
    assert min(cos) >= COS_MIN, (name, D, cos)


def test_anp_projection_on_the_exact_gradient_is_biased_np_and_inp_are_not():
    """The mean of 20 x 500 estimates on the generic tanh network, projected per layer on
    the exact gradient (noisysim.audit.gradient_projection; experiments/anp_bias.py prints
    it). The group means are near normal (each averages 500 independent estimates), so
    (rho - 1) / stderr is Student t with 19 degrees of freedom: |t| <= t_{0.9995, 19} = 3.88
    holds for an unbiased rule with probability 0.999 per layer. The finite-difference bias
    at sigma = 1e-4 is O(sigma^2) relative, far below the standard errors (~1e-2). ANP's
    bias (noise from lower layers credited to layer l) must exceed that bound in every layer."""
    net, (x, y) = generic_network()
    assert_projections_anp_biased_np_inp_not(net, x, y)


def assert_projections_anp_biased_np_inp_not(net, x, y, groups=20, draws=500):
    """The check of the test above on any network (tests/test_conv.py uses it too)."""
    from noisysim.audit import gradient_projection

    t_max = scipy.stats.t.ppf(1 - 0.001 / 2, groups - 1)
    for name in ("np", "inp", "anp"):
        p = gradient_projection(make_rule(name, sigma=1e-4), net, x, y, draws=draws,
                                groups=groups)
        t = (p.mean - 1.0) / p.stderr
        print(f"{name}: projection {np.round(p.mean, 3).tolist()} +- "
              f"{np.round(p.stderr, 3).tolist()}")
        if name == "anp":
            assert np.all(np.abs(t) > t_max), (p.mean, p.stderr)
        else:
            assert np.all(np.abs(t) <= t_max), (name, p.mean, p.stderr)


# --------------------------------------------------------------------------- 3. INP limit

def test_inp_single_draw_tends_to_the_directional_derivative():
    """N_k (dell / ||da||) u -> N_k (grad_a . u) u with an error linear in sigma."""
    net, (x, y) = generic_network()
    B, L = x.shape[0], net.n_layers
    deltas = per_sample_deltas(net, x, y)
    x_ref = Device(net).measure(x, y).inputs
    z = node_values(net, 1, B, 1.0, seed=8)
    u = [zl[0] / np.linalg.norm(zl[0], axis=1, keepdims=True) for zl in z]
    limit = []
    for k in range(L):
        c = np.array([net.widths[k + 1] * (deltas[n][k] @ u[k][n]) * u[k][n] for n in range(B)])
        limit.append(np.concatenate([(c.T @ x_ref[k][0] / B).ravel(), c.mean(axis=0)]))
    limit = np.concatenate(limit)
    errors = []
    for sigma in (1e-2, 1e-3, 1e-4):
        m = Device(net).measure(x, y, perturb="each_layer", samples=1,
                                values=[sigma * ul[None] for ul in u])
        est = np.concatenate([layer_vector(g) for g in make_rule("inp").estimate(m, net)])
        errors.append(np.linalg.norm(est - limit) / np.linalg.norm(limit))
    ratios = [errors[1] / errors[0], errors[2] / errors[1]]
    print(f"inp relative error at sigma 1e-2, 1e-3, 1e-4: {np.round(errors, 8).tolist()}")
    assert all(0.05 <= r <= 0.2 for r in ratios), (errors, ratios)
    assert errors[-1] < 1e-3


# --------------------------------------------------------------------------- 4. ANP blind

def test_anp_same_update_for_intrinsic_and_injected_noise():
    from noisysim.noise import make_noise

    net = tiny_network(activation="leaky_relu")
    x, y = batch(net, 6)
    K = 3
    rule = make_rule("anp", sigma=0.0, samples=K)
    req = rule.request()
    assert req["perturb"] == "none" and req["samples"] == K
    noisy = Device(net, noise=make_noise("gaussian", sigma=0.02), seed=4)
    m_intrinsic = noisy.measure(x, y, **req)
    # The noise each layer received: measured pre-activation minus what the measured input
    # gives (only the test may reconstruct it; the rule never sees it).
    xi = [m_intrinsic.pre[l][1:] - (m_intrinsic.inputs[l][1:] @ p.W.T + p.b)
          for l, p in enumerate(net.layers)]
    assert min(np.abs(v).max() for v in xi) > 1e-3
    m_injected = Device(net).measure(x, y, perturb="nodes", samples=K, values=xi)
    for l in range(3):
        np.testing.assert_allclose(m_injected.pre[l], m_intrinsic.pre[l], rtol=1e-12,
                                   atol=1e-14)
    g_intrinsic = rule.estimate(m_intrinsic, net)
    g_injected = make_rule("anp", sigma=0.02, samples=K).estimate(m_injected, net)
    assert_grads_close(g_intrinsic, [(g.W, g.b) for g in g_injected], rtol=1e-8, atol=1e-12)
    assert any(np.abs(g.W).max() > 0 for g in g_intrinsic)


def test_np_sees_the_device_noise_only_through_the_loss(backend):
    """On a noisy device NP is told exactly what it injected (never the intrinsic noise);
    the noise reaches it only through the measured loss changes."""
    from noisysim.noise import make_noise

    net = tiny_network(activation="leaky_relu")
    x, y = batch(net, 6)
    K, sigma = 2, 0.05
    values = node_values(net, K, 6, sigma, seed=6)
    rule = make_rule("np", sigma=sigma, samples=K, clean_pass=False)
    m = Device(net, noise=make_noise("gaussian", sigma=0.02), seed=4).measure(
        x, y, perturb="nodes", samples=K, values=values, clean_pass=False)
    for l in range(3):
        np.testing.assert_array_equal(m.injected[l][1:], values[l])
        assert not np.any(m.injected[l][0])
        # the pre-activation moved by more than the injection: intrinsic noise is there
        assert np.abs(m.pre[l][1:] - m.pre[l][0] - values[l]).max() > 1e-3
    dell = m.losses[1:] - m.losses[0]
    want = naive.np_rule(dell, [per_pass(values, k) for k in range(K)],
                         [m.inputs[l][0] for l in range(3)], sigma, 3)
    assert_grads_close(estimate_on(rule, m, net, backend), want)


def test_inp_never_reads_the_injection_on_a_noisy_device(backend):
    """INP learns from measured activity changes only: with intrinsic noise (fresh in every
    pass, below the perturbed layer too) its estimate is the naive formula on what was
    measured, with or without the injected values in the measurement."""
    from noisysim.noise import make_noise

    net = tiny_network(activation="leaky_relu")
    x, y = batch(net, 6)
    K, L = 2, 3
    rule = make_rule("inp", sigma=0.05, samples=K, clean_pass=False)
    m = Device(net, noise=make_noise("gaussian", sigma=0.02), seed=4).measure(
        x, y, **rule.request())
    assert np.abs(m.pre[0][1 + L * K - 1] - m.pre[0][0]).max() > 1e-3  # fresh noise below
    want = naive_inp(m, K, L)
    assert_grads_close(estimate_on(rule, m, net, backend), want)
    assert_grads_close(estimate_on(rule, dataclasses.replace(m, injected=None), net, backend),
                       want)


def test_anp_with_two_noisy_passes_uses_pass_0_as_reference():
    from noisysim.noise import make_noise

    net = tiny_network(activation="leaky_relu")
    x, y = batch(net, 6)
    rule = make_rule("anp", sigma=0.0, samples=2, clean_pass=False)
    m = Device(net, noise=make_noise("gaussian", sigma=0.02), seed=4).measure(
        x, y, **rule.request())
    assert np.abs(m.pre[0][0] - x @ net.layers[0].R.T @ net.layers[0].W.T
                  - net.layers[0].b).max() > 1e-3  # pass 0 is noisy
    dell = m.losses[1:] - m.losses[0]
    da = [[m.pre[l][p] - m.pre[l][0] for l in range(3)] for p in (1, 2)]
    assert_grads_close(rule.estimate(m, net),
                       naive.anp_rule(dell, da, [m.inputs[l][0] for l in range(3)]))


def test_anp_without_noise_learns_nothing():
    net = tiny_network()
    x, y = batch(net, 4)
    rule = make_rule("anp", sigma=0.0, samples=2)
    g = rule.estimate(Device(net).measure(x, y, **rule.request()), net)
    assert all(not np.any(layer_vector(gl)) for gl in g)


# --------------------------------------------------------------------------- 5. API

def test_registry_names():
    assert set(RULES) == {"bp", "np", "inp", "anp", "wp", "fg", "dbp", "dnp", "dinp", "danp"}
    for name in RULES:
        rule = make_rule(name)
        assert rule.name == name
        assert rule.decorrelated == name.startswith("d")
        assert set(rule.request()) == {"perturb", "sigma", "samples", "clean_pass"}
    assert make_rule("danp").family == "anp"


@pytest.mark.parametrize("name, options, match", [
    ("inpp", {}, r"learning rule must be one of .*'np'.*\(did you mean 'inp'\?\)"),
    ("backprop", {}, r"learning rule must be one of"),
    ("np", {"sigmaa": 1e-3}, r"no option 'sigmaa' \(did you mean 'sigma'\?\); valid options: "
                             r"sigma, samples, clean_pass, decorrelated"),
    ("np", {"surrogate": "ste"}, r"valid options"),
    ("np", {"sigma": 0.0}, r"np sigma must be in \(0, inf\]"),
    ("inp", {"sigma": -1.0}, r"sigma"),
    ("wp", {"sigma": float("nan")}, r"finite"),
    ("anp", {"sigma": -1e-3}, r"anp sigma must be in \[0, inf\]"),
    ("np", {"samples": 0}, r"samples must be in \[1, inf\]"),
    ("np", {"samples": 1.5}, r"integer"),
    ("np", {"clean_pass": "yes"}, r"clean_pass must be true or false"),
    ("bp", {"surrogate": "sigmoid"}, r"surrogate must be one of 'none', 'ste'"),
    ("fg", {"seed": -1}, r"seed"),
    ("dnp", {"decorrelated": False}, r"'dnp' is 'np' with decorrelated=true"),
])
def test_bad_names_and_options_raise(name, options, match):
    with pytest.raises(NoisysimError, match=match):
        make_rule(name, **options)


def test_requests():
    assert make_rule("np", sigma=1e-2, samples=3).request() == {
        "perturb": "nodes", "sigma": 1e-2, "samples": 3, "clean_pass": True}
    assert make_rule("inp").request()["perturb"] == "each_layer"
    assert make_rule("anp", sigma=1e-3).request()["perturb"] == "nodes"
    assert make_rule("anp", sigma=0).request()["perturb"] == "none"
    assert make_rule("wp").request()["perturb"] == "weights"
    for name in ("bp", "fg"):
        assert make_rule(name, clean_pass=False).request() == {
            "perturb": "none", "sigma": 0.0, "samples": 0, "clean_pass": False}


def test_estimate_explains_a_measurement_it_cannot_use():
    net = tiny_network()
    x, y = batch(net, 3)
    m = Device(net).measure(x, y, samples=0)  # reference pass only
    for name in ("np", "inp", "anp", "wp"):
        with pytest.raises(NoisysimError, match=r"measure with Device.measure\(x, y, perturb="):
            make_rule(name).estimate(m, net)


def test_state_dict_round_trip_and_errors():
    rule = make_rule("np")
    assert rule.state_dict() == {}
    rule.load_state_dict({})
    fg = make_rule("fg")
    fg.load_state_dict({"step": np.int64(7)})
    assert fg.state_dict()["step"] == 7 and isinstance(fg.state.step, np.int64)
    with pytest.raises(NoisysimError, match="step"):
        fg.load_state_dict({"steps": 1})


def test_bp_surrogate_on_a_step_network():
    net = Network([4, 6, 3], activation="step", dtype="float64", seed=2)
    x, y = batch(net, 16, seed=1)
    m = Device(net).measure(x, y, **make_rule("bp").request())
    plain = make_rule("bp").estimate(m, net)
    ste = make_rule("bp", surrogate="ste").estimate(m, net)
    assert not np.any(plain[0].W) and not np.any(plain[0].b)  # true derivative: 0 upstream
    assert np.any(plain[1].W)  # the output layer (identity) still learns
    assert np.abs(ste[0].W).max() > 0
    np.testing.assert_allclose(ste[1].W, plain[1].W)
