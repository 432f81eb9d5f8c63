"""The cuda backend against its CPU twins.

Without a GPU (CI) the checks run in numba's CUDA simulator, which must be switched on
(NUMBA_ENABLE_CUDASIM=1) before numba.cuda is first imported; other test modules import numba
first, so every check runs in ONE subprocess (this file run as a script) that prints one JSON
line per check, and each test asserts its line. Arrays are tiny: the simulator runs every GPU
thread as a Python thread.

On a GPU machine, NOISYSIM_CUDA_HARDWARE=1 runs the same checks on the hardware (no
simulator, larger arrays, CuPy arrays): experiments/gpu_check.sh does that.

What is checked, per kernel family:
- bit for bit: generator draws, every noise model (state carried across calls, time gaps,
  non-consecutive pass times, grown batches), injected perturbations, the piecewise-linear
  and stochastic activations;
- to float tolerance: libm activations and losses, derivatives, perturbation statistics and
  the np / inp / anp / bp estimates, Adam and SGD, decorrelation, Device.measure, and full
  training steps (bp, np, inp, anp, danp, dbp, dnp, dinp, and bp, np, danp, fg on a
  convnet with both kinds of pooling) against the CPU Trainer.
How the kernels compile (sm_90a machine code without FMA contraction, no GPU needed) is
checked in tests/test_cuda_compile.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import traceback

import numpy as np
import pytest

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
HARDWARE = os.environ.get("NOISYSIM_CUDA_HARDWARE") == "1"
NOISES = ["none", "gaussian", "multiplicative", "bernoulli", "centred_bernoulli", "telegraph",
          "telegraph_sources", "smtj", "smtj_sources", "ou", "pink", "trace_shared",
          "trace_per_node"]
RULES = ["bp", "np", "inp", "anp", "danp", "dbp", "dnp", "dinp"]
CONV_RULES = ["bp", "np", "danp", "fg"]
CHECKS = (["rng_draws", "perturbation_draws", "activations", "derivatives", "losses"]
          + [f"noise_{n}" for n in NOISES]
          + ["estimates", "optimizers", "decorrelation", "measure", "infer"]
          + [f"train_step_{r}" for r in RULES]
          + [f"train_step_conv_{r}" for r in CONV_RULES]
          + ["session_state", "backend_resolution"])


# ================================================================ the pytest side


def _subprocess(arg: str, simulate: bool, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if simulate:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, HERE, arg], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def results():
    proc = _subprocess("--checks", simulate=not HARDWARE, timeout=900)
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("CHECK "):
            row = json.loads(line[6:])
            out[row["name"]] = row
    if "skip" in out:
        pytest.skip(out["skip"]["detail"])
    if not out:
        pytest.fail(f"the check script printed no results (exit {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return out


@pytest.mark.parametrize("name", CHECKS)
def test_cuda_twin_matches_cpu(results, name):
    row = results.get(name)
    assert row is not None, f"check {name} did not run (the script stopped early?)"
    assert row["ok"], row["detail"]


def test_resolve_backend_without_gpu():
    """Without the simulator and without a GPU: "auto" is cpu, "cuda" a one-line error."""
    if HARDWARE:
        pytest.skip("this machine has a GPU")
    code = ("import json; from noisysim.backends import cuda_status, resolve_backend\n"
            "from noisysim.errors import NoisysimError\n"
            "ok, detail = cuda_status(); out = {'ok': ok, 'detail': detail,\n"
            "  'auto': resolve_backend('auto')}\n"
            "try: resolve_backend('cuda')\n"
            "except NoisysimError as e: out['error'] = str(e)\n"
            "print(json.dumps(out))")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["ok"]:  # pragma: no cover - a machine with a GPU but no NOISYSIM_CUDA_HARDWARE
        pytest.skip(f"a GPU is usable here: {out['detail']}")
    assert out["auto"] == "cpu"
    msg = out["error"]
    assert "\n" not in msg and "backend 'cuda' is not usable here" in msg
    assert out["detail"] in msg


def test_gpu_check_refuses_without_a_gpu():
    """python -m noisysim.gpu.check times real hardware: without one (or in the simulator)
    it says why in one line and exits 2."""
    if HARDWARE:
        pytest.skip("this machine has a GPU")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for simulate in (True, False):
        if not simulate:
            env.pop("NUMBA_ENABLE_CUDASIM", None)
        else:
            env["NUMBA_ENABLE_CUDASIM"] = "1"
        proc = subprocess.run([sys.executable, "-m", "noisysim.gpu.check"], env=env,
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("noisysim: error:") and ("GPU" in lines[0] or "cuda" in lines[0])


def test_gpu_check_crossover_is_where_cuda_stays_faster():
    """The crossover is the smallest step from which cuda wins at every larger point: a
    cuda win below a cpu win does not count."""
    from math import inf

    from noisysim.gpu.check import crossover

    assert crossover([(0.1, 1.0, 2.0), (1.0, 2.0, 1.0), (10.0, 5.0, 1.0)]) == 1.0
    assert crossover([(10.0, 5.0, 1.0), (0.1, 1.0, 0.5), (1.0, 1.0, 2.0)]) == 10.0
    assert crossover([(0.1, 1.0, 0.5), (1.0, 2.0, 1.0)]) == 0.1
    assert crossover([(0.1, 1.0, 0.5), (1.0, 1.0, 1.0)]) == inf  # a tie is not a win


def test_gpu_check_crossover_ladder_spans_what_its_docs_say():
    """The README and noisysim.gpu.check: the ladder's ANP steps make 0.016 to 16 GFLOP of
    matrix products (FLOP counted as noisysim.bench counts them)."""
    from noisysim.bench import random_data_trainer, step_products
    from noisysim.gpu.check import LADDER

    gflops = []
    for layers, batch in LADDER:
        trainer, widths = random_data_trainer("anp", layers, batch, "gaussian", "float32")
        gflops.append(sum(2.0 * m * k * n for m, k, n in step_products(
            trainer.rule, widths, batch, trainer.device.random_layers())) / 1e9)
    assert round(min(gflops), 3) == 0.016 and round(max(gflops)) == 16


def test_gpu_check_crossover_rows_time_both_backends(monkeypatch):
    """--crossover's rows (run here under the simulator on a tiny network): both backends
    timed, and the step's GFLOP counted from the products an ANP step makes."""
    from noisysim.gpu import check

    monkeypatch.setattr(check, "LADDER", [("6,5,3", 4)])
    (row,) = check.crossover_rows(steps=1)
    assert row["cpu_ms"] > 0 and row["cuda_ms"] > 0
    # ANP: layer 0's input is the same in the clean and the perturbed pass (one product),
    # layer 1's differs (two); plus one gradient outer product per layer
    flop = 2 * (4 * 6 * 5 + 5 * 4 * 6) + 2 * (2 * 4 * 5 * 3 + 3 * 4 * 5)
    assert row["gflop"] == pytest.approx(flop / 1e9, rel=1e-12)


