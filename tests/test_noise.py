"""Device noise models: kernels against the plain-Python references, then theory.

Statistical tolerances
----------------------
Every statistical check compares an estimate with its exact expectation and allows Z = 5
standard errors. The standard errors are derived per statistic (see each test), from the
variance of one observation divided by the number of independent observations:

* mean of n iid samples: sqrt(var / n), with the model's exact variance;
* sample variance of n iid samples: sqrt((mu4 - var^2) / n), mu4 the fourth central moment
  (estimated from the same sample; for a Gaussian it is 3 var^2, i.e. var sqrt(2 / n));
* a frequency (flip rate, pmf value) of n iid Bernoulli(q) events: sqrt(q (1 - q) / n);
* a lag correlation estimated as mean(s_0 s_t) over n independent devices with known mean
  and variance: sqrt(Var(s_0 s_t) / n); for telegraph spins s = +-1 the product is +-1 with
  mean rho, so Var = 1 - rho^2; for standardised Gaussians Var = 1 + rho^2.

Samples are independent across (slot, node) by construction (distinct counters), and the
stationary initial states make every time step identically distributed, so "n iid samples"
is n devices at one time, never n correlated time steps of one device. Draws are seeded, so
each check passes or fails deterministically; a correct model fails one with probability
about 6e-7 over seeds.
"""

from __future__ import annotations

import math

import h5py
import numba
import numpy as np
import pytest

from noisysim.errors import NoisysimError
from noisysim.kernels import noise as kernels
from noisysim.kernels import rng
from noisysim.noise import NOISE_MODELS, make_noise

import naive_noise as naive

Z = 5.0
SEED = 12345
LAYER = 3

# Small parameter sets that exercise every code path (n_sources > 1, offsets, thermal part).
CASES = {
    "none": {},
    "gaussian": dict(sigma=0.3, mean=0.1),
    "bernoulli": dict(p=0.3, amplitude=0.0125, n_sources=3, offset=-0.01),
    "centred_bernoulli": dict(p=0.2, amplitude=0.5, n_sources=2),
    "telegraph": dict(p_flip=0.3, amplitude=0.25, offset=0.05, n_sources=2),
    "smtj": dict(n_sources=2, scale=10.0),
    "ou": dict(tau=3.0, sigma=0.7, dt=0.5, mean=0.2),
    "pink": dict(sigma=0.5, n_poles=3, base_tau=0.7, mean=0.25),
    "multiplicative": dict(sigma=0.2),
    "trace": dict(data=np.linspace(-1.0, 2.0, 11), mode="per_node", scale=0.5, offset=0.1),
}
STATEFUL = ["telegraph", "smtj", "ou", "pink"]


def test_registry_lists_every_model():
    assert set(NOISE_MODELS) == set(CASES)
    for name, cls in NOISE_MODELS.items():
        model = make_noise(name, **CASES[name])
        assert isinstance(model, cls) and model.name == name
        assert model.stateful == (name in STATEFUL)
        assert (cls.__doc__ or "").strip(), f"{name} must document its equation"


# ------------------------------------------------------------------ kernels vs references


def _assert_close(got, want, dtype, scale=1.0):
    # Kernel and reference agree up to the rounding of a few float64 operations (summation
    # order, (1-2p)^n by doubling vs **, exp(-n/tau) vs exp(-1/tau)^n), then round once to
    # dtype: allow a few ulps of the dtype on the magnitude of the values.
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got, want, rtol=8 * eps, atol=8 * eps * scale)


def _check_states(model, got, want):
    assert set(got) == set(want)
    for k in got:
        if got[k].dtype.kind == "f":
            _assert_close(got[k], want[k], np.float64)
        else:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_matches_reference(name, dtype):
    model = make_noise(name, **CASES[name])
    width = 5
    base = np.random.default_rng(0)  # test inputs only; the noise draws come from rng
    state = model.init_state(SEED, LAYER, 2, width)
    ref_state = naive.init_state(model, SEED, LAYER, 2, width)
    _check_states(model, state, ref_state)
    # Two calls: the second has a gap (1 -> 4 and 5 -> 9), carries the state and grows the
    # batch from 3 (already more than the 2 initial slots) to 4 slots.
    for times, n_slots in (([0, 1], 3), ([4, 5, 9], 4)):
        times = np.array(times, dtype=np.int64)
        a = base.uniform(-1, 1, size=(len(times), n_slots, width)).astype(dtype)
        want, ref_state = naive.reference(model, a, times, ref_state, SEED, LAYER)
        got = a.copy()
        model.apply(got, times, state, SEED, LAYER)
        _assert_close(got, want, dtype, scale=max(1.0, float(np.abs(want).max())))
        _check_states(model, state, ref_state)
        if name != "none":
            assert not np.array_equal(got, a)


