"""The training step, written once, on both backends (cuda in numba's simulator without a GPU).

- the logged row holds the statistics of the step's own measurement and update;
- failures are reported at the step where they happened, also when the GPU reads its
  statistics only on logged steps, and freeze every later update;
- a run resumed from a checkpoint continues bit for bit;
- the cuda step's cost: kernel launches per steady-state step as the design counts them,
  and no copy between host and device on a step that logs nothing.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest

from backends import assert_resumes_bit_for_bit
from conftest import HARDWARE
from noisysim.data import Dataset
from noisysim.decorrelation import Decorrelator
from noisysim.device import Device
from noisysim.network import LayerGrad, LayerParams, Network
from noisysim.noise import make_noise
from noisysim.optim import make_optimizer
from noisysim.rules import make_rule
from noisysim.train import NullRecorder, StepFailure, Trainer, TrainSettings

WIDTHS = [6, 5, 4]
BATCH = 4


def _data(n=4 * BATCH, seed=0):
    g = np.random.default_rng(seed)
    x = g.random((n, WIDTHS[0])).astype(np.float32)
    y = g.integers(0, WIDTHS[-1], n)
    return Dataset(name="r", x_train=x, y_train=y, x_test=x[:0], y_test=y[:0],
                   n_classes=WIDTHS[-1], input_shape=(WIDTHS[0],))


def _trainer(backend, rule="anp", log_every=1, epochs=1, lr=1e-2, recorder=None, noise=True,
             schedule="constant"):
    r = make_rule(rule, **({} if rule.endswith("bp") else {"sigma": 1e-2}))
    net = Network(WIDTHS, decorrelation=r.decorrelated, seed=1)
    device = Device(net, noise=make_noise("gaussian", sigma=0.01) if noise else None, seed=2)
    return Trainer(device, r, make_optimizer("adam", lr=lr, schedule=schedule), _data(),
                   TrainSettings(epochs=epochs, batch_size=BATCH, log_every=log_every),
                   decorrelator=Decorrelator(1e-2) if r.decorrelated else None,
                   recorder=recorder or NullRecorder(), backend=backend)


def _capture_measurements(trainer):
    """Keep a host copy of every measurement's losses and reference outputs."""
    K = trainer.kernels
    seen = []
    estimate = trainer.rule.estimate

    def patched(m, network, out=None):
        seen.append((K.to_host(m.losses), K.to_host(m.outputs[0]), K.to_host(m.targets)))
        return estimate(m, network, out)
    trainer.rule.estimate = patched
    return seen


@pytest.mark.parametrize("rule", ["anp", "bp"])
def test_row_holds_the_statistics_of_its_own_measurement(backend, rule):
    trainer = _trainer(backend, rule)
    seen = _capture_measurements(trainer)
    before = [p.W.copy() for p in trainer.network.layers]
    assert trainer._train_rows(0, BATCH) == ""
    (row,) = trainer.recorder.rows["train"]
    losses, outputs, labels = seen[0]
    tol = dict(rtol=1e-12, atol=1e-12)  # the same float64 values summed in another order
    np.testing.assert_allclose(row["loss"], losses[0].mean(), **tol)
    if rule == "anp":
        dl = losses[1:] - losses[0]
        np.testing.assert_allclose(row["loss_change_mean"], dl.mean(), **tol)
        np.testing.assert_allclose(row["loss_change_std"], dl.std(), **tol)
    else:
        assert "loss_change_mean" not in row
    assert row["accuracy"] == np.mean(outputs.argmax(axis=1) == labels)
    state = trainer.state_dict()["network"]
    for l, w in enumerate(before):
        delta = state[f"W_{l}"] - w
        delta_b = state[f"b_{l}"]  # biases start at zero
        want = math.sqrt(np.sum(delta.astype(np.float64) ** 2)
                         + np.sum(delta_b.astype(np.float64) ** 2))
        # ||Delta||^2 is accumulated from the update's own float32 deltas: p_new - p_old
        # rounds each by at most half an ulp of p (|p| < 2 here), i.e. 1.2e-7 relative
        np.testing.assert_allclose(row[f"update_norm_l{l}"], want, rtol=1e-6)