def test_backend_names_and_auto_crossover(monkeypatch):
    from noisysim import backends
    from noisysim.errors import NoisysimError

    assert backends.BACKENDS == ("auto", "cpu", "cuda")
    assert backends.resolve_backend("cpu") == "cpu"
    assert backends.is_available("cpu")
    with pytest.raises(NoisysimError, match="backend must be one of"):
        backends.resolve_backend("tpu")
    # a usable GPU (stood in for): auto takes it only for steps large enough to gain
    monkeypatch.setattr(backends, "cuda_status", lambda refresh=False: (True, "a GPU"))
    monkeypatch.setattr(backends, "simulated", lambda: False)
    said = []
    small = backends.AUTO_CUDA_MIN_GFLOP / 2
    assert backends.resolve_backend("auto", said.append, step_gflop=small) == "cpu"
    assert backends.resolve_backend("auto", said.append, step_gflop=2 * small) == "cuda"
    assert backends.resolve_backend("cuda", said.append, step_gflop=small) == "cuda"


# ================================================================ the script side


def _emit(name, ok, detail=""):
    print("CHECK " + json.dumps({"name": name, "ok": bool(ok), "detail": str(detail)[:2000]}),
          flush=True)


def _close(a, b, rtol, atol=0.0):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False, f"shapes {a.shape} != {b.shape}"
    err = np.abs(a - b)
    lim = atol + rtol * np.abs(b)
    if np.all(err <= lim) and np.array_equal(np.isnan(a), np.isnan(b)):
        return True, ""
    i = np.unravel_index(np.argmax(err - lim), err.shape)
    return False, f"max violation at {i}: {a[i]!r} vs {b[i]!r}"


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False, f"{a.shape} {a.dtype} != {b.shape} {b.dtype}"
    if np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
        return True, ""
    i = np.argwhere(a != b)[0]
    return False, f"first difference at {tuple(i)}: {a[tuple(i)]!r} vs {b[tuple(i)]!r}"


class _Fail(Exception):
    pass


def _require(result, what):
    ok, detail = result
    if not ok:
        raise _Fail(f"{what}: {detail}")