SWITCHING = sorted(n for n in CASES if NOISE_MODELS[n].switching)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", SWITCHING)
def test_per_node_switching_probability_matches_reference(name, dtype):
    """Device-to-device variability of p_flip (or p): node n switches with node_p[n]; the
    kernels follow the reference over a gap and a grown batch (the edge values 0 and 1
    included), and node_p equal to the model's p everywhere is the scalar path bit for
    bit."""
    model = make_noise(name, **CASES[name])
    width = 5
    node_p = np.array([0.0, 0.05, 0.3, 0.77, 1.0])
    base = np.random.default_rng(0)
    state = model.init_state(SEED, LAYER, 2, width)
    ref_state = naive.init_state(model, SEED, LAYER, 2, width)
    scalar_state = model.init_state(SEED, LAYER, 2, width)
    same_state = model.init_state(SEED, LAYER, 2, width)
    same_p = np.full(width, getattr(model, model.switching))
    for times, n_slots in (([0, 1], 3), ([4, 5, 9], 4)):
        times = np.array(times, dtype=np.int64)
        a = base.uniform(-1, 1, size=(len(times), n_slots, width)).astype(dtype)
        want, ref_state = naive.reference(model, a, times, ref_state, SEED, LAYER, node_p)
        got = a.copy()
        model.apply(got, times, state, SEED, LAYER, node_p)
        _assert_close(got, want, dtype, scale=max(1.0, float(np.abs(want).max())))
        _check_states(model, state, ref_state)
        scalar, same = a.copy(), a.copy()
        model.apply(scalar, times, scalar_state, SEED, LAYER)
        model.apply(same, times, same_state, SEED, LAYER, same_p)
        np.testing.assert_array_equal(same, scalar)


def test_per_node_flip_and_on_rates_match_their_probabilities():
    """Telegraph node i flips with its own p_i at every step: its flip count over n
    transitions (T - 1 steps times B slots) is Binomial(n, p_i), so |k/n - p_i| <=
    Z sqrt(p_i (1 - p_i) / n) (Z = 5 per node); a bernoulli node is on with its p_i, the
    same bound over T B draws."""
    width = 6
    node_p = np.array([0.005, 0.02, 0.08, 0.2, 0.45, 0.7])
    T, B = 3000, 10
    s = _draw(make_noise("telegraph", p_flip=0.1, amplitude=1.0), (T, B, width),
              np.arange(T), calls=2, node_p=node_p)
    flips = s[1:] != s[:-1]
    on = _draw(make_noise("bernoulli", p=0.5, amplitude=1.0), (T, B, width), np.arange(T),
               node_p=node_p) > 0.5
    for i, p in enumerate(node_p):
        _assert_rate(int(flips[:, :, i].sum()), flips[:, :, i].size, p, f"flip rate {i}")
        _assert_rate(int(on[:, :, i].sum()), on[:, :, i].size, p, f"on rate {i}")


def test_per_node_switching_probability_is_checked():
    with pytest.raises(NoisysimError, match="no switching probability"):
        make_noise("gaussian", sigma=1.0).apply(np.zeros((1, 1, 3)), [0], {}, 0, 0,
                                                 np.full(3, 0.1))
    with pytest.raises(NoisysimError, match=r"3 probabilities in \[0, 1\]"):
        make_noise("bernoulli", p=0.1, amplitude=1.0).apply(np.zeros((1, 1, 3)), [0], {}, 0,
                                                            0, np.array([0.1, 1.2, 0.3]))


def test_initial_states_use_the_init_stream():
    model = make_noise("telegraph", p_flip=0.1, amplitude=1.0, n_sources=2)
    spin = model.init_state(SEED, LAYER, 3, 4)["spin"]
    u = rng.uniform_array(SEED, rng.STREAM_NOISE_INIT, 0, LAYER, (3, 4, 2))
    np.testing.assert_array_equal(spin, np.where(u < 0.5, -1, 1))
    ou = make_noise("ou", tau=2.0, sigma=0.5)
    x = ou.init_state(SEED, LAYER, 3, 4)["x"]
    np.testing.assert_array_equal(x, 0.5 * rng.normal_array(SEED, rng.STREAM_NOISE_INIT, 0,
                                                            LAYER, (3, 4, 1)))


