"""Hardware realism beyond node noise (noisysim.hardware), on both backends:

- the measurement channel: read-out noise and ADC equal their plain-numpy twin bit for bit;
  the boundary: with intrinsic noise and a noisy read-out, what a rule receives is the
  forward values plus read-out effects only; the defaults change nothing, bit for bit;
- weight devices: the write kernel equals its plain-Python twin; a constant-step device
  holds only its states and stays in its bounds; an asymmetric one drifts as theory says.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy.interpolate import PchipInterpolator

import naive_hardware
from backends import assert_resumes_bit_for_bit, device_on, host_grads, kernels
from noisysim.activations import make_activation
from noisysim.arena import Arena
from noisysim.config import explain_config, load_config
from noisysim.data import Dataset
from noisysim.device import Device, exact_gradient
from noisysim.errors import NoisysimError
from noisysim.experiment import build, run
from noisysim.hardware import Channel, Readout, Variability, WeightDevice
from noisysim.losses import loss_grad
from noisysim.kernels import rng, step
from noisysim.network import LayerGrad, Network
from noisysim.noise import make_noise
from noisysim.optim import make_optimizer
from noisysim.record import Trajectory
from noisysim.rules import make_rule
from noisysim.train import NullRecorder, Trainer, TrainSettings
from tiny_config import TINY

SEED = 7


def _host(K, a):
    return np.asarray(K.to_host(a))


# ----------------------------------------------------------------------- measurement channel

@pytest.mark.parametrize("std,bits,lo,hi", [(0.1, 0, -1.0, 1.0), (0.0, 3, -1.0, 1.0),
                                            (0.3, 4, -0.5, 2.0)])
def test_readout_kernel_equals_its_twin(backend, std, bits, lo, hi):
    K = kernels(backend)
    g = np.random.default_rng(0)
    v = (3 * g.standard_normal((3, 4, 5))).astype(np.float32)
    v[0, 0, :3] = [np.nan, np.inf, -np.inf]  # pass through the ADC as NaN / the end levels
    times = np.array([5, 6, 9], dtype=np.int64)
    ch = Channel(std, bits, (lo, hi))
    out = K.empty(v.shape, v.dtype)
    K.readout(ch, K.asarray(v), out, SEED, 2, times)
    want = naive_hardware.readout(v, std, bits, lo, hi, SEED, 2, times)
    got = _host(K, out)
    np.testing.assert_array_equal(got, want)
    if bits:
        finite = got[np.isfinite(got)]
        levels = lo + (hi - lo) / (2 ** bits - 1) * np.arange(2 ** bits)
        assert np.isclose(finite[:, None], levels, rtol=0, atol=1e-6).any(1).all()
        assert finite.min() >= lo - 1e-6 and finite.max() <= hi + 1e-6


def _device(net, readout=None):
    return Device(net, noise=make_noise("gaussian", sigma=0.05), seed=SEED, readout=readout)


def test_boundary_rules_see_forward_values_plus_readout_only(backend):
    """Intrinsic noise in every pass (clean_pass=False), known injected perturbations and a
    noisy 8-bit read-out: the measured pre-activations and losses are the read-out of the
    values a device without read-out computes at the same keys (same intrinsic noise),
    the inputs, outputs and injected values are those values, and the ANP estimate is the
    estimate from exactly those measured values."""
    K = kernels(backend)
    net = Network([5, 4, 3], seed=1, dtype="float64")
    g = np.random.default_rng(1)
    x, y = g.random((6, 5)), g.integers(0, 3, 6)
    values = [g.normal(0, 0.01, (2, 6, w)) for w in (4, 3)]
    ro = Readout(noise_std=0.02, bits=8, range=(-3.0, 3.0), loss_noise_std=0.01,
                 loss_bits=10, loss_range=(0.0, 5.0))
    kw = dict(perturb="nodes", samples=2, values=values, clean_pass=False)
    plain = device_on(_device(net), backend).measure(x, y, **kw)
    measured = device_on(_device(net, ro), backend).measure(x, y, **kw)
    times = np.arange(3)
    for l in range(2):
        forward = _host(K, plain.pre[l])
        np.testing.assert_array_equal(
            _host(K, measured.pre[l]),
            naive_hardware.readout(forward, 0.02, 8, -3.0, 3.0, SEED, l, times))
        np.testing.assert_array_equal(_host(K, measured.inputs[l]), _host(K, plain.inputs[l]))
        np.testing.assert_array_equal(_host(K, measured.injected[l])[1:], values[l])
    np.testing.assert_array_equal(_host(K, measured.outputs), _host(K, plain.outputs))
    want_losses = naive_hardware.readout(_host(K, plain.losses)[:, :, None], 0.01, 10, 0.0,
                                         5.0, SEED, 2, times)[:, :, 0]
    np.testing.assert_array_equal(_host(K, measured.losses), want_losses)
    # the rule's estimate is a function of the measured values alone
    rule = make_rule("anp", sigma=0.0, samples=2, clean_pass=False)
    rebuilt = dataclasses.replace(plain, pre=measured.pre, losses=measured.losses)
    for a, b in zip(host_grads(rule.estimate(measured, net), backend),
                    host_grads(rule.estimate(rebuilt, net), backend)):
        np.testing.assert_array_equal(a.W, b.W)


def _rows(config):
    b = build(config)
    rec = NullRecorder()
    t = Trainer(b.device, b.rule, b.optimizer, b.data, b.settings, decorrelator=b.decorrelator,
                recorder=rec, seed=config["seed"], backend=b.backend)
    t.run()
    return rec.rows, b.network.state_dict()


def test_defaults_of_the_new_options_change_nothing(tmp_path):
    """Setting every new key to its default gives the resolved config and the trajectory of
    a config without them, bit for bit."""
    plain = tmp_path / "plain.toml"
    plain.write_text(TINY)
    explicit = tmp_path / "explicit.toml"
    explicit.write_text(TINY.replace('[optimizer]\n', '[optimizer]\ndevice = "ideal"\n'
                                     'states = 64\nasymmetry = 0.0\nwrite_noise = 0.0\n')
                        .replace('sigma = 0.01\n', 'sigma = 0.01\nvariability = '
                                 '{amplitude = 0.0, p_flip = 0.0, gain = 0.0, '
                                 'offset = 0.0}\n')
                        + '\n[measurement]\nnoise_std = 0.0\nbits = 0\nloss_bits = 0\n')
    a, b = load_config(plain), load_config(explicit)
    assert a.to_dict() == b.to_dict()
    rows_a, params_a = _rows(a)
    rows_b, params_b = _rows(b)
    assert rows_a == rows_b
    for k in params_a:
        np.testing.assert_array_equal(params_a[k], params_b[k])


def test_readout_and_weight_device_reach_the_trajectory(tmp_path):
    """Through the config: an ADC changes the run; a weight device adds its counts."""
    path = tmp_path / "hw.toml"
    path.write_text(TINY.replace('[optimizer]\n', '[optimizer]\ndevice = "constant_step"\n'
                                 'states = 33\nbounds = [-0.5, 0.5]\n')
                    + '\n[measurement]\nbits = 4\nrange = [-2.0, 2.0]\n')
    cfg = load_config(path)
    assert cfg["measurement"]["bits"] == 4 and cfg["optimizer"]["states"] == 33
    rows, params = _rows(cfg)
    train = rows["train"]
    assert all("weight_writes" in r and "weight_clipped" in r for r in train)
    assert sum(r["weight_writes"] for r in train) > 0
    delta = 1.0 / 32
    for l in range(2):
        W = params[f"W_{l}"].astype(np.float64)
        k = (W + 0.5) / delta
        np.testing.assert_allclose(k, np.round(k), atol=1e-4)  # on the device's states


@pytest.mark.parametrize("model,sets", [
    ("smtj_mlp_adc8.toml", ["model.layers=[64,16,10]"]),
    ("memristive_mlp.toml", []),
])
def test_device_model_files_resolve_and_train(tmp_path, model, sets):
    """The two device models: their hardware keys reach the config, and a few updates run
    (digits, one epoch of 100 images)."""

    repo = Path(__file__).resolve().parent.parent
    cfg = load_config(None, [f"model={repo / 'models' / model}", "data.n_train=100",
                             "data.n_test=50", "train.epochs=1", "backend.name=cpu",
                             "rule.name=anp", "rule.clean_pass=false", *sets])
    hw = cfg.to_dict()
    assert ("measurement" in hw) == (model == "smtj_mlp_adc8.toml")
    assert (hw["optimizer"].get("device") == "constant_step") == (model == "memristive_mlp.toml")
    rows, _ = _rows(cfg)
    assert all(np.isfinite(r["loss"]) for r in rows["train"])


@pytest.mark.parametrize("override,message", [
    ("measurement.bits=40", "measurement.bits must be in [0, 24]"),
    ("measurement.range=[1, 0]", "measurement.range must have lo < hi"),
    ("optimizer.device=\"memristor\"", "optimizer.device must be one of"),
    ("optimizer.asymmetry=1.0", "optimizer.asymmetry must be in (-1, 1)"),
])
def test_bad_hardware_keys_say_what_and_where(override, message):
    with pytest.raises(NoisysimError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace("]", r"\]")):
        load_config(None, [override])


# ----------------------------------------------------------------------------- weight devices

DEVICES = [
    ("constant_step", 0.0, 0.0),
    ("constant_step", 0.3, 0.01),
    ("soft_bounds", -0.2, 0.0),
    ("soft_bounds", 0.1, 0.02),
]


@pytest.mark.parametrize("kind,asym,noise", DEVICES)
def test_weight_write_kernel_equals_its_twin(backend, kind, asym, noise):
    K = kernels(backend)
    dev = WeightDevice(kind, states=17, bounds=(-0.4, 0.6), asymmetry=asym, write_noise=noise,
                       seed=SEED)
    g = np.random.default_rng(3)
    old = (-0.4 + dev.delta * g.integers(0, 17, (6, 7))).astype(np.float32)
    # proposals from below one step to far beyond the bounds, both signs
    proposal = (old + g.choice([-1, 1], old.shape) * dev.delta
                * g.choice([0.3, 0.9, 1.7, 6.0, 80.0], old.shape)).astype(np.float32)
    stats = K.zeros(step.size(2), np.float64)
    p = K.asarray(proposal.copy())  # the CPU works in place on the very array
    if backend == "cuda":  # the write runs behind the optimiser's gate: sound gradients open it
        grads = Arena(K, (((6, 7), None), ((1, 1), None)), np.float32)
        K.gradient_norms(grads, stats, K.asarray(step.new_failure()), 2, None)
    K.weight_write(dev, p, K.asarray(old), 5, 1, stats, None, 2)
    want, writes, clipped = naive_hardware.weight_write(old, proposal, kind, 17, -0.4, 0.6,
                                                        asym, noise, SEED, 5, 1)
    np.testing.assert_array_equal(_host(K, p).reshape(-1), want)
    host = _host(K, stats)
    assert host[step.writes(2)] == writes
    np.testing.assert_allclose(host[step.clipped(2)], clipped, rtol=1e-12)
    assert 0 < writes < old.size  # some proposals were below one pulse


def _sgd_steps(backend, dev, W0, proposals):
    """W after SGD (lr 1) applies the proposed changes one by one through ``dev``."""
    net = Network([W0.shape[1], W0.shape[0]], bias=False, dtype=W0.dtype.name, seed=0)
    net.layers[0].W[...] = W0
    device = device_on(Device(net), backend)
    opt = make_optimizer("sgd", lr=1.0, weight_device=dev)
    opt.init(device.layers, device.kernels)
    K = device.kernels
    for d in proposals:
        opt.update(device.layers, [LayerGrad(K.asarray(-d), None)])
    device.pull()
    return net.layers[0].W


def test_constant_step_device_holds_only_its_states_within_bounds(backend):
    """16 states on [-0.3, 0.5]: initial weights are programmed onto the states, and any
    sequence of proposals (small, large, beyond the bounds) leaves every weight exactly on
    lo + Delta k, k = 0..15."""
    dev = WeightDevice("constant_step", states=16, bounds=(-0.3, 0.5), seed=SEED)
    g = np.random.default_rng(4)
    W0 = g.normal(0, 0.4, (5, 6)).astype(np.float32)  # partly outside the bounds
    proposals = [(g.standard_normal(W0.shape) * s).astype(np.float32)
                 for s in (0.01, 0.05, 0.2, 1.0, 0.05, 3.0, 0.1)]
    W = _sgd_steps(backend, dev, W0, proposals)
    states = (-0.3 + dev.delta * np.arange(16)).astype(np.float32)  # lo + Delta k, rounded
    k = np.searchsorted(states, W)
    assert np.all(W >= np.float32(-0.3)) and np.all(W <= np.float32(0.5))
    assert np.isin(W, states).all(), W[~np.isin(W, states)]
    assert np.unique(k).size >= 8  # the weights do move over the states


def test_asymmetric_constant_step_drifts_as_theory_predicts():
    """Symmetric proposals d = +-Delta (p = 1/2) are one pulse each; away from the bounds
    a weight moves +Delta (1 + a) or -Delta (1 - a): E[dw] = a Delta per step and
    Var[dw] = Delta^2 (1 + a^2) - (a Delta)^2 = Delta^2. After T steps the mean over M
    independent weights has expectation a Delta T and std Delta sqrt(T / M); allow 5 std.
    (The same writes on the cuda kernels are checked bit for bit against the twin above.)"""
    a, T = 0.25, 40
    dev = WeightDevice("constant_step", states=2001, bounds=(-1.0, 1.0), asymmetry=a,
                       seed=SEED)
    M = 60 * 50
    W0 = np.zeros((60, 50))
    g = np.random.default_rng(5)
    proposals = [g.choice([-1.0, 1.0], W0.shape) * dev.delta for _ in range(T)]
    W = _sgd_steps("cpu", dev, W0, proposals)
    assert np.abs(W).max() < 0.5  # never near the bounds: T (1 + a) Delta = 0.05
    drift = W.mean()
    assert abs(drift - a * dev.delta * T) < 5 * dev.delta * np.sqrt(T / M)
    # and the spread: variance Delta^2 per step (sample variance of M values, 5 std of
    # its sampling error for a near-Gaussian sum of T steps: sqrt(2 / M))
    var = W.var() / (dev.delta ** 2 * T)
    assert abs(var - 1.0) < 5 * np.sqrt(2.0 / M)


def test_soft_bounds_steps_shrink_towards_the_bound(backend):
    """A proposal of exactly one step is one pulse (|d| / Delta + u in (1, 2)); up from w it
    moves Delta * 2 (hi - w) / (hi - lo) = Delta (1 - w) on [-1, 1]: the full step at the
    middle, half of it at w = 0.5, a tenth at 0.9."""
    dev = WeightDevice("soft_bounds", states=101, bounds=(-1.0, 1.0), seed=SEED)
    W0 = np.array([[0.0, 0.5, 0.9]])
    W = _sgd_steps(backend, dev, W0, [np.full((1, 3), dev.delta)])
    np.testing.assert_allclose((W - W0) / dev.delta, [[1.0, 0.5, 0.1]], rtol=1e-12)


# ------------------------------------------------------------------ measured transfer curves

def _curve(tmp_path, name="curve.csv"):
    """A measured-looking saturating curve: 9 unequally spaced (input, output) pairs, with a
    header line and shuffled rows (the loader sorts them)."""
    xs = np.array([-3.0, -2.0, -1.2, -0.5, 0.0, 0.4, 1.1, 2.0, 3.5])
    ys = np.tanh(xs) + 0.05 * xs
    rows = np.random.default_rng(0).permutation(np.column_stack([xs, ys]))
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, rows)
    else:
        path.write_text("input,output\n"
                        + "\n".join(f"{float(a)!r},{float(b)!r}" for a, b in rows))
    return str(path), xs, ys


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_table_activation_interpolates_linearly_on_both_backends(backend, tmp_path, dtype):
    path, xs, ys = _curve(tmp_path)
    act = make_activation("table", path=path)
    K = kernels(backend)
    a = np.concatenate([np.linspace(-4, 4, 41), xs, [np.nan]]).astype(dtype)[None, None, :]
    out = K.empty(a.shape, dtype)
    K.activation(act, K.asarray(a), out, 0, 0, np.zeros(1, dtype=np.int64))
    want = np.interp(a.astype(np.float64), xs, ys).astype(dtype)  # constant beyond the ends
    np.testing.assert_array_equal(_host(K, out), want)
    # true derivative: the slope of the segment (the right one at a knot), 0 outside
    slopes = np.diff(ys) / np.diff(xs)
    b = a[0].astype(np.float64)
    k = np.clip(np.searchsorted(xs, b[0], side="right") - 1, 0, xs.size - 2)
    inside = (b[0] >= xs[0]) & (b[0] <= xs[-1])
    want_d = np.where(inside, slopes[k], 0.0)
    want_d[np.isnan(b[0])] = np.nan
    got_d = _host(K, K.derivative(act, K.asarray(a[0])))
    np.testing.assert_array_equal(got_d[0], want_d.astype(dtype))
    # backprop: g * f'(a) (true, and straight-through: the mean slope inside the range)
    g = np.linspace(-1, 1, a.shape[-1]).astype(dtype)[None, :]
    for surrogate, d in ((False, want_d), (True, np.where(inside, (ys[-1] - ys[0])
                                                         / (xs[-1] - xs[0]), 0.0))):
        d = d.astype(dtype)
        d[np.isnan(b[0])] = np.nan
        got = _host(K, K.backprop(act, K.asarray(g.copy()), K.asarray(a[0]), surrogate))
        np.testing.assert_array_equal(got, g * d)


def test_table_pchip_follows_scipy_within_the_resampling_error(tmp_path):
    """PCHIP resampled on ~4096 points then interpolated linearly: the error of linear
    interpolation of a C^1 piecewise cubic with spacing h is at most h^2 / 8 max|f''|
    (max|f''| bounded from scipy's own second derivative on the dense grid)."""
    path, xs, ys = _curve(tmp_path, "curve.npy")
    act = make_activation("table", path=path, interpolation="pchip")
    a = np.random.default_rng(1).uniform(-3.0, 3.5, 2000)
    got = act.forward(a[None, :].copy())[0]
    exact = PchipInterpolator(xs, ys)
    h = np.diff(act.table[0]).max()
    bound = h * h / 8 * np.abs(exact(act.table[0], 2)).max()
    assert np.abs(got - exact(a)).max() <= bound
    # the knots are kept (scipy evaluates the cubic at a segment's end to 1 ulp)
    np.testing.assert_allclose(act.forward(xs[None, :].copy())[0], ys, rtol=4e-16, atol=0)


def test_table_activation_from_config_trains_with_bp(tmp_path):
    path, _, _ = _curve(tmp_path)
    cfg_path = tmp_path / "run.toml"
    cfg_path.write_text(TINY.replace("layers = [64, 16, 10]", 'layers = [64, 16, 10]\n'
                                     'activation = "table"\nactivation_params = '
                                     '{path = "curve.csv"}')
                        .replace('name = "anp"\nsigma = 1e-3', 'name = "bp"'))
    cfg = load_config(cfg_path)
    assert cfg["model"]["activation_params"]["path"] == path  # relative to the file
    rows, _ = _rows(cfg)
    loss = [r["loss"] for r in rows["train"]]
    assert loss[-1] < loss[0]
    with pytest.raises(NoisysimError, match="lists an input twice"):
        (tmp_path / "dup.csv").write_text("0,1\n0,2\n1,3\n")
        load_config(None, ["model.activation=table",
                           f"model.activation_params.path={str(tmp_path / 'dup.csv')!r}"])


# --------------------------------------------------------------------------------- variability

@pytest.mark.parametrize("distribution", ["lognormal", "normal"])
def test_variability_scales_each_nodes_noise_by_its_fixed_factor(backend, distribution):
    """Node i's intrinsic noise is g_i times the model's, g drawn once at key (seed,
    STREAM_VARIABILITY, 0, layer), element i; the same factors in every pass and call."""
    K = kernels(backend)
    net = Network([5, 4, 3], seed=1, dtype="float64")
    x = np.random.default_rng(2).random((6, 5))
    y = np.arange(6) % 3
    var = Variability(0.3, distribution)
    clean = Device(net, seed=SEED).measure(x, y, clean_pass=False)
    plain = device_on(_device(net), backend)
    varied = device_on(Device(net, noise=make_noise("gaussian", sigma=0.05), seed=SEED,
                              variability=var), backend)
    for _ in range(2):  # the second call: later times, the same factors
        mp = plain.measure(x, y, clean_pass=False)
        mv = varied.measure(x, y, clean_pass=False)
    l = 1
    z = rng.normal_array(SEED, rng.STREAM_VARIABILITY, 0, l, (3,))
    g = np.exp(0.3 * z - 0.045) if distribution == "lognormal" else np.maximum(0, 1 + 0.3 * z)
    state = varied.state_dict()
    np.testing.assert_array_equal(state["variability"][str(l)], g)
    # layer 0 sees the same input in both devices: its noise ratio is g exactly (to rounding)
    noise_plain = _host(K, mp.pre[0]) - clean.pre[0]
    noise_varied = _host(K, mv.pre[0]) - clean.pre[0]
    g0 = state["variability"]["0"]
    np.testing.assert_allclose(noise_varied, g0 * noise_plain, rtol=1e-12, atol=1e-15)
    assert "variability" not in plain.state_dict()  # the default records nothing new


def test_variability_reaches_the_checkpoint_in_the_trajectory(tmp_path):

    cfg = load_config(None, ["noise.variability.amplitude=0.1", "train.epochs=1",
                             "data.n_train=100", "data.n_test=50", "backend.name=cpu"])
    path = tmp_path / "var.h5"
    run(cfg.to_dict(), tmp_path, path=path)
    state = Trajectory(path).checkpoint()
    g = state["device"]["variability"]["1"]
    assert g.shape == (10,) and np.all(g > 0) and np.std(g) > 0
    with pytest.raises(NoisysimError, match="multiplicative"):
        build(load_config(None, ["noise.model=multiplicative", "noise.sigma=0.1",
                                 "noise.variability.amplitude=0.1"]))


def test_switching_and_node_variability_from_config_reach_the_checkpoint(tmp_path):
    """noise.variability's p_flip, gain and offset keys, set one by one, build a device
    whose per-node values the trajectory's checkpoint holds; they follow from the seed."""
    cfg = load_config(None, ["noise.model=telegraph", "noise.p_flip=0.1",
                             "noise.amplitude=0.02", "noise.variability.p_flip=0.3",
                             "noise.variability.gain=0.1", "noise.variability.offset=0.05",
                             "train.epochs=1", "data.n_train=100", "data.n_test=50",
                             "backend.name=cpu"])
    assert cfg.to_dict()["noise"]["variability"] == {
        "amplitude": 0.0, "distribution": "lognormal", "p_flip": 0.3, "gain": 0.1,
        "offset": 0.05}
    path = tmp_path / "var.h5"
    run(cfg.to_dict(), tmp_path, path=path)
    state = Trajectory(path).checkpoint()["device"]
    want = build(cfg).device.state_dict()
    assert "variability" not in state  # no amplitude spread: no factors drawn
    for key in ("variability_p_flip", "variability_gain", "variability_offset"):
        for l, v in want[key].items():
            np.testing.assert_array_equal(state[key][l], v)
    p = state["variability_p_flip"]["1"]
    assert np.all((p > 0) & (p <= 1)) and np.std(p) > 0


def test_variability_stays_when_the_noise_model_changes(tmp_path):
    """noise.variability is a key of the noise group, not an option of one noise model:
    switching the model (in a later layer, or from a model file) keeps it, while the
    old model's sigma is dropped; config show names where it came from."""
    run_toml = tmp_path / "run.toml"
    run_toml.write_text('[noise]\nmodel = "gaussian"\nsigma = 0.02\n'
                        'variability = { amplitude = 0.2, distribution = "normal" }\n')
    cfg, origins = explain_config(run_toml, ["noise.model=telegraph", "noise.p_flip=0.1",
                                             "noise.amplitude=0.1"])
    noise = cfg.to_dict()["noise"]
    assert noise["variability"] == {"amplitude": 0.2, "distribution": "normal"}
    assert "sigma" not in noise
    assert origins["noise.variability.amplitude"] == f"your file {run_toml}:4"
    shipped = load_config(None, ["model=smtj_mlp_adc8", "model.layers=[64, 16, 10]",
                                 "noise.model=gaussian"])
    assert shipped.to_dict()["noise"]["variability"]["amplitude"] == 0.1


def test_flip_probability_variability_is_drawn_apart_from_the_amplitude():
    """p_i = min(1, p F(s, z_i)) with z at counter 1 of STREAM_VARIABILITY: adding a p_flip
    spread leaves the amplitude factors (counter 0) as they were; both reach the state."""
    net = Network([5, 4, 3], seed=1, dtype="float64")
    telegraph = make_noise("telegraph", p_flip=0.4, amplitude=0.1)
    amp = Device(net, noise=telegraph, seed=SEED, variability=Variability(0.2)).state_dict()
    both = Device(net, noise=telegraph, seed=SEED,
                  variability=Variability(0.2, "normal", p_flip=0.9)).state_dict()
    np.testing.assert_array_equal(amp["variability"]["1"], Variability(0.2).factors(SEED, 1, 3))
    z = rng.normal_array(SEED, rng.STREAM_VARIABILITY, 1, 1, (3,))
    np.testing.assert_array_equal(both["variability_p_flip"]["1"],
                                  np.minimum(1.0, 0.4 * np.maximum(0.0, 1.0 + 0.9 * z)))
    z0 = rng.normal_array(SEED, rng.STREAM_VARIABILITY, 0, 1, (3,))
    np.testing.assert_array_equal(both["variability"]["1"], np.maximum(0, 1 + 0.2 * z0))
    assert "variability_p_flip" not in amp
    with pytest.raises(NoisysimError, match="switching probability of telegraph"):
        Device(net, noise=make_noise("gaussian", sigma=0.1), variability=Variability(p_flip=0.1))


def _node_twin(net, nodes, x):
    """Plain-numpy forward of a noise-free pass with node gains and offsets:
    (pre-activations, outputs) with u = g a + o rounded as the device rounds it."""
    pre, h = [], x
    for l, p in enumerate(net.layers):
        a = h @ p.W.T + p.b
        pre.append(a)
        g, o = nodes[l]
        h = np.tanh((a * g) + o)
    return pre, h


def test_node_gain_and_offset_forward_bp_and_fg_on_both_backends(backend):
    """x_i = f(g_i a_i + o_i) with g lognormal (counter 2) and o normal (counter 3) of
    STREAM_VARIABILITY: the device's pre-activations and outputs equal a plain-numpy twin;
    BP's estimate equals the twin's backpropagation with d x / d a = g f'(g a + o) and
    central finite differences of the device's own loss; FG's estimate is BP's gradient
    projected on its tangent."""
    K = kernels(backend)
    net = Network([4, 5, 3], activation="tanh", output_activation="tanh", seed=1,
                  dtype="float64")
    gen = np.random.default_rng(3)
    x, y = gen.random((6, 4)), gen.integers(0, 3, 6)
    var = Variability(gain=0.3, offset=0.2)
    device = device_on(Device(net, seed=SEED, variability=var), backend)
    state = device.state_dict()
    nodes = []
    for l, w in enumerate((5, 3)):
        z2 = rng.normal_array(SEED, rng.STREAM_VARIABILITY, 2, l, (w,))
        z3 = rng.normal_array(SEED, rng.STREAM_VARIABILITY, 3, l, (w,))
        nodes.append((np.exp(0.3 * z2 - 0.045), 0.2 * z3))
        np.testing.assert_array_equal(state["variability_gain"][str(l)], nodes[l][0])
        np.testing.assert_array_equal(state["variability_offset"][str(l)], nodes[l][1])
    m = device.measure(x, y, samples=0)
    pre, out = _node_twin(net, nodes, x)
    # float64 throughout; only BLAS summation order and libm's tanh may differ (few ulps)
    for l in range(2):
        np.testing.assert_allclose(_host(K, m.pre[l])[0], pre[l], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(_host(K, m.outputs)[0], out, rtol=1e-12, atol=1e-14)
    # twin backpropagation: delta_l = upstream * g f'(g a + o), f = tanh
    delta = loss_grad("cross_entropy", out, y) / len(y)
    want = [None, None]
    for l in (1, 0):
        g, o = nodes[l]
        delta = delta * (1.0 - np.tanh(pre[l] * g + o) ** 2) * g
        h = x if l == 0 else np.tanh(pre[0] * nodes[0][0] + nodes[0][1])
        want[l] = delta.T @ h
        delta = delta @ net.layers[l].W
    bp = host_grads(make_rule("bp").estimate(m, net), backend)
    for l in range(2):
        np.testing.assert_allclose(bp[l].W, want[l], rtol=1e-10, atol=1e-15)
    # central finite differences of the device's noise-free loss (smooth here): with
    # h = 1e-5 they err by h^2 |third derivative| / 6 ~ 1e-11 plus rounding eps |L| / h
    # ~ 1e-11; 1e-8 is a generous bound that a missing gain (a 30% error) cannot pass
    W = net.layers[0].W
    for i, j in ((0, 0), (2, 3), (4, 1)):
        w0 = W[i, j]
        f = []
        for h in (1e-5, -1e-5):
            W[i, j] = w0 + h
            device.push()
            f.append(device.loss(x, y).mean())
        W[i, j] = w0
        device.push()
        assert abs((f[0] - f[1]) / 2e-5 - bp[0].W[i, j]) <= 1e-8, (i, j)
    # FG: g = (grad . v) v with grad . v by forward mode through g f'(u)
    fg = make_rule("fg", samples=1, seed=4)
    Vs, vbs = fg.tangents(net, 0)
    est = host_grads(fg.estimate(m, net), backend)
    d = sum(float(np.sum(bp[l].W * Vs[l][0]) + np.sum(bp[l].b * vbs[l][0])) for l in range(2))
    np.testing.assert_allclose(est[0].W, d * Vs[0][0], rtol=1e-9, atol=1e-14)


def test_node_variation_defaults_off_and_rules_never_read_it(backend):
    """Spreads of 0 give the device without variability bit for bit; with gains, offsets,
    noise and a read-out, the perturbation rules' estimates are the same when the
    Measurement's ``nodes`` are removed (they never read them), while BP's change."""
    K = kernels(backend)
    net = Network([5, 4, 3], seed=1, dtype="float32")
    g = np.random.default_rng(1)
    x, y = g.random((6, 5)), g.integers(0, 3, 6)
    kw = dict(perturb="nodes", sigma=0.01, samples=2, clean_pass=False)
    ro = Readout(noise_std=0.02, bits=8, range=(-3.0, 3.0))
    zero_var = Variability(0.0, p_flip=0.0, gain=0.0, offset=0.0)
    plain = device_on(_device(net, ro), backend).measure(x, y, **kw)
    zero = device_on(Device(net, noise=make_noise("gaussian", sigma=0.05), seed=SEED,
                            readout=ro, variability=zero_var), backend).measure(x, y, **kw)
    for a, b in zip(plain.pre + (plain.outputs,), zero.pre + (zero.outputs,)):
        np.testing.assert_array_equal(_host(K, a), _host(K, b))
    assert zero.nodes is None
    varied = device_on(Device(net, noise=make_noise("gaussian", sigma=0.05), seed=SEED,
                              readout=ro, variability=Variability(gain=0.2, offset=0.1)),
                       backend)
    m = varied.measure(x, y, **kw)
    blind = dataclasses.replace(m, nodes=None)
    for name in ("np", "anp", "danp"):
        rule = make_rule(name, sigma=0.01, samples=2, clean_pass=False)
        for a, b in zip(host_grads(rule.estimate(m, net), backend),
                        host_grads(rule.estimate(blind, net), backend)):
            np.testing.assert_array_equal(a.W, b.W)
    bp = make_rule("bp")
    assert not np.array_equal(host_grads(bp.estimate(m, net), backend)[0].W,
                              host_grads(bp.estimate(blind, net), backend)[0].W)


def test_alignment_oracle_differentiates_the_varied_device(tmp_path):
    """With activation gain and offset variability the oracle's exact gradient is the
    device's (g f'(g a + o)): BP through a clean reference pass is aligned with it to
    rounding (cosine 1 - O(1e-6) in float32), while the nominal network's gradient is not."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    cfg = load_config(path, ["rule.name=bp", "noise.variability.gain=0.5",
                             "noise.variability.offset=0.2", "train.alignment_every=1"])
    rows, _ = _rows(cfg)
    cosines = [r[f"layer_{l}"] for r in rows["alignment"] for l in range(2)]
    assert len(cosines) == 16 and min(cosines) > 1 - 1e-5, cosines
    b = build(cfg)
    x, y = b.data.x_train[:50], b.data.y_train[:50]
    m = b.device.measure(x, y, samples=0)
    varied = make_rule("bp").estimate(m, b.network)
    nominal = exact_gradient(b.network, x, y)
    cos = float(np.sum(varied[0].W * nominal[0].W) / np.linalg.norm(varied[0].W)
                / np.linalg.norm(nominal[0].W))
    assert cos < 0.99


def _hardware_trainer(backend):
    """A tiny trainer with every non-ideality on: noisy 6-bit read-out, 20% noise and 10%
    activation gain variability with offsets, an asymmetric noisy constant-step weight
    device."""
    g = np.random.default_rng(0)
    x = g.random((8, 6)).astype(np.float32)
    y = g.integers(0, 4, 8)
    data = Dataset(name="r", x_train=x, y_train=y, x_test=x[:0], y_test=y[:0], n_classes=4,
                   input_shape=(6,))
    net = Network([6, 5, 4], seed=1)
    device = Device(net, noise=make_noise("gaussian", sigma=0.05), seed=2,
                    readout=Readout(noise_std=0.01, bits=6, range=(-4.0, 4.0),
                                    loss_noise_std=0.01, loss_bits=8),
                    variability=Variability(0.2, gain=0.1, offset=0.05))
    opt = make_optimizer("adam", lr=3e-2, weight_device=WeightDevice(
        "constant_step", states=33, bounds=(-1.0, 1.0), asymmetry=0.1, write_noise=0.01,
        seed=2))
    return Trainer(device, make_rule("anp", sigma=1e-2), opt, data,
                   TrainSettings(epochs=2, batch_size=4, log_every=1), backend=backend)


def test_resume_with_every_nonideality_continues_bit_for_bit(backend):
    """Read-out draws follow the device clock, weight writes the update count, variability
    the seed: a run resumed from a checkpoint continues bit for bit."""
    whole, _, _ = assert_resumes_bit_for_bit(lambda: _hardware_trainer(backend), 1, 4)
    rows = whole.recorder.rows["train"]
    assert sum(r["weight_writes"] for r in rows) > 0