class _Env:
    """Imports (after the simulator switch) and sizes for the mode."""

    def __init__(self):
        from noisysim.kernels import cuda
        from noisysim.kernels.cuda_backend import CudaKernels

        self.K = CudaKernels.instance()
        self.dev = self.K.asarray
        self.host = self.K.to_host
        self.sim = cuda.SIMULATED
        # batch, width: tiny in the simulator, several blocks and grid-stride laps on a GPU
        self.B, self.N = (3, 5) if self.sim else (67, 1031)
        self.widths = [6, 5, 4, 3] if self.sim else [300, 257, 129, 10]
        self.batch = 4 if self.sim else 128
        # float32 tolerance for cuBLAS products vs BLAS (exact under the simulator)
        self.mm = 1e-6 if self.sim else 2e-4
        # Full steps: numpy stands in for cuBLAS in the simulator, so Adam can be compared
        # (on hardware its sign-like step amplifies product rounding on tiny gradients:
        # compare SGD there, with a tolerance for perturbation estimates, whose loss
        # differences inherit the products' rounding)
        self.step_opt = "adam" if self.sim else "sgd"
        self.step_tol = 1e-5 if self.sim else 3e-3
        # a convnet: conv (padding, stride 1) -> max pool -> conv (stride 2) -> avg pool ->
        # dense, so that every conv kernel (im2col, col2im, both pools) runs in the step
        c1, c2 = (2, 2) if self.sim else (8, 16)
        self.conv_shape = (6, 6, 1) if self.sim else (16, 16, 3)
        self.conv_layers = [{"conv": c1, "kernel": 3, "padding": 1},
                            {"pool": "max", "size": 2},
                            {"conv": c2, "kernel": 2, "stride": 1},
                            {"pool": "avg", "size": 2}, {"dense": 3}]


def check_rng_draws(env):
    from noisysim.kernels import cuda as K, rng

    for dtype in (np.float64, np.float32):
        for n, off in ((1, 0), (7, 3), (2 * env.N + 1, 0), (env.N, 2 ** 40 + 1)):
            k = rng.key(5, rng.STREAM_USER, 9, 2)
            u = env.dev(np.zeros(n, dtype))
            K.fill_uniform(u, k, off)
            ref = np.empty(n, dtype)
            rng.fill_uniform_serial(ref, np.uint64(k), off)
            _require(_same(env.host(u), ref), f"uniform {dtype.__name__} n={n} offset={off}")
            z = env.dev(np.zeros((1, n), dtype))
            K.fill_normal_rows(z, 5, rng.STREAM_USER, [9], 2, 1.0, off)
            ref = np.empty(n, dtype)
            rng.fill_normal_serial(ref, np.uint64(k), off)
            _require(_same(env.host(z)[0], ref), f"normal {dtype.__name__} n={n} offset={off}")
    return "uniform and normal draws identical (both dtypes, odd offsets and lengths)"


def check_perturbation_draws(env):
    from noisysim.kernels import cuda as K, rng

    times = np.array([4, 5, 9])  # two runs of consecutive times
    out = env.dev(np.zeros((3, env.B, env.N), np.float32))
    K.fill_normal_rows(out.reshape(3, -1), 7, rng.STREAM_PERTURB, times, 1, 0.25)
    for p, t in enumerate(times):
        ref = 0.25 * rng.normal_array(7, rng.STREAM_PERTURB, t, 1, (env.B, env.N))
        _require(_same(env.host(out)[p], ref.astype(np.float32)), f"pass {p}")
    return "sigma * normal_array rows identical"


def _acts():
    from noisysim.activations import make_activation

    return [make_activation(n, **kw) for n, kw in [
        ("identity", {}), ("relu", {}), ("leaky_relu", {"slope": 0.1}), ("tanh", {}),
        ("sigmoid", {}), ("hardtanh", {"lo": -0.5, "hi": 0.7}), ("step", {"threshold": 0.1}),
        ("sign", {}), ("quantize", {"levels": 5, "lo": -1.0, "hi": 1.0}),
        ("binary_stochastic", {})]]


_EXACT_ACTS = {"identity", "relu", "leaky_relu", "hardtanh", "step", "sign", "quantize",
               "binary_stochastic"}


def _pre(env, P, dtype, seed=0):
    g = np.random.default_rng(seed)
    a = 2.0 * g.standard_normal((P, env.B, env.N))
    a[0, 0, :3] = [0.0, -0.0, 0.1]  # edges: zero, a threshold
    return a.astype(dtype)