def test_gaussian_uses_documented_keys():
    a = np.zeros((2, 3, 7))
    make_noise("gaussian", sigma=1.0).apply(a, np.array([4, 6]), {}, SEED, LAYER)
    for p, t in enumerate((4, 6)):
        z = rng.normal_array(SEED, rng.STREAM_NOISE, t, LAYER, (3, 7))
        np.testing.assert_array_equal(a[p], z)


def test_pow_geometric():
    for r in (0.0, 0.3, -0.6, 0.999, 1.0):
        for n in (0, 1, 2, 3, 7, 64, 1000):
            pw, s = kernels.pow_geometric(r, n)
            assert pw == pytest.approx(r**n, rel=1e-13, abs=1e-300)
            assert s == pytest.approx(sum(r**k for k in range(n)), rel=1e-12)


# ------------------------------------------------------------------ exact properties


def test_none_leaves_input_bit_identical():
    a = np.array([[[1.5, -0.0, np.nan, np.inf, -3e-40]]], dtype=np.float64)
    before = a.tobytes()
    model = make_noise("none")
    model.apply(a, np.array([0]), model.init_state(0, 0, 1, 5), 0, 0)
    assert a.tobytes() == before


@pytest.mark.parametrize("name", ["gaussian", "multiplicative"])
def test_zero_sigma_is_exactly_noise_free(name):
    a = np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32)
    b = a.copy()
    make_noise(name, sigma=0.0).apply(b, np.array([0, 1]), {}, 0, 0)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(CASES))
def test_growing_slots_equals_initialising_many(name):
    model = make_noise(name, **CASES[name])
    width = 6
    grown = model.init_state(SEED, LAYER, 0, width)
    full = model.init_state(SEED, LAYER, 7, width)
    outs = []
    for state in (grown, full):
        out = []
        for times, n_slots in (([0, 1], 2), ([2, 3], 5), ([7], 7)):
            a = np.zeros((len(times), n_slots, width))
            model.apply(a, np.array(times), state, SEED, LAYER)
            out.append(a)
        outs.append(out)
    for x, y in zip(*outs):
        np.testing.assert_array_equal(x, y)
    for k in full:
        np.testing.assert_array_equal(grown[k], full[k])


@pytest.mark.parametrize("name", ["gaussian", "bernoulli", "telegraph", "smtj", "pink"])
def test_thread_count_does_not_change_results(name):
    model = make_noise(name, **CASES[name])
    outs = []
    before = numba.get_num_threads()
    try:
        for threads in (1, before):
            numba.set_num_threads(threads)
            state = model.init_state(SEED, LAYER, 3, 5000)
            a = np.zeros((3, 3, 5000), np.float32)
            model.apply(a, np.array([0, 2, 3]), state, SEED, LAYER)
            outs.append(a)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(*outs)


@pytest.mark.parametrize("name", STATEFUL)
def test_same_time_repeats_noise_and_going_back_is_refused(name):
    model = make_noise(name, **CASES[name])
    state = model.init_state(SEED, LAYER, 2, 4)
    a = np.zeros((2, 2, 4))
    model.apply(a, np.array([3, 5]), state, SEED, LAYER)
    b = np.zeros((1, 2, 4))
    model.apply(b, np.array([5]), state, SEED, LAYER)  # n = 0 steps: same state, same draws
    np.testing.assert_array_equal(a[1], b[0])
    with pytest.raises(NoisysimError, match="before the state's last time 5"):
        model.apply(np.zeros((1, 2, 4)), np.array([4]), state, SEED, LAYER)


def test_params_round_trip_and_are_jsonable(tmp_path):
    import json

    path = tmp_path / "t.npy"
    np.save(path, np.arange(5.0))
    for name, params in CASES.items():
        if name == "trace":
            params = dict(path=str(path), mode="shared")
        model = make_noise(name, **params)
        p = json.loads(json.dumps(model.params()))
        assert make_noise(name, **p) == model


# ------------------------------------------------------------------ statistics