@pytest.mark.parametrize("log_every", [1, 3])
def test_failure_is_reported_at_its_step_and_freezes_the_updates(backend, log_every):
    """A gradient made non-finite at step 2 of 4: the run ends "diverged" naming step 2 and
    its layer, with the parameters of step 1, also when the statistics are read only on
    logged steps (the GPU with log_every 3 learns of it at step 3)."""
    trainer = _trainer(backend, log_every=log_every)
    reference = _trainer(backend, log_every=log_every)
    reference._train_rows(0, BATCH)
    after_step_1 = reference.state_dict()["network"]
    estimate = trainer.rule.estimate
    calls = []

    def poisoned(m, network, out=None):
        grads = estimate(m, network, out)
        calls.append(1)
        if len(calls) == 2:
            grads[1].b[0] = np.inf
        return grads
    trainer.rule.estimate = poisoned
    result = trainer.run()
    assert result.status == "diverged"
    assert result.message == "the gradient estimate of layer 1 became non-finite at step 2"
    assert result.step == 1 and trainer.step == 1
    for k, v in trainer.state_dict()["network"].items():
        np.testing.assert_array_equal(v, after_step_1[k], err_msg=k)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_rule_whose_estimate_takes_no_out_trains_alike(backend):
    """A rule written before the gradient arena (``estimate(m, network)``) returns new
    arrays, which the optimiser copies in: the same training, bit for bit."""
    old_style, new_style = _trainer(backend), _trainer(backend)
    estimate = old_style.rule.estimate
    old_style.rule.estimate = lambda m, network: estimate(m, network)
    for trainer in (old_style, new_style):
        trainer._train_rows(0, BATCH)
        trainer._train_rows(BATCH, 2 * BATCH)
    for k, v in new_style.state_dict()["network"].items():
        np.testing.assert_array_equal(old_style.state_dict()["network"][k], v, err_msg=k)


def test_failure_messages_have_one_home():
    assert StepFailure("loss", 3).message == "the loss became non-finite at step 3"
    assert StepFailure.from_record([0, 0, -1]) is None
    failure = StepFailure.from_record([7, 5, 1])
    assert failure == StepFailure("decorrelation", 7, 1)
    assert failure.message == "the decorrelation matrix R of layer 1 diverged at step 7"
    assert "\n" not in StepFailure("overflow", 2, 0).message


def test_diverging_decorrelation_stops_the_run_and_keeps_R(backend):
    trainer = _trainer(backend, rule="danp")
    trainer.decorrelator.lr = math.inf  # the first R step is not finite
    R_before = [p.R.copy() for p in trainer.network.layers]
    result = trainer.run()
    assert result.status == "diverged"
    assert result.message == "the decorrelation matrix R of layer 0 diverged at step 1"
    for p, R in zip(trainer.network.layers, R_before):
        np.testing.assert_array_equal(p.R, R)


@pytest.mark.parametrize("rule", ["danp", "inp"])
def test_resume_from_a_checkpoint_continues_bit_for_bit(backend, rule):
    _, want, got = assert_resumes_bit_for_bit(lambda: _trainer(backend, rule, epochs=2), 3,
                                              BATCH)
    for l, st in want["device"]["noise"].items():
        for k, v in st.items():
            np.testing.assert_array_equal(got["device"]["noise"][l][k], v)


def test_cosine_schedule_spans_the_run_and_resumes_bit_for_bit(backend):
    def make():
        return _trainer(backend, "anp", epochs=2, schedule="cosine")
    trainer = make()
    assert trainer.optimizer.horizon == trainer.total_steps
    assert trainer.optimizer.lr_at(trainer.total_steps + 1) == 0.0
    assert_resumes_bit_for_bit(make, 3, BATCH)


# Kernel launches of one steady-state cuda step, as the design counts them (L layers,
# Gaussian noise on every layer, clean reference pass, biases, Adam):
#   data       the batch, gathered in data order (one launch)
#   measure    per layer: bias (+ a draw for perturbed passes), noise (perturbed passes
#              only: the reference is clean), activation; then one loss launch and the
#              pass clock's advance
#   estimate   anp: per layer ||da||^2 and the node coefficients, one loss-scale launch;
#              bp: the loss gradient, one g * f'(a) per layer
#   step       loss statistics; the gradient norms of every layer with the optimiser's
#              gate (one launch over the gradient arena); Adam over the parameter arena
#              (one launch, whatever L); the failure record; decorrelation: two per layer
#              (the step and its guarded application)
def _launch_budget(rule, L):
    step = 1 + 1 + 1 + 1
    if rule == "bp":
        return 1 + 2 * L + 2 + (1 + L) + step
    measure = 4 * L + 2
    estimate = 2 * L + 1
    return 1 + measure + estimate + step + (2 * L if rule == "danp" else 0)