def check_activations(env):
    from noisysim.kernels import cuda as K

    notes = []
    for dtype in (np.float32, np.float64):
        a = _pre(env, 2, dtype)
        times = np.array([3, 4])
        for act in _acts():
            ref = np.empty_like(a)
            act.apply(a, ref, 11, 2, times)
            out = env.dev(np.zeros_like(a))
            K.activation_forward(env.dev(a), out, act.code, *act.kernel_params, 11, 2, times)
            got = env.host(out)
            if act.name in _EXACT_ACTS:
                _require(_same(got, ref), f"{act.name} {dtype.__name__}")
            else:
                tol = 2e-7 if dtype == np.float32 else 1e-15
                _require(_close(got, ref, tol, tol), f"{act.name} {dtype.__name__}")
        notes.append(dtype.__name__)
    return "all activations (exact: piecewise-linear, quantize, binary_stochastic) " + \
        ", ".join(notes)


def check_derivatives(env):
    from noisysim.kernels import cpu, cuda as K

    for dtype in (np.float32, np.float64):
        a = _pre(env, 1, dtype)[0]
        up = _pre(env, 1, dtype, seed=1)[0]
        for act in _acts():
            for mode in (cpu.TRUE_DERIVATIVE, cpu.STRAIGHT_THROUGH):
                ref = act._derivative(a, mode)
                out = env.dev(np.zeros_like(a))
                K.activation_derivative(env.dev(a), out, act.code, *act.kernel_params, mode)
                tol = 2e-7 if dtype == np.float32 else 1e-15
                _require(_close(env.host(out), ref, tol, tol), f"{act.name} mode {mode}")
                out2 = env.dev(np.zeros_like(a))
                K.activation_derivative(env.dev(a), out2, act.code, *act.kernel_params, mode,
                                        upstream=env.dev(up))
                _require(_close(env.host(out2), up * ref, tol, tol),
                         f"{act.name} mode {mode} times upstream")
    return "true and straight-through derivatives, alone and times upstream"


def check_losses(env):
    from noisysim.kernels import cuda as K
    from noisysim import losses

    g = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        tol = 1e-6 if dtype == np.float32 else 1e-13
        logits = (3 * g.standard_normal((2 * env.B, 4))).astype(dtype)
        labels = g.integers(0, 4, env.B)
        out = env.dev(np.zeros(2 * env.B))
        K.cross_entropy(env.dev(logits), env.dev(labels), out)
        _require(_close(env.host(out), losses.loss("cross_entropy", logits, labels), tol, tol),
                 f"cross_entropy {dtype.__name__}")
        grad = env.dev(np.zeros_like(logits))
        K.cross_entropy_grad(env.dev(logits), env.dev(labels), grad)
        _require(_close(env.host(grad), losses.loss_grad("cross_entropy", logits, labels),
                        tol, tol), f"cross_entropy_grad {dtype.__name__}")
        targets = g.standard_normal((env.B, 4))
        K.squared_error(env.dev(logits), env.dev(targets), out)
        _require(_close(env.host(out), losses.loss("squared_error", logits, targets), tol, tol),
                 f"squared_error {dtype.__name__}")
        K.squared_error_grad(env.dev(logits), env.dev(targets), grad)
        _require(_close(env.host(grad), losses.loss_grad("squared_error", logits, targets),
                        tol, tol), f"squared_error_grad {dtype.__name__}")
        K.softmax_mse(env.dev(logits), env.dev(labels), out)
        _require(_close(env.host(out), losses.loss("softmax_mse", logits, labels), tol, tol),
                 f"softmax_mse {dtype.__name__}")
        K.softmax_mse_grad(env.dev(logits), env.dev(labels), grad)
        _require(_close(env.host(grad), losses.loss_grad("softmax_mse", logits, labels),
                        tol, tol), f"softmax_mse_grad {dtype.__name__}")
    return "cross_entropy, softmax_mse, squared_error and their gradients"