def _assert_mean_var(x, mean, var, what):
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    m = x.mean()
    assert abs(m - mean) <= Z * math.sqrt(var / n), f"{what}: mean {m} vs {mean}"
    v = x.var(ddof=1)
    mu4 = np.mean((x - m) ** 4)
    se = math.sqrt(max(mu4 - v * v, 0.0) / n)
    assert abs(v - var) <= Z * se, f"{what}: variance {v} vs {var} (se {se})"


def _assert_rate(k, n, q, what):
    assert abs(k / n - q) <= Z * math.sqrt(q * (1 - q) / n), f"{what}: {k / n} vs {q}"


def _draw(model, shape, times, seed=SEED, calls=1, node_p=None):
    """Noise alone (a = 0) for passes at ``times``, applied in ``calls`` consecutive calls."""
    times = np.asarray(times, dtype=np.int64)
    state = model.init_state(seed, LAYER, shape[1], shape[2])
    out = np.zeros((len(times),) + tuple(shape[1:]))
    for idx in np.array_split(np.arange(len(times)), calls):
        a = np.zeros((len(idx),) + tuple(shape[1:]))
        model.apply(a, times[idx], state, seed, LAYER, node_p)
        out[idx] = a
    return out


def test_gaussian_moments():
    x = _draw(make_noise("gaussian", sigma=0.5, mean=0.2), (2, 500, 1000), [0, 1])
    for p in range(2):
        _assert_mean_var(x[p], 0.2, 0.25, f"gaussian pass {p}")
    # Independent in time: mean of standardised products, Var = 1 (rho = 0).
    r = np.mean((x[0] - 0.2) * (x[1] - 0.2)) / 0.25
    assert abs(r) <= Z / math.sqrt(x[0].size)


@pytest.mark.parametrize("name", ["bernoulli", "centred_bernoulli"])
def test_bernoulli_moments_and_levels(name):
    p, amp, S, off = 0.3, 0.0125, 3, 0.01
    if name == "bernoulli":
        model = make_noise(name, p=p, amplitude=amp, n_sources=S, offset=off)
        mean, levels = off + amp * S * p, off + amp * np.arange(S + 1)
    else:
        model = make_noise(name, p=p, amplitude=amp, n_sources=S)
        mean, levels = 0.0, amp * (np.arange(S + 1) - S * p)
    x = _draw(model, (2, 400, 1000), [0, 1])
    _assert_mean_var(x, mean, amp**2 * S * p * (1 - p), name)
    assert np.isclose(x[..., None], levels, rtol=0, atol=1e-12).any(-1).all()


def test_mtj_study_bernoulli_values():
    x = _draw(make_noise("bernoulli", p=0.5, amplitude=0.0125), (1, 10, 100), [0])
    assert set(np.unique(x)) == {0.0, 0.0125}


def test_telegraph_moments_and_gap_correlations():
    # Two sources: values offset + A * {-2, 0, 2}, stationary mean offset, variance 2 A^2.
    model = make_noise("telegraph", p_flip=0.05, amplitude=0.5, offset=0.1, n_sources=2)
    x = _draw(model, (4, 100, 1000), [0, 1, 5, 30])
    for p in range(4):
        _assert_mean_var(x[p], 0.1, 2 * 0.25, f"telegraph pass {p}")
    # One source: corr(s_0, s_t) = (1 - 2p)^t, through single steps and through gaps.
    model = make_noise("telegraph", p_flip=0.05, amplitude=1.0)
    times = [0, 1, 5, 30]
    s = _draw(model, (4, 100, 1000), times)
    n = s[0].size
    for p, t in enumerate(times[1:], 1):
        rho = 0.9**t
        r = np.mean(s[0] * s[p])
        assert abs(r - rho) <= Z * math.sqrt((1 - rho**2) / n), (t, r, rho)