@pytest.mark.parametrize("rule", ["bp", "anp", "danp"])
def test_cuda_step_launches_and_copies_within_the_design_budget(rule):
    from noisysim.kernels import cuda_launch

    trainer = _trainer("cuda", rule, log_every=1000)
    K = trainer.kernels
    trainer._train_rows(0, BATCH)  # first step: data and order copied once
    launches = cuda_launch.LAUNCHES["count"]
    copies, writes = dict(K.counters), cuda_launch.COUNTER_WRITES["count"]
    assert trainer._train_rows(BATCH, 2 * BATCH) == ""
    assert cuda_launch.LAUNCHES["count"] - launches == _launch_budget(rule, len(WIDTHS) - 1)
    assert K.counters == copies, "a step that logs nothing copied between host and device"
    assert cuda_launch.COUNTER_WRITES["count"] == writes, "the host rewrote a step counter"


def _recorded_launches(monkeypatch):
    """Record every launch's kernel, size, grid and arguments: scalars by value, arrays by
    shape and dtype (the simulator's temporaries move between steps; on a GPU a captured
    step's temporaries come from the graph's own memory)."""
    from noisysim.kernels import cuda, cuda_conv, cuda_hardware, cuda_launch

    seen = []
    launch = cuda_launch.launch

    def recording(kernel, n, *args, blocks=None):
        seen.append((kernel.py_func.__name__, n, blocks, tuple(
            ("array", a.shape, a.dtype.str) if hasattr(a, "shape") and a.ndim else repr(a)
            for a in args)))
        return launch(kernel, n, *args, blocks=blocks)
    for module in (cuda, cuda_conv, cuda_hardware):
        monkeypatch.setattr(module, "launch", recording)
    return seen


@pytest.mark.parametrize("rule", ["bp", "anp", "danp"])
def test_cuda_steady_state_steps_launch_the_same_arguments(rule, monkeypatch):
    """What a CUDA graph of the step needs: every step of the steady state launches the
    same kernels with the same scalar arguments (the pass clock, the update count and the
    step number come from device counters, the batch from a device row counter, the
    learning rate from a table indexed on the device)."""
    trainer = _trainer("cuda", rule, log_every=1000, schedule="cosine")
    trainer._train_rows(0, BATCH)
    seen = _recorded_launches(monkeypatch)
    trainer._train_rows(BATCH, 2 * BATCH)
    first = list(seen)
    seen.clear()
    trainer._train_rows(2 * BATCH, 3 * BATCH)
    assert first and seen == first


SCALARS = (int, float, np.integer, np.floating)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_cuda_update_constants_cross_table_windows_bit_for_bit(name, monkeypatch):
    """The GPU reads each update's learning-rate constants from a device table of
    ``SCHEDULE`` updates (a new one when the count leaves it): with windows of 3 updates,
    7 cosine-scheduled updates equal the CPU's, whose constants are host scalars."""
    from backends import kernels
    from noisysim.kernels.cuda_backend import CudaKernels

    monkeypatch.setattr(CudaKernels, "SCHEDULE", 3)
    g = np.random.default_rng(8)
    grads = [[LayerGrad(g.standard_normal((5, 6)).astype(np.float32),
                        g.standard_normal(5).astype(np.float32))] for _ in range(7)]
    results = {}
    for backend in ("cpu", "cuda"):
        K = kernels(backend)
        net = Network([6, 5], seed=3)
        opt = make_optimizer(name, lr=0.05, schedule="cosine",
                             **({"momentum": 0.9} if name == "sgd" else {}))
        opt.horizon = 7
        layers = [LayerParams(K.asarray(p.W), K.asarray(p.b), None) for p in net.layers]
        opt.init(layers, K)
        for gs in grads:
            opt.update(layers, [LayerGrad(K.asarray(x.W), K.asarray(x.b)) for x in gs])
        results[backend] = [K.to_host(a) for p in layers for a in (p.W, p.b)]
    for got, want in zip(results["cuda"], results["cpu"]):
        np.testing.assert_array_equal(got, want)