def _noise_model(name, width):
    from noisysim.noise import make_noise

    trace = np.sin(np.arange(11.0)) + 0.25
    return {
        "none": lambda: make_noise("none"),
        "gaussian": lambda: make_noise("gaussian", sigma=0.3, mean=0.1),
        "multiplicative": lambda: make_noise("multiplicative", sigma=0.2),
        "bernoulli": lambda: make_noise("bernoulli", p=0.3, amplitude=0.2, n_sources=3,
                                        offset=-0.1),
        "centred_bernoulli": lambda: make_noise("centred_bernoulli", p=0.7, amplitude=0.5),
        "telegraph": lambda: make_noise("telegraph", p_flip=0.2, amplitude=0.5, offset=0.1),
        "telegraph_sources": lambda: make_noise("telegraph", p_flip=0.05, amplitude=0.5,
                                                n_sources=3),
        "smtj": lambda: make_noise("smtj"),
        "smtj_sources": lambda: make_noise("smtj", n_sources=2, scale=10.0),
        "ou": lambda: make_noise("ou", tau=3.0, sigma=0.2, mean=0.05),
        "pink": lambda: make_noise("pink", sigma=0.1, n_poles=3, base_tau=0.5),
        "trace_shared": lambda: make_noise("trace", data=trace, scale=0.5),
        "trace_per_node": lambda: make_noise("trace", data=trace, mode="per_node"),
    }[name]()


def _check_noise(env, name):
    seed, layer = 3, 2
    # (times, batch): consecutive passes, a time gap, a grown batch, non-consecutive
    # passes inside one call, a smaller batch (slots left behind), the same state again
    schedule = [([0, 1], env.B - 1), ([4, 5], env.B), ([9], env.B + 2),
                ([10, 12, 13], env.B + 2), ([20], 1), ([21, 22], env.B + 2)]
    # models with a switching probability also run with one per node (variability)
    node_ps = [None] + ([np.linspace(0.02, 0.9, env.N)]
                        if _noise_model(name, env.N).switching else [])
    for node_p in node_ps:
        for dtype in (np.float32, np.float64):
            model = _noise_model(name, env.N)
            st = model.init_state(seed, layer, env.B - 1, env.N)
            sd = env.K.noise_state(model, {k: v.copy() for k, v in st.items()})
            node_pd = None if node_p is None else env.dev(node_p)
            g = np.random.default_rng(0)
            for times, b in schedule:
                a = g.standard_normal((len(times), b, env.N)).astype(dtype)
                ad = env.dev(a)
                model.apply(a, np.array(times), st, seed, layer, node_p)
                env.K.add_noise(model, ad, np.array(times), sd, seed, layer, node_pd)
                what = f"{dtype.__name__} a at times {times}, node_p {node_p is not None}"
                _require(_same(env.host(ad), a), what)
                for k, v in env.K.noise_state_to_host(model, sd).items():
                    _require(_same(v, st[k]), f"state {k} after times {times}")
    return ("noise and carried state identical over gaps, growth and non-consecutive passes"
            + (", also with per-node switching probabilities" if len(node_ps) > 1 else ""))


def _network(env, decorrelated, seed=1, noise="telegraph", conv=False):
    from noisysim.device import Device
    from noisysim.network import Network
    from noisysim.noise import make_noise

    net = (Network(env.conv_layers, input_shape=env.conv_shape, decorrelation=decorrelated,
                   seed=seed) if conv else
           Network(env.widths, decorrelation=decorrelated, seed=seed))
    if decorrelated:  # a non-trivial R
        g = np.random.default_rng(5)
        for p in net.layers:
            p.R += (0.05 * g.standard_normal(p.R.shape)).astype(p.R.dtype)
    models = {"telegraph": lambda: make_noise("telegraph", p_flip=0.2, amplitude=0.01),
              "gaussian": lambda: make_noise("gaussian", sigma=0.01)}
    return net, Device(net, noise=models[noise](), seed=2)


def _batch(env, n=None, seed=0, widths=None):
    g = np.random.default_rng(seed)
    n = n or env.batch
    widths = widths or env.widths
    return g.random((n, widths[0])).astype(np.float32), g.integers(0, widths[-1], n)


def _upload_measurement(env, m, net):
    import dataclasses

    from noisysim.network import LayerParams

    dev = lambda arrays: None if arrays is None else tuple(  # noqa: E731
        None if a is None else env.dev(np.ascontiguousarray(a)) for a in arrays)
    nodes = None if m.nodes is None else tuple(None if v is None else v.to(env.K, net.dtype)
                                               for v in m.nodes)
    return dataclasses.replace(
        m, inputs=dev(m.inputs), pre=dev(m.pre),
        outputs=env.dev(m.outputs), losses=env.dev(m.losses), targets=env.dev(m.targets),
        injected=dev(m.injected), injected_weights=dev(m.injected_weights),
        injected_bias=dev(m.injected_bias), kernels=env.K,
        layers=tuple(LayerParams(*(None if a is None else env.dev(a) for a in (p.W, p.b, p.R)))
                     for p in net.layers), nodes=nodes, activity=dev(m.activity))