def test_telegraph_switching_rate_and_dwell_times():
    p_flip = 0.05
    model = make_noise("telegraph", p_flip=p_flip, amplitude=1.0)
    s = _draw(model, (4000, 1, 250), np.arange(4000), calls=2)[:, 0, :]  # (time, device)
    flips = s[1:] != s[:-1]
    # Flip events are iid Bernoulli(p_flip) per device and step, whatever the state.
    _assert_rate(int(flips.sum()), flips.size, p_flip, "flip rate")
    _assert_mean_var(s[-1], 0.0, 1.0, "stationary spin")
    # Complete dwell times (between two flips; the censored first and last are dropped)
    # are iid geometric: P(D = k) = (1 - p)^(k - 1) p, mean 1 / p, variance (1 - p) / p^2.
    dwell = []
    for d in range(s.shape[1]):
        edges = np.flatnonzero(flips[:, d])
        dwell.append(np.diff(edges))
    dwell = np.concatenate(dwell)
    n = dwell.size
    assert n > 10000
    mean, var = 1 / p_flip, (1 - p_flip) / p_flip**2
    assert abs(dwell.mean() - mean) <= Z * math.sqrt(var / n), dwell.mean()
    for k in (1, 2, 3, 10):
        _assert_rate(int(np.sum(dwell == k)), n, (1 - p_flip) ** (k - 1) * p_flip, f"P(D={k})")


def test_smtj_mean_spread_and_switching_rate():
    model = make_noise("smtj")
    mean, sigma, amp, p_flip = 0.042092104, 0.00090841466, 0.0059316154, 0.0809
    x = _draw(model, (3, 100, 1000), [0, 2, 200])
    for p in range(3):
        _assert_mean_var(x[p], mean, sigma**2 + amp**2, f"smtj pass {p}")
    # The telegraph state is read back from the sign: |sigma z| > amp needs |z| > 6.5
    # (probability 7e-11 per sample), so misreadings are negligible.
    v = _draw(model, (2000, 1, 300), np.arange(2000), calls=2)[:, 0, :]
    s = np.where(v > mean, 1.0, -1.0)
    flips = s[1:] != s[:-1]
    _assert_rate(int(flips.sum()), flips.size, p_flip, "smtj switching rate")
    _assert_mean_var(v - mean - amp * s, 0.0, sigma**2, "smtj thermal part")
    # scale multiplies everything (volts -> pre-activation units)
    y = _draw(make_noise("smtj", scale=2.0), (3, 100, 1000), [0, 2, 200])
    np.testing.assert_allclose(y, 2.0 * x, rtol=1e-15, atol=1e-18)


@pytest.mark.parametrize("times", [[0, 1, 2, 4, 8, 20], list(range(21))])
def test_ou_moments_and_autocorrelation(times):
    tau, sigma, dt, mu = 5.0, 0.7, 0.5, 0.3
    model = make_noise("ou", tau=tau, sigma=sigma, dt=dt, mean=mu)
    x = _draw(model, (len(times), 1, 40000), times, calls=2)
    y = (x - mu) / sigma
    n = y[0].size
    for p, t in enumerate(times):
        _assert_mean_var(x[p], mu, sigma**2, f"ou t={t}")
        rho = math.exp(-t * dt / tau)
        r = np.mean(y[0] * y[p])
        # standardised bivariate normal: Var(y0 yt) = 1 + rho^2
        assert abs(r - rho) <= Z * math.sqrt((1 + rho**2) / n), (t, r, rho)


def test_pink_moments_and_spectrum():
    from scipy import signal

    sigma = 0.5
    model = make_noise("pink", sigma=sigma)  # 8 poles, tau = 1 .. 4^7 passes
    x = _draw(model, (2, 1, 100000), [0, 10**6])
    for p in range(2):
        _assert_mean_var(x[p], 0.0, sigma**2, f"pink pass {p}")
    # PSD over two decades, f in [5e-4, 5e-2] cycles per pass: Welch over 32 devices of
    # 2^16 passes. The exact spectrum of the discrete sum of AR(1) terms has slope -1.009
    # there; the estimate averages ~500 periodograms per frequency.
    n_t = 2**16
    s = _draw(model, (n_t, 1, 32), np.arange(n_t))[:, 0, :].T
    f, psd = signal.welch(s, nperseg=8192, axis=-1)
    psd = psd.mean(0)
    sel = (f >= 5e-4) & (f <= 5e-2)
    slope = np.polyfit(np.log10(f[sel]), np.log10(psd[sel]), 1)[0]
    assert -1.2 <= slope <= -0.8, slope


def test_multiplicative_scales_with_signal():
    a = np.full((2, 400, 1000), 3.0)
    a[:, :, :10] = 0.0
    make_noise("multiplicative", sigma=0.1).apply(a, np.array([0, 1]), {}, SEED, LAYER)
    assert np.all(a[:, :, :10] == 0.0)  # no signal, no noise
    _assert_mean_var(a[:, :, 10:], 3.0, (3.0 * 0.1) ** 2, "multiplicative")