def _host_scalars(trainer) -> dict:
    """Every scalar the host holds for a run: the attributes of the trainer, device,
    optimiser, rule and decorrelator, their NamedTuple states' fields, the noise states'
    scalar entries and the device counters' records."""
    from noisysim.kernels import cuda_launch

    out = {}
    for name in ("trainer", "device", "optimizer", "rule", "decorrelator"):
        obj = trainer if name == "trainer" else getattr(trainer, name)
        for key, value in getattr(obj, "__dict__", {}).items():
            if isinstance(value, tuple) and hasattr(value, "_fields"):
                for field in value._fields:
                    if isinstance(getattr(value, field), SCALARS):
                        out[(name, key, field)] = getattr(value, field)
            elif isinstance(value, SCALARS + (str,)):
                out[(name, key)] = value
    for layer, state in trainer.device._noise_state.items():
        for key, value in state.items():
            if isinstance(value, SCALARS):
                out[("noise", layer, key)] = value
    out["counters"] = cuda_launch.counter_records()
    return out


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_replayed_step_advances_the_host_as_the_step_did(backend):
    """What a replayed CUDA graph relies on (noisysim.gpu.graph): the host values a quiet
    step changes are all in ``host_counters``, so advancing them by one step's change
    leaves the host exactly where running the step leaves it."""
    def make():
        r = make_rule("anp", sigma=1e-2)
        net = Network(WIDTHS, seed=1)
        device = Device(net, noise=make_noise("telegraph", p_flip=0.3, amplitude=0.01), seed=2)
        return Trainer(device, r, make_optimizer("adam", lr=1e-2, schedule="cosine"), _data(),
                       TrainSettings(epochs=1, batch_size=BATCH, log_every=1000),
                       recorder=NullRecorder(), backend=backend)
    ran, replayed = make(), make()
    for trainer in (ran, replayed):
        trainer._train_rows(0, BATCH)
    before = ran.host_counters()
    assert ran._quiet(2) and ran._train_rows(BATCH, 2 * BATCH) == ""
    after = ran.host_counters()
    assert after["step"] == before["step"] + 1
    assert backend == "cpu" or ("noise_last", 0) in after  # the GPU's host-side check
    replayed.advance_host_counters({k: after[k] - before[k] for k in after})
    try:
        assert _host_scalars(replayed) == _host_scalars(ran)
    finally:  # the host's counter records now count a step the device never ran
        from noisysim.kernels import cuda_launch

        cuda_launch.forget_counters()


def test_a_forgotten_counter_is_written_at_its_next_use():
    """After ``forget_counters`` (a step the device did not run) the pass-time offsets of
    a launch still match the device's clock."""
    from noisysim.kernels import cuda_launch

    like = np.zeros(1)
    cuda_launch.counter("clock", 11, like)
    cuda_launch.forget_counters()
    device_clock = cuda_launch._COUNTERS[("clock", True)][0]
    device_clock[0] = 99  # where the device's clock is, unknown to the host
    ((index, clock, offset, count),) = cuda_launch.clocked([5, 6], like)
    assert clock is device_clock and (index, count) == (0, 2)
    assert clock[0] + offset == 5


def _graph_trainer(graphs, rule="danp", epochs=2, batches=7, backend="cuda",
                   noise=("telegraph", {"p_flip": 0.3, "amplitude": 0.01}), log_every=3):
    r = make_rule(rule, **({} if rule.endswith("bp") else {"sigma": 1e-2}))
    net = Network(WIDTHS, decorrelation=r.decorrelated, seed=1)
    device = Device(net, noise=make_noise(noise[0], **noise[1]), seed=2)
    return Trainer(device, r, make_optimizer("adam", lr=1e-2, schedule="cosine"),
                   _data(n=batches * BATCH), TrainSettings(epochs=epochs, batch_size=BATCH,
                                                     log_every=log_every),
                   decorrelator=Decorrelator(1e-2) if r.decorrelated else None,
                   recorder=NullRecorder(), backend=backend, graphs=graphs)


def _assert_same_runs(a, b):
    """Two trainers ran alike: the same results, trajectory rows and parameters."""
    ra, rb = a.run(), b.run()
    np.testing.assert_equal((ra.status, ra.step, ra.final), (rb.status, rb.step, rb.final))
    np.testing.assert_equal(a.recorder.rows, b.recorder.rows)
    for k, v in b.state_dict()["network"].items():
        np.testing.assert_array_equal(a.state_dict()["network"][k], v, err_msg=k)


@pytest.mark.skipif(HARDWARE, reason="the simulator's fallback")
def test_graphs_under_the_simulator_say_so_once_and_train_plainly(capsys):
    assert _graph_trainer(True, backend="cpu")._graph is None  # a cuda option
    assert capsys.readouterr().err == ""
    with_graphs = _graph_trainer(True, "anp", epochs=1, batches=4)
    assert capsys.readouterr().err.count("numba's CUDA simulator has no graphs") == 1
    assert with_graphs._graph is None  # the plain path, as without the option