def check_estimates(env):
    from noisysim.rules import make_rule

    notes = []
    for name, kw in [("np", {"sigma": 0.05, "samples": 2}), ("inp", {"sigma": 0.05,
                                                                      "samples": 2}),
                     ("anp", {"sigma": 0.05, "samples": 3}), ("anp", {"sigma": 0.0}),
                     ("bp", {}), ("bp", {"surrogate": "ste"}), ("dnp", {"sigma": 0.05}),
                     ("wp", {"sigma": 0.05, "samples": 2}), ("fg", {"samples": 2})]:
        rule = make_rule(name, **kw)
        net, device = _network(env, rule.decorrelated)
        x, y = _batch(env)
        m = device.measure(x, y, **rule.request())
        ref = rule.estimate(m, net)
        rule.load_state_dict({k: np.zeros_like(v) for k, v in rule.state_dict().items()})
        got = rule.estimate(_upload_measurement(env, m, net), net)
        for l, (r, g) in enumerate(zip(ref, got)):
            scale = float(np.max(np.abs(r.W))) or 1.0
            _require(_close(env.host(g.W), r.W, 1e-5, 1e-5 * scale + env.mm * scale),
                     f"{name} {kw} g_W layer {l}")
            _require(_close(env.host(g.b), r.b, 1e-5, 1e-5 * scale), f"{name} {kw} g_b {l}")
        notes.append(name)
    return "estimates from the same measurement agree: " + ", ".join(notes)


def _params(env):
    from noisysim.network import LayerGrad, LayerParams

    g = np.random.default_rng(4)
    shapes = [((env.N, env.B), (env.N,)), ((3, env.N), None)]
    params = [LayerParams(g.standard_normal(w).astype(np.float32),
                          None if b is None else g.standard_normal(b).astype(np.float32), None)
              for w, b in shapes]
    grads = [[LayerGrad(g.standard_normal(p.W.shape).astype(np.float32) * 10 ** (-k),
                        None if p.b is None else
                        g.standard_normal(p.b.shape).astype(np.float32) * 10 ** (-k))
              for p in params] for k in range(3)]
    return params, grads


def check_optimizers(env):
    import copy

    from noisysim.network import LayerGrad, LayerParams
    from noisysim.optim import make_optimizer

    configs = [("adam", {"lr": 1e-2}), ("adam", {"lr": 1e-3, "clip": 0.5, "beta1": 0.8}),
               ("sgd", {"lr": 0.1}), ("sgd", {"lr": 0.1, "momentum": 0.9}),
               ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2,
                        "clip": 1.0})]
    exact = 0
    for name, kw in configs:
        params, grads = _params(env)
        host = make_optimizer(name, **kw)
        host.init(params)
        gpu = make_optimizer(name, **kw)
        layers = [LayerParams(env.dev(p.W), None if p.b is None else env.dev(p.b), None)
                  for p in copy.deepcopy(params)]
        gpu.init(layers, env.K)
        L = len(layers)
        for step_grads in grads:
            ref = host.update(params, step_grads)
            dg = [LayerGrad(env.dev(g.W), None if g.b is None else env.dev(g.b))
                  for g in step_grads]
            got = gpu.update(layers, dg)
            for l in range(L):
                _require(_close(got[f"update_norm_l{l}"], ref[f"update_norm_l{l}"], 1e-5),
                         f"{name} {kw} update norm {l}")
            _require(_close(got["clip_scale"], ref["clip_scale"], 1e-5), f"{name} clip")
        for p, lay in zip(params, layers):
            _require(_close(env.host(lay.W), p.W, 1e-6, 1e-7), f"{name} {kw} W")
            exact += np.array_equal(env.host(lay.W), p.W)
            if p.b is not None:
                _require(_close(env.host(lay.b), p.b, 1e-6, 1e-7), f"{name} {kw} b")
        for k, v in host.state_dict().items():
            _require(_close(gpu.state_dict()[k], v, 1e-6, 1e-7), f"{name} state {k}")
    return f"Adam and SGD variants over 3 updates; {exact} of {2 * len(configs)} W bit-equal"