# ------------------------------------------------------------------ trace replay


def test_trace_shared_wraps():
    trace = np.arange(7.0) * 10
    model = make_noise("trace", data=trace, scale=2.0, offset=1.0)
    a = np.zeros((4, 2, 3))
    times = np.array([0, 3, 7, 16])
    model.apply(a, times, {}, SEED, LAYER)
    want = 1.0 + 2.0 * trace[times % 7]
    np.testing.assert_array_equal(a, np.broadcast_to(want[:, None, None], a.shape))


@pytest.mark.parametrize("segment", [None, 3])
def test_trace_per_node_segments(segment):
    L, N, B = 10, 4, 2
    trace = np.arange(L, dtype=np.float64)
    model = make_noise("trace", data=trace, mode="per_node", segment=segment)
    seg = segment if segment is not None else L // N  # default: max(1, L // N) = 2
    a = np.zeros((3, B, N), np.float32)
    times = np.array([0, 1, 9])
    model.apply(a, times, {}, SEED, LAYER)
    for p, t in enumerate(times):
        for b in range(B):
            for n in range(N):
                d = b * N + n
                assert a[p, b, n] == trace[(d * seg + t) % L]
    # device d starts where device d - 1 started plus one segment
    assert a[0, 0, 1] - a[0, 0, 0] == seg


def test_trace_default_segment_is_at_least_one():
    model = make_noise("trace", data=[1.0, 2.0], mode="per_node")
    a = np.zeros((1, 1, 5))
    model.apply(a, np.array([0]), {}, 0, 0)
    np.testing.assert_array_equal(a[0, 0], [1.0, 2.0, 1.0, 2.0, 1.0])


def test_trace_files(tmp_path):
    trace = np.sin(np.arange(20.0))
    np.save(tmp_path / "v.npy", trace)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("dev/voltage", data=trace)
    a = make_noise("trace", path=tmp_path / "v.npy")
    b = make_noise("trace", path=str(tmp_path / "v.h5"), dataset="dev/voltage")
    np.testing.assert_array_equal(a.trace, trace)
    np.testing.assert_array_equal(b.trace, trace)
    assert a.params()["sha256"] == b.params()["sha256"]
    make_noise("trace", data=trace, sha256=a.params()["sha256"])
    with pytest.raises(NoisysimError, match="sha256"):
        make_noise("trace", data=trace[::-1], sha256=a.params()["sha256"])