class _EmulatedCapture:
    """Stands in for CuPy's stream capture under the simulator, which cannot record: the
    "capture" runs the step, and the graph's first launch after it does nothing; a later
    launch (a replay) runs the step at the current position and then puts the host's values
    back as they were, as a replay changes the device only. StepGraph then advances the
    host's values by what the captured step changed. A replay runs no host code, so the
    emulated one must not need any: no counter written and nothing copied from the host."""

    numba_stream = None

    def __init__(self, trainer):
        self.trainer, self.plain = trainer, None
        self.captures, self.fresh = 0, False

    def current(self):
        return contextlib.nullcontext()

    def allocating(self):
        return contextlib.nullcontext()

    def begin_capture(self):
        self.captures += 1

    def end_capture(self):
        self.fresh = True
        return "graph"

    def launch(self, graph):
        if self.fresh:  # the captured step itself: it already ran
            self.fresh = False
            return
        from noisysim.kernels import cuda_launch

        t = self.trainer
        host = (t.device.clock, t.optimizer.state, t.step,
                {l: dict(s) for l, s in t.device._noise_state.items()},
                {k: v[1] for k, v in cuda_launch._COUNTERS.items()})
        writes, copies = cuda_launch.COUNTER_WRITES["count"], t.kernels.counters["to_device"]
        assert self.plain() == ""
        assert cuda_launch.COUNTER_WRITES["count"] == writes, "a replay wrote a counter"
        assert t.kernels.counters["to_device"] == copies, "a replay copied from the host"
        t.device.clock, t.optimizer.state, t.step = host[:3]
        for l, state in host[3].items():
            if "_last" in state:  # a stateful model's (telegraph, OU)
                t.device._noise_state[l]["_last"] = state["_last"]
        for k, v in host[4].items():
            cuda_launch._COUNTERS[k][1] = v


def _emulated_graph(trainer):
    """Give ``trainer`` a StepGraph whose capture is emulated (``_EmulatedCapture``)."""
    from noisysim.gpu.graph import StepGraph

    runtime = _EmulatedCapture(trainer)
    graph = trainer._graph = StepGraph(runtime)
    step = graph.step

    def spying(trainer, plain):
        runtime.plain = plain
        return step(trainer, plain)
    graph.step = spying
    return graph, runtime


@pytest.mark.parametrize("window, rule", [(4096, "anp"), (3, "bp")])
def test_step_graph_warms_up_captures_and_replays_as_the_plain_run(window, rule, monkeypatch):
    """StepGraph's bookkeeping, with the capture emulated (``_EmulatedCapture``): warm-up,
    capture and replays of the quiet steps interleave with logged steps and epoch ends, and
    the run equals the plain one; with learning-rate tables of 3 updates the graph goes
    stale and is captured anew."""
    from noisysim.kernels.cuda_backend import CudaKernels

    monkeypatch.setattr(CudaKernels, "SCHEDULE", window)
    gaussian = ("gaussian", {"sigma": 0.01})  # the simulator's fastest noise kernel
    graphed = _graph_trainer(False, rule, batches=3, noise=gaussian)  # quiet: 1, 2, 4, 5
    graph, runtime = _emulated_graph(graphed)
    _assert_same_runs(graphed, _graph_trainer(False, rule, batches=3, noise=gaussian))
    assert graph.enabled
    if window == 4096:
        assert runtime.captures == 1 and graph.replays == 2  # steps 4 and 5
    else:  # tables made at updates 1 and 4 (before step 4): step 4 warms up anew
        assert runtime.captures == 2 and graph.replays == 0