def check_decorrelation(env):
    from noisysim.decorrelation import Decorrelator
    from noisysim.kernels import step

    g = np.random.default_rng(6)
    d = env.N
    for dtype in (np.float32, np.float64):
        for kappa in (0.0, 0.3):
            R = (np.eye(d) + 0.1 * g.standard_normal((d, d))).astype(dtype)
            x = (g.standard_normal((env.B + 4, d)) @ (np.eye(d) + 0.5)).astype(dtype)
            host = Decorrelator(1e-2, kappa=kappa)
            Rh = R.copy()
            ref = host.update(Rh, x)
            Rd = env.dev(R)
            stats, failure = env.dev(np.zeros(step.size(1))), env.dev(step.new_failure())
            host.step(env.K, Rd, env.dev(x), stats, failure, 1, 0)
            tol = (1e-6 if dtype == np.float32 else 1e-13) + env.mm * (dtype == np.float32)
            norm = math.sqrt(env.host(stats)[step.decor_sq(1, 0)])
            _require(_close(norm, ref, 1e-5), f"norm kappa {kappa}")
            _require(_close(env.host(Rd), Rh, tol, tol), f"R {dtype.__name__} kappa {kappa}")
    return "R updates and their norms (kappa 0 and 0.3, both dtypes)"


def check_measure(env):
    cases = [dict(samples=0), dict(), dict(perturb="nodes", sigma=0.1, samples=2),
             dict(perturb="layer", layer=1, sigma=0.1), dict(perturb="each_layer", sigma=0.1),
             dict(perturb="nodes", sigma=0.1, clean_pass=False)]
    for decorrelated in (False, True):
        net, device = _network(env, decorrelated)
        _, gdev = _network(env, decorrelated)
        gdev.use_kernels(env.K)
        x, y = _batch(env)
        for kw in cases:
            m = device.measure(x, y, **kw)
            g = gdev.measure(x, y, **kw)
            what = f"{kw} decorrelated={decorrelated}"
            for name in ("inputs", "pre"):
                for l, (a, b) in enumerate(zip(getattr(m, name), getattr(g, name))):
                    scale = float(np.max(np.abs(a))) or 1.0
                    _require(_close(env.host(b), a, 1e-6, (1e-6 + env.mm) * scale),
                             f"{what} {name}[{l}]")
            # the losses come out of the same cuBLAS products as pre: their allowance too
            _require(_close(env.host(g.losses), m.losses, 1e-6, 1e-6 + env.mm),
                     f"{what} losses")
            if m.injected is not None:
                for l, (a, b) in enumerate(zip(m.injected, g.injected)):
                    _require(_same(env.host(b), a), f"{what} injected[{l}]")
            _require(_same(g.perturbed_layer, m.perturbed_layer), f"{what} perturbed_layer")
        _require((gdev.clock == device.clock, "clock"), "clock")
        gstate = gdev.state_dict()["noise"]
        for l, st in device._noise_state.items():
            for k, v in st.items():
                _require(_same(gstate[str(l)][k], v), f"noise state {l} {k}")
    return "all perturbation kinds, clean and noisy reference, with and without R; " \
        "injected perturbations and noise state bit-identical"


def check_infer(env):
    _, device = _network(env, True)
    _, gdev = _network(env, True)
    gdev.use_kernels(env.K)
    x, _ = _batch(env)
    for noisy in (False, True, True):
        ref = device.infer(x, noisy)
        got = gdev.infer(x, noisy)
        scale = float(np.max(np.abs(ref))) or 1.0
        _require(_close(got, ref, 1e-6, (1e-6 + env.mm) * scale), f"noisy={noisy}")
    _require((gdev.clock == device.clock, "clock"), "clock")
    return "noise-free and noisy inference"


def _trainers(env, rule_name, opt_name="adam", backends=("cpu", "cuda"), conv=False):
    from noisysim.data import Dataset
    from noisysim.decorrelation import Decorrelator
    from noisysim.optim import make_optimizer
    from noisysim.rules import make_rule
    from noisysim.train import Trainer, TrainSettings

    out = []
    for backend in backends:
        rule = make_rule(rule_name, **({} if rule_name in ("bp", "dbp", "fg") else
                                       {"sigma": 1e-2}))
        net, device = _network(env, rule.decorrelated, noise="gaussian", conv=conv)
        x, y = _batch(env, 2 * env.batch, widths=net.widths)
        data = Dataset(name="r", x_train=x, y_train=y, x_test=x[:0], y_test=y[:0],
                       n_classes=net.widths[-1], input_shape=(net.widths[0],))
        opt = (make_optimizer("adam", lr=1e-2) if opt_name == "adam" else
               make_optimizer("sgd", lr=0.05, momentum=0.9, clip=0.5))
        out.append(Trainer(device, rule, opt, data,
                           TrainSettings(epochs=1, batch_size=env.batch, log_every=1),
                           decorrelator=(Decorrelator(1e-2, kappa=0.2) if rule.decorrelated
                                         else None), backend=backend))
    return out