def test_trace_errors(tmp_path):
    missing = tmp_path / "nope.npy"
    with pytest.raises(NoisysimError, match=r"nope\.npy.*does not exist"):
        make_noise("trace", path=missing)
    np.save(tmp_path / "empty.npy", np.array([]))
    with pytest.raises(NoisysimError, match=r"empty\.npy.*empty"):
        make_noise("trace", path=tmp_path / "empty.npy")
    np.save(tmp_path / "nan.npy", np.array([1.0, np.nan, 2.0]))
    with pytest.raises(NoisysimError, match=r"nan\.npy.*nan at index 1"):
        make_noise("trace", path=tmp_path / "nan.npy")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("volts", data=np.arange(3.0))
    with pytest.raises(NoisysimError, match=r"d\.h5.*no dataset 'amps'.*'volts'"):
        make_noise("trace", path=tmp_path / "d.h5", dataset="amps")
    with pytest.raises(NoisysimError, match=r"d\.h5.*dataset="):
        make_noise("trace", path=tmp_path / "d.h5")
    with pytest.raises(NoisysimError, match="1-D"):
        make_noise("trace", data=np.ones((3, 4)))
    with pytest.raises(NoisysimError, match="exactly one source"):
        make_noise("trace")


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("gaussian", dict(sigma=-0.1), r"sigma of gaussian noise must be in \[0, inf\], got -0\.1"),
        ("gaussian", dict(sigma=float("nan")), r"sigma .* must be finite, got nan"),
        ("bernoulli", dict(p=1.5, amplitude=1.0), r"p of bernoulli .*\[0, 1\], got 1\.5"),
        ("bernoulli", dict(p=0.5, amplitude=1.0, n_sources=0),
         r"n_sources .*\[1, inf\], got 0"),
        ("bernoulli", dict(p=0.5, amplitude=1.0, n_sources=1.5), r"n_sources .* integer"),
        ("centred_bernoulli", dict(p=-0.1, amplitude=1.0), r"p of centred_bernoulli .*-0\.1"),
        ("telegraph", dict(p_flip=2.0, amplitude=1.0), r"p_flip .*\[0, 1\], got 2\.0"),
        ("telegraph", dict(p_flip=0.1, amplitude=-1.0), r"amplitude .*\[0, inf\], got -1\.0"),
        ("smtj", dict(p_flip=-0.5), r"p_flip of smtj noise must be in \[0, 1\], got -0\.5"),
        ("smtj", dict(sigma=-1e-3), r"sigma of smtj .*got -0\.001"),
        ("ou", dict(tau=0.0, sigma=1.0), r"tau of ou noise must be in \(0, inf\], got 0\.0"),
        ("ou", dict(tau=1.0, sigma=1.0, dt=-1.0), r"dt of ou .*\(0, inf\], got -1\.0"),
        ("pink", dict(sigma=1.0, n_poles=0), r"n_poles .*\[1, 24\], got 0"),
        ("pink", dict(sigma=1.0, base_tau=-2.0), r"base_tau .*got -2\.0"),
        ("multiplicative", dict(sigma=-1.0), r"sigma of multiplicative .*got -1\.0"),
        ("trace", dict(data=[1.0], mode="loop"), r"mode .*'shared', 'per_node'.*'loop'"),
        ("trace", dict(data=[1.0], segment=0), r"segment .*\[1, inf\], got 0"),
        ("gaussian", dict(sigma=1.0, sgima=2.0), r"no parameter 'sgima'; valid: sigma, mean"),
        ("gaussian", dict(), r"gaussian noise needs 'sigma'"),
        ("telegraph", dict(p=0.1, amplitude=1.0),
         r"no parameter 'p'; valid: p_flip, amplitude, offset, n_sources"),
    ],
)
def test_bad_parameters_are_refused(name, params, match):
    with pytest.raises(NoisysimError, match=match):
        make_noise(name, **params)


def test_unknown_model_lists_valid_names():
    with pytest.raises(NoisysimError,
                       match=r"'gaussian'.*'telegraph'.*got 'gausian'.*did you mean"):
        make_noise("gausian", sigma=1.0)


def test_bad_apply_arguments():
    model = make_noise("telegraph", p_flip=0.1, amplitude=1.0)
    state = model.init_state(0, 0, 2, 3)
    with pytest.raises(NoisysimError, match="strictly increasing"):
        model.apply(np.zeros((2, 2, 3)), np.array([3, 3]), state, 0, 0)
    with pytest.raises(NoisysimError, match="times must be 2 integers"):
        model.apply(np.zeros((2, 2, 3)), np.array([0.0, 1.0]), state, 0, 0)
    with pytest.raises(NoisysimError, match="float32 or float64"):
        model.apply(np.zeros((1, 2, 3), np.int32), np.array([0]), state, 0, 0)
    with pytest.raises(NoisysimError, match="C-contiguous"):
        model.apply(np.zeros((1, 3, 2)).transpose(0, 2, 1), np.array([0]), state, 0, 0)
    with pytest.raises(NoisysimError, match="width 4"):
        model.apply(np.zeros((1, 2, 4)), np.array([0]), state, 0, 0)
    with pytest.raises(NoisysimError, match="seed must be in"):
        model.apply(np.zeros((1, 2, 3)), np.array([0]), state, -1, 0)
    with pytest.raises(NoisysimError, match="init_state"):
        model.apply(np.zeros((1, 2, 3)), np.array([0]), {}, 0, 0)


def test_state_restored_with_other_dtypes_gives_same_noise():
    # e.g. a checkpoint that stored the telegraph spins as int64 or lists
    model = make_noise("smtj")
    state = model.init_state(SEED, LAYER, 2, 3)
    restored = {k: v.astype(np.int64).tolist() if k == "spin" else v.copy()
                for k, v in state.items()}
    a, b = np.zeros((2, 2, 3)), np.zeros((2, 2, 3))
    model.apply(a, np.array([0, 1]), state, SEED, LAYER)
    model.apply(b, np.array([0, 1]), restored, SEED, LAYER)
    np.testing.assert_array_equal(a, b)
    assert restored["spin"].dtype == np.int8