@pytest.mark.parametrize("case", ["host copies", "counter write"])
def test_step_graph_gives_up_on_a_step_that_a_replay_would_not_repeat(case, monkeypatch,
                                                                      capsys):
    """A captured step must be device work only. WP copies host-drawn perturbations to the
    GPU at every step; a capture at an epoch's first step would write the row counter if the
    trainer did not hold the counters first (made a no-op here). Either way the capture is
    dropped: the state goes back, the step runs plainly, graphs stay off, with a note."""
    from noisysim.kernels.cuda_backend import CudaKernels

    gaussian = ("gaussian", {"sigma": 0.01})
    if case == "host copies":  # steps 1 and 2 quiet: warm-up, capture
        make = lambda: _graph_trainer(False, "wp", epochs=1, batches=3,  # noqa: E731
                                      noise=gaussian)
    else:  # step 1 warm-up, 2 ends epoch 1, 3 is captured at the start of epoch 2
        monkeypatch.setattr(CudaKernels, "hold_counters", lambda self, values: None)
        make = lambda: _graph_trainer(False, "anp", epochs=2, batches=2,  # noqa: E731
                                      noise=gaussian, log_every=1000)
    graphed = make()
    graph, runtime = _emulated_graph(graphed)
    _assert_same_runs(graphed, make())
    assert runtime.captures == 1 and not graph.enabled and graph.replays == 0
    want = "host arrays to the GPU" if case == "host copies" else "writes a device counter"
    (note,) = [line for line in capsys.readouterr().err.splitlines() if "graph" in line]
    assert "cannot be captured as a CUDA graph" in note and want in note


def test_gpu_check_times_graph_replays_only(monkeypatch):
    """``noisysim.gpu.check.graph_step_time`` (its graph columns), with the capture emulated:
    it stays within one epoch's quiet steps, and the steps it times and profiles after the
    warm-up, the capture and the first replay are all replays."""
    from noisysim import bench
    from noisysim.gpu import check

    made = []
    original = bench.random_data_trainer

    def emulated(*args, graphs=False, **kwargs):
        trainer, widths = original(*args, **kwargs)
        made.append(_emulated_graph(trainer)[0])
        return trainer, widths
    monkeypatch.setattr(bench, "random_data_trainer", emulated)
    profiled = []

    def profile(step, n):
        before = made[0].replays
        for _ in range(n):
            step()
        profiled.append(made[0].replays - before)
        return 0.25, 7.0
    monkeypatch.setattr(check, "_profile", profile)
    seconds, busy = check.graph_step_time("6,5,4", 4, "anp", steps=2)
    (graph,) = made
    assert profiled == [2] and busy == 0.25 and seconds > 0
    assert graph.enabled and graph.replays == 2 * 2 + 1  # timed 2, profiled 2, the first


@pytest.mark.skipif(not HARDWARE, reason="CUDA graphs need a GPU (NOISYSIM_CUDA_HARDWARE=1)")
@pytest.mark.parametrize("rule", ["bp", "anp", "danp"])
def test_cuda_graph_replays_train_bit_for_bit_as_the_plain_step(rule):  # pragma: no cover
    """Log every 3 steps over 7-batch epochs: warm-up, capture, replays, logged steps and
    epoch ends interleave; results, trajectory rows and parameters equal the plain run's."""
    graphed = _graph_trainer(True, rule)
    _assert_same_runs(graphed, _graph_trainer(False, rule))
    assert graphed._graph.enabled and graphed._graph.replays > 0


def test_numba_views_of_cupy_arrays_are_made_once(monkeypatch):
    """A launch converts a CuPy argument through numba's CUDA-array-interface path, which
    costs more host time than a small kernel: the view of a memory layout is made once."""
    from noisysim.kernels import cuda_launch as cuda

    made = []

    def from_interface(desc, owner=None, sync=True):
        made.append((desc["data"][0], desc["shape"], owner, sync))
        return object()

    class Memory:
        def __init__(self, ptr):
            self.ptr = ptr

    class FakeCupyArray:  # what _nb reads of a CuPy array
        def __init__(self, ptr, shape):
            self.data, self.shape, self.dtype = Memory(ptr), shape, np.dtype(np.float32)
            self.strides = tuple(4 * int(np.prod(shape[i + 1:])) for i in range(len(shape)))

        @property
        def __cuda_array_interface__(self):
            return {"shape": self.shape, "strides": None, "typestr": "<f4",
                    "data": (self.data.ptr, False), "version": 3}

    monkeypatch.setattr(cuda, "SIMULATED", False)
    monkeypatch.setattr(cuda.cuda, "from_cuda_array_interface", from_interface, raising=False)
    monkeypatch.setattr(cuda, "_VIEWS", {})
    a = FakeCupyArray(4096, (3, 5))
    first = cuda._nb(a)
    assert cuda._nb(a) is first and cuda._nb(FakeCupyArray(4096, (3, 5))) is first
    assert cuda._nb(FakeCupyArray(4096, (5, 3))) is not first  # another layout, a new view
    assert made == [(4096, (3, 5), None, False), (4096, (5, 3), None, False)]