def _check_train_step(env, rule_name, conv=False):
    cpu, gpu = _trainers(env, rule_name,
                         "sgd" if rule_name in ("inp", "dinp") else env.step_opt, conv=conv)
    for b in range(2):
        f1 = cpu._train_rows(b * env.batch, (b + 1) * env.batch)
        f2 = gpu._train_rows(b * env.batch, (b + 1) * env.batch)
        _require((f1 == f2 == "", f"failures {f1!r} {f2!r}"), "step")
    _require((cpu.step == gpu.step and cpu.device.clock == gpu.device.clock, "position"),
             "step and clock")
    worst = 0.0
    gpu_state = gpu.state_dict()
    for k, v in cpu.network.state_dict().items():
        w = gpu_state["network"][k]
        scale = float(np.max(np.abs(v))) or 1.0
        _require(_close(w, v, env.step_tol, (env.step_tol + env.mm) * scale), f"parameter {k}")
        worst = max(worst, float(np.max(np.abs(w - v))))
    r1, r2 = cpu.recorder.rows["train"], gpu.recorder.rows["train"]
    _require((len(r1) == len(r2) and [list(a) for a in r1] == [list(b) for b in r2],
              f"{[list(a) for a in r1]} vs {[list(b) for b in r2]}"), "row keys")
    for a, b in zip(r1, r2):
        for k in a:
            _require(_close(b[k], a[k], 10 * env.step_tol, 1e-6 + env.mm), f"row {k}")
    for l, st in cpu.device._noise_state.items():
        for k, v in st.items():
            _require(_same(gpu_state["device"]["noise"][str(l)][k], v), f"noise state {k}")
    return f"2 steps; max parameter difference {worst:.2e}; rows agree"


def check_session_state(env):
    """checkpoint (state_dict) -> load into a fresh cuda trainer -> the next step agrees."""
    cpu, gpu = _trainers(env, "danp", env.step_opt)
    cpu._train_rows(0, env.batch)
    gpu._train_rows(0, env.batch)
    state = gpu.state_dict()
    (fresh,) = _trainers(env, "danp", env.step_opt, backends=("cuda",))
    fresh.load_state_dict(state)
    cpu._train_rows(env.batch, 2 * env.batch)
    _require((fresh._train_rows(env.batch, 2 * env.batch) == "", "failure"), "step")
    fresh_state = fresh.state_dict()
    for k, v in cpu.network.state_dict().items():
        scale = float(np.max(np.abs(v))) or 1.0
        _require(_close(fresh_state["network"][k], v, env.step_tol,
                        (env.step_tol + env.mm) * scale), k)
    for k, v in cpu.optimizer.state_dict().items():
        scale = float(np.max(np.abs(v))) or 1.0
        _require(_close(fresh_state["optimizer"][k], v, 10 * env.step_tol,
                        (env.step_tol + env.mm) * scale), f"optimizer {k}")
    return "checkpoint round trip through state_dict / load_state_dict"


def check_backend_resolution(env):
    from noisysim.backends import cuda_status, resolve_backend

    if env.sim:
        _require((resolve_backend("cuda") == "cuda", "cuda"), "explicit cuda in simulator")
        _require((resolve_backend("auto") == "cpu", "auto"), "auto ignores the simulator")
        return "simulator: 'cuda' resolves, 'auto' stays on cpu"
    said = []
    _require((resolve_backend("auto", announce=said.append) == "cuda", "auto"), "auto")
    return f"auto -> cuda on {cuda_status()[1]}; announced: {said}"


def _run_checks() -> int:
    try:
        env = _Env()
        if env.sim:
            from simulator import quick_and_safe

            quick_and_safe()  # tests/simulator.py
    except Exception as exc:  # numba without a cuda target, or no CuPy on hardware
        _emit("skip", True, f"cuda backend not importable here: {exc!r}")
        return 0
    checks = {f"noise_{n}": (lambda e, n=n: _check_noise(e, n)) for n in NOISES}
    checks.update({f"train_step_{r}": (lambda e, r=r: _check_train_step(e, r)) for r in RULES})
    checks.update({f"train_step_conv_{r}": (lambda e, r=r: _check_train_step(e, r, conv=True))
                   for r in CONV_RULES})
    for name in CHECKS:
        fn = checks.get(name) or globals()[f"check_{name}"]
        t = time.perf_counter()
        try:
            detail = fn(env)
            _emit(name, True, f"{detail} ({time.perf_counter() - t:.1f} s)")
        except _Fail as exc:
            _emit(name, False, str(exc))
        except Exception:
            _emit(name, False, traceback.format_exc())
    return 0


if __name__ == "__main__":
    sys.exit(_run_checks())
