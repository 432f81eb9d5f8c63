"""Optimisers against the plain-numpy references in tests/naive_optim.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noisysim.errors import NoisysimError
from noisysim.network import LayerGrad, LayerParams
from noisysim.optim import Adam, AdamState, SGD, SGDState, make_optimizer, nonfinite_layer

try:
    from naive_optim import adam_reference, clip_by_global_norm, cosine_lr, sgd_reference
except ImportError:  # tests/ imported as a package
    from tests.naive_optim import adam_reference, clip_by_global_norm, cosine_lr, sgd_reference

# two layers: the first with bias and a decorrelation matrix, the second without bias
SHAPES = [((5, 4), (5,)), ((3, 5), None)]
TOL = {np.float32: dict(rtol=3e-6, atol=3e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    layers = []
    for w_shape, b_shape in SHAPES:
        layers.append(LayerParams(
            W=rng.standard_normal(w_shape).astype(dtype),
            b=None if b_shape is None else rng.standard_normal(b_shape).astype(dtype),
            R=np.eye(w_shape[1], dtype=dtype) if b_shape is not None else None,
        ))
    return layers


def make_grads(dtype, n_steps, seed=1, scale=1.0):
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(n_steps):
        steps.append([
            LayerGrad(W=(scale * rng.standard_normal(w)).astype(dtype),
                      b=None if b is None else (scale * rng.standard_normal(b)).astype(dtype))
            for w, b in SHAPES
        ])
    return steps


def flat(layers):
    """[W_0, b_0, W_1, ...] without the absent biases (the references' layout)."""
    out = []
    for p in layers:
        out.append(p.W)
        if p.b is not None:
            out.append(p.b)
    return out


def layer_of_flat():
    out = []
    for l, (_, b) in enumerate(SHAPES):
        out += [l] if b is None else [l, l]
    return out


def run_and_compare(dtype, opt, reference, n_steps=5, grad_scale=1.0, **ref_options):
    params = make_params(dtype)
    R0 = [None if p.R is None else p.R.copy() for p in params]
    grads = make_grads(dtype, n_steps, scale=grad_scale)
    history, updates = reference(flat(params), [flat(g) for g in grads], **ref_options)
    opt.init(params)
    owners = layer_of_flat()
    for t in range(n_steps):
        logs = opt.update(params, grads[t])
        for got, want in zip(flat(params), history[t]):
            assert got.dtype == dtype
            np.testing.assert_allclose(got, want, **TOL[dtype], err_msg=f"step {t + 1}")
        for l in range(len(SHAPES)):
            want = math.sqrt(sum(float(np.sum(u**2)) for u, o in zip(updates[t], owners)
                                 if o == l))
            assert logs[f"update_norm_l{l}"] == pytest.approx(want, rel=TOL[dtype]["rtol"] * 10)
    assert int(opt.state.count) == n_steps
    for p, r in zip(params, R0):
        if r is None:
            assert p.R is None
        else:
            np.testing.assert_array_equal(p.R, r)  # R is never touched
    return logs


DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_plain_matches_reference(dtype):
    run_and_compare(dtype, make_optimizer("sgd", lr=0.1), sgd_reference, lr=0.1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_momentum_matches_reference(dtype):
    opt = make_optimizer("sgd", lr=0.05, momentum=0.9)
    run_and_compare(dtype, opt, sgd_reference, lr=0.05, momentum=0.9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_nesterov_weight_decay_matches_reference(dtype):
    opt = make_optimizer("sgd", lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)
    run_and_compare(dtype, opt, sgd_reference, lr=0.05, momentum=0.8, nesterov=True,
                    weight_decay=0.01)


def test_nesterov_pytorch_convention_by_hand():
    """Constant gradient 1, mu = 0.9, lr = 1: v = 1, 1.9, 2.71; steps 1.9, 2.71, 3.439."""
    p = [LayerParams(W=np.zeros((1, 1)), b=None, R=None)]
    g = [LayerGrad(W=np.ones((1, 1)), b=None)]
    for kind, steps in (("nesterov", [1.9, 2.71, 3.439]), ("heavy", [1.0, 1.9, 2.71])):
        p[0].W[...] = 0.0
        opt = make_optimizer("sgd", lr=1.0, momentum=0.9, nesterov=kind == "nesterov")
        opt.init(p)
        for s in steps:
            before = p[0].W[0, 0]
            logs = opt.update(p, g)
            assert before - p[0].W[0, 0] == pytest.approx(s, rel=1e-12)
            assert logs["update_norm_l0"] == pytest.approx(s, rel=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_matches_reference_every_step(dtype):
    """Steps 1..5 compared one by one, so the bias corrections 1 - beta^t are checked."""
    opt = make_optimizer("adam", lr=0.01, beta1=0.9, beta2=0.99)
    run_and_compare(dtype, opt, adam_reference, lr=0.01, beta1=0.9, beta2=0.99)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_cosine_schedule_matches_reference_every_step(name):
    """Update t uses lr (1 + cos(pi (t - 1) / T)) / 2 (the reference's own formula); the
    horizon T = 4 is shorter than the 5 steps, so the last step runs at rate 0."""
    T, lr = 4, 0.05
    opt = make_optimizer(name, lr=lr, schedule="cosine", **({"momentum": 0.9}
                                                              if name == "sgd" else {}))
    opt.horizon = T
    reference = adam_reference if name == "adam" else sgd_reference
    extra = {} if name == "adam" else {"momentum": 0.9}
    rate = lambda t: cosine_lr(lr, min(t, T + 1), T)  # noqa: E731 - after T: lr_{T+1} = 0
    logs = run_and_compare(np.float64, opt, reference, lr=rate, **extra)
    assert logs["update_norm_l0"] == 0.0
    assert opt.options()["schedule"] == "cosine"
    assert "schedule" not in make_optimizer(name, lr=lr).options()  # configs keep their hash


def test_cosine_schedule_without_a_horizon_says_what_sets_it():
    opt = make_optimizer("adam", lr=0.1, schedule="cosine")
    p = [LayerParams(W=np.zeros((1, 1)), b=None, R=None)]
    opt.init(p)
    with pytest.raises(NoisysimError, match="needs the run's number of updates"):
        opt.update(p, [LayerGrad(W=np.ones((1, 1)), b=None)])


def test_adam_first_step_is_lr_times_sign():
    """With bias correction the first step is lr * g / (|g| + eps) = lr * sign(g)."""
    params = make_params(np.float64)
    W0 = [p.W.copy() for p in params]
    grads = make_grads(np.float64, 1)[0]
    opt = make_optimizer("adam", lr=1e-3)
    opt.init(params)
    logs = opt.update(params, grads)
    n = 0
    for p, w0, g in zip(params, W0, grads):
        np.testing.assert_allclose(w0 - p.W, 1e-3 * np.sign(g.W), rtol=1e-6)
        n_layer = g.W.size + (0 if g.b is None else g.b.size)
        assert logs[f"update_norm_l{n}"] == pytest.approx(1e-3 * math.sqrt(n_layer), rel=1e-6)
        n += 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_clipping_matches_reference(dtype, name):
    # gradients of norm ~ sqrt(40) * 3 > clip = 2: every step is clipped
    if name == "sgd":
        opt = make_optimizer("sgd", lr=0.1, momentum=0.5, clip=2.0)
        logs = run_and_compare(dtype, opt, sgd_reference, grad_scale=3.0, lr=0.1,
                               momentum=0.5, clip=2.0)
    else:
        opt = make_optimizer("adam", lr=0.01, clip=2.0)
        logs = run_and_compare(dtype, opt, adam_reference, grad_scale=3.0, lr=0.01, clip=2.0)
    grads = make_grads(dtype, 5, scale=3.0)[-1]
    _, scale = clip_by_global_norm(flat(grads), 2.0)
    assert scale < 1.0
    assert logs["clip_scale"] == pytest.approx(scale, rel=1e-5)
    assert logs["grad_norm"] * logs["clip_scale"] == pytest.approx(2.0, rel=1e-5)


def test_clip_scale_is_one_below_threshold_and_off():
    params = make_params(np.float64)
    grads = make_grads(np.float64, 1)[0]
    for clip in (1e6, 0, None):
        opt = make_optimizer("sgd", lr=0.1, clip=clip)
        opt.init(params)
        assert opt.update(params, grads)["clip_scale"] == 1.0


@given(
    lr=st.floats(1e-4, 1.0),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.0, 0.9999),
    momentum=st.floats(0.0, 0.99),
    nesterov=st.booleans(),
    clip=st.sampled_from([None, 0.5, 5.0]),
)
@settings(max_examples=40, deadline=None)
def test_random_hyperparameters_match_reference(lr, beta1, beta2, momentum, nesterov, clip):
    nesterov = nesterov and momentum > 0
    opt = make_optimizer("adam", lr=lr, beta1=beta1, beta2=beta2, clip=clip)
    run_and_compare(np.float64, opt, adam_reference, n_steps=3, lr=lr, beta1=beta1,
                    beta2=beta2, clip=clip)
    opt = make_optimizer("sgd", lr=lr, momentum=momentum, nesterov=nesterov, clip=clip)
    run_and_compare(np.float64, opt, sgd_reference, n_steps=3, lr=lr, momentum=momentum,
                    nesterov=nesterov, clip=clip)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", [
    dict(name="adam", lr=0.01, clip=3.0),
    dict(name="sgd", lr=0.05, momentum=0.9, nesterov=True),
    dict(name="sgd", lr=0.05),
])
def test_state_dict_round_trip_continues_identically(dtype, options):
    grads = make_grads(dtype, 6)
    a_params = make_params(dtype)
    a = make_optimizer(**options)
    a.init(a_params)
    for g in grads[:3]:
        a.update(a_params, g)
    saved = a.state_dict()
    snapshot = {k: np.copy(v) for k, v in saved.items()}
    assert saved["step"] == 3 and isinstance(saved["step"], np.int64)
    assert all(isinstance(v, (np.ndarray, np.generic)) for v in saved.values())
    # a resumed run: fresh parameters and optimiser, loaded from the checkpoint
    b_params = make_params(dtype, seed=99)
    for pa, pb in zip(a_params, b_params):
        pb.W[...] = pa.W
        if pa.b is not None:
            pb.b[...] = pa.b
    b = make_optimizer(**options)
    b.init(b_params)
    b.load_state_dict(saved)
    for g in grads[3:]:
        la, lb = a.update(a_params, g), b.update(b_params, g)
        assert la == lb
    for pa, pb in zip(a_params, b_params):
        np.testing.assert_array_equal(pa.W, pb.W)
    assert int(b.state_dict()["step"]) == 6
    for key, value in saved.items():  # copies: later updates did not change the checkpoint
        np.testing.assert_array_equal(value, snapshot[key])


def test_state_dict_keys_and_state_types():
    params = make_params(np.float32)
    adam = make_optimizer("adam", lr=1e-3)
    state = adam.init(params)
    assert isinstance(state, AdamState) and isinstance(adam, Adam)
    assert sorted(adam.state_dict()) == sorted(
        ["step", "m_W_0", "m_b_0", "m_W_1", "v_W_0", "v_b_0", "v_W_1"])
    assert state.m[0].W.dtype == np.float32
    sgd = make_optimizer("sgd", lr=1e-3)
    assert isinstance(sgd.init(params), SGDState) and isinstance(sgd, SGD)
    assert sgd.state.velocity is None and list(sgd.state_dict()) == ["step"]
    momentum = make_optimizer("sgd", lr=1e-3, momentum=0.9)
    momentum.init(params)
    assert "velocity_W_1" in momentum.state_dict()


def test_load_state_dict_rejects_mismatch():
    params = make_params(np.float64)
    adam = make_optimizer("adam", lr=1e-3)
    adam.init(params)
    sgd = make_optimizer("sgd", lr=1e-3, momentum=0.9)
    sgd.init(params)
    with pytest.raises(NoisysimError, match="missing"):
        adam.load_state_dict(sgd.state_dict())
    bad = adam.state_dict()
    bad["m_W_0"] = np.zeros((2, 2))
    with pytest.raises(NoisysimError, match=r"m_W_0 must have shape \(5, 4\)"):
        adam.load_state_dict(bad)
    with pytest.raises(NoisysimError, match="call init"):
        make_optimizer("adam", lr=1e-3).load_state_dict(adam.state_dict())


def test_float32_stays_float32_with_float64_gradients():
    params = make_params(np.float32)
    grads = make_grads(np.float64, 2)
    opt = make_optimizer("adam", lr=1e-3)
    opt.init(params)
    for g in grads:
        opt.update(params, g)
    assert all(p.W.dtype == np.float32 for p in params)
    assert opt.state.v[0].W.dtype == np.float32


def test_non_finite_gradient_raises_and_changes_nothing():
    params = make_params(np.float64)
    grads = make_grads(np.float64, 1)[0]
    grads[1].W[0, 0] = np.nan
    opt = make_optimizer("adam", lr=1e-3)
    opt.init(params)
    before = [p.W.copy() for p in params]
    with pytest.raises(NoisysimError, match="W_1 is not finite at update 1"):
        opt.update(params, grads)
    for p, w in zip(params, before):
        np.testing.assert_array_equal(p.W, w)
    assert int(opt.state.count) == 0


@pytest.mark.parametrize("name, lr", [("adam", 1e37), ("sgd", 1.0)])
def test_parameter_that_overflows_gives_a_nan_update_norm_for_its_layer(name, lr):
    # Finite gradients, finite step, but W_1 + step exceeds float32's range (3.4e38): the
    # update norm of layer 1 is NaN (the engine's divergence signal); layer 0 is unaffected.
    params = make_params(np.float32)
    grads = make_grads(np.float32, 1)[0]
    params[1].W[0, 0] = np.float32(3.39e38)
    grads[1].W[0, 0] = -3e38 if name == "sgd" else -1.0  # Adam's first step is lr * sign
    opt = make_optimizer(name, lr=lr)
    opt.init(params)
    with np.errstate(over="ignore"):
        logs = opt.update(params, grads)
    assert np.isinf(params[1].W[0, 0])
    assert math.isnan(logs["update_norm_l1"])
    assert math.isfinite(logs["update_norm_l0"])
    assert nonfinite_layer(logs) == 1
    assert nonfinite_layer({"update_norm_l0": 1.0, "update_norm_l1": 2.0}) is None


def test_mismatched_gradients_raise():
    params = make_params(np.float64)
    grads = make_grads(np.float64, 1)[0]
    opt = make_optimizer("sgd", lr=1e-3)
    opt.init(params)
    with pytest.raises(NoisysimError, match="one gradient per layer"):
        opt.update(params, grads[:1])
    with pytest.raises(NoisysimError, match="b_0 and its gradient must have shape"):
        opt.update(params, [LayerGrad(grads[0].W, np.zeros(2)), grads[1]])
    with pytest.raises(NoisysimError, match="gradient is absent"):
        opt.update(params, [LayerGrad(grads[0].W, None), grads[1]])
    with pytest.raises(NoisysimError, match="call init"):
        make_optimizer("sgd", lr=1e-3).update(params, grads)


@pytest.mark.parametrize("name, options, match", [
    ("sgd", dict(lr=0.0), r"lr must be in \(0, inf\], got 0.0"),
    ("sgd", dict(lr=-1.0), r"lr must be in \(0, inf\], got -1.0"),
    ("sgd", dict(lr=0.1, momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
    ("sgd", dict(lr=0.1, momentum=-0.1), r"momentum must be in \[0, 1\), got -0.1"),
    ("sgd", dict(lr=0.1, nesterov=True), r"nesterov=True needs momentum in \(0, 1\)"),
    ("sgd", dict(lr=0.1, nesterov="yes"), r"nesterov must be true or false, got 'yes'"),
    ("sgd", dict(lr=0.1, weight_decay=-1e-4), r"weight_decay must be in \[0, inf\]"),
    ("adam", dict(lr=0.1, beta1=1.0), r"beta1 must be in \[0, 1\), got 1.0"),
    ("adam", dict(lr=0.1, beta2=1.5), r"beta2 must be in \[0, 1\), got 1.5"),
    ("adam", dict(lr=0.1, eps=0.0), r"eps must be in \(0, inf\], got 0.0"),
    ("adam", dict(lr=0.1, clip=-1.0), r"clip must be in \(0, inf\], got -1.0"),
    ("adam", dict(lr=float("nan")), r"lr must be finite, got nan"),
    ("adam", dict(lr="0.1"), r"lr must be a number, got '0.1'"),
    ("adam", dict(), r"optimizer 'adam' needs lr"),
    ("adam", dict(lr=0.1, betas=(0.9, 0.99)),
     r"unknown option 'betas' for optimizer 'adam'; valid options: lr, beta1, beta2, eps, clip"),
    ("sgd", dict(lr=0.1, beta1=0.9),
     r"unknown option 'beta1' for optimizer 'sgd'; valid options: lr, momentum, nesterov"),
    ("Adam", dict(lr=0.1), r"optimizer must be one of 'sgd', 'adam', got 'Adam' \(did you mean 'adam'"),
    ("rmsprop", dict(lr=0.1), r"optimizer must be one of 'sgd', 'adam', got 'rmsprop'"),
    ("adam", dict(lr=0.1, schedule="cos"),
     r"schedule must be one of 'constant', 'cosine', got 'cos' \(did you mean 'cosine'"),
])
def test_bad_options_raise_with_name_value_and_range(name, options, match):
    with pytest.raises(NoisysimError, match=match):
        make_optimizer(name, **options)


def test_repr_and_options_round_trip():
    opt = make_optimizer("sgd", lr=0.1, momentum=0.9, nesterov=True)
    assert "nesterov=True" in repr(opt)
    again = make_optimizer(opt.name, **opt.options())
    assert again.options() == opt.options()
