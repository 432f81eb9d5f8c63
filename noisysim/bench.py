"""``noisysim bench``: time full training steps and compare with numpy's matmul.

A full step is what the training engine does per batch: the device's passes, the rule's
estimate, the optimiser update and (for decorrelated rules) the R update. Warm-up steps
(compilation, first-touch allocations) are excluded; the median of the timed steps is
reported.
"""

from __future__ import annotations

import resource
import statistics
import time

import numpy as np

from .errors import NoisysimError, check_number

FLOP_COUNTING = (
    "FLOPs are counted as 2*m*n*k for every matrix product the step needs as noisysim "
    "schedules it: forward products per layer over the rows of the passes whose input differs "
    "from the reference pass (layer 0 once, its input being noise-free; INP's passes "
    "recompute the layers below the one they perturb when intrinsic noise reaches them), "
    "the x R^T products of decorrelated layers, "
    "the rule's gradient products (outer products of per-sample scales and inputs, or BP's "
    "backward products) and the two products of each R update; elementwise work (noise, "
    "activations, losses, optimiser) is not counted. gemm_gflop_per_s is numpy's matmul on "
    "exactly those shapes in the same process, so ratio_to_gemm = time of those products "
    "alone / time of the whole step."
)


def step_products(rule, widths, batch, random_layers=(), maps=None
                  ) -> list[tuple[int, int, int]]:
    """The (m, k, n) shapes of the matrix products of one step (see FLOP_COUNTING) on a
    device whose layers ``random_layers`` draw intrinsic randomness in every pass
    (``Device.random_layers``: then INP's passes recompute every layer from there up).
    With the network's input ``maps`` a conv layer counts as a dense layer of d inputs
    and C_out outputs on B L rows (``noisysim.layers``)."""
    from .device import pass_layout

    L = len(widths) - 1
    req = rule.request()
    # passes whose input differs from the reference pass's need their own product per layer
    _, _, _, rows = pass_layout(req["perturb"], req.get("samples", 1), None, L,
                                random_layers)
    prods = []
    for l in range(L):
        n_in, n_out, m = widths[l], widths[l + 1], batch  # m: rows per pass
        if maps is not None:
            n_in, n_out = maps[l].patch_size, widths[l + 1] // maps[l].positions
            m = batch * maps[l].positions
        passes = rows[l]
        if rule.decorrelated:
            prods.append((passes * m, n_in, n_in))          # x R^T
        prods.append((passes * m, n_in, n_out))              # forward
        if rule.family in ("bp", "fg"):
            prods.append((n_out, m, n_in))                   # gradient / tangent product
            if l > 0:
                prods.append((m, n_out, n_in))               # delta W / tangent forward
        elif rule.family != "wp":  # wp's estimate is a weighted sum of its perturbations
            # the K perturbed passes' per-sample scales are averaged before one outer product
            prods.append((n_out, m, n_in))
        if rule.decorrelated:
            prods.append((m, n_in, n_in))                    # X R
            prods.append((n_in, m, n_in))                    # X^T (X R)
    return prods


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    """Median wall time of fn() over repeats, after warmup calls (compilation, first touch)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def parse_layers(layers) -> list:
    """Widths "784,100,10", or a TOML array of layer tables (a conv net, ``noisysim.layers``)
    such as '[{conv = 16, kernel = 5}, {pool = "max", size = 2}, {dense = 10}]'."""
    text = str(layers).strip()
    if text.startswith("["):
        import tomllib

        try:
            return list(tomllib.loads(f"layers = {text}")["layers"])
        except tomllib.TOMLDecodeError as exc:
            raise NoisysimError(f"layers {text!r} is not a TOML array of layer tables ({exc}); "
                                "e.g. [{conv = 16, kernel = 5}, {dense = 10}]") from None
    return [int(check_number("layer width", int(w), 1, None, integer=True))
            for w in text.split(",")]


def random_data_trainer(rule, layers, batch, noise, dtype, backend="cpu", input_shape=None,
                        batches=1, graphs=False):
    """The benchmark's setup, shared by the backends: a Trainer for ``rule`` on
    ``layers`` (``parse_layers``; layer tables need ``input_shape`` (H, W, C)) with
    intrinsic ``noise`` (gaussian: sigma 0.01), Adam 1e-4, decorrelation lr 1e-7, and one
    random batch (uniform [0, 1) inputs, random labels), repeated ``batches`` times, as its
    training set, on ``backend`` (``graphs``: the Trainer's CUDA-graph option). Returns
    (trainer, widths)."""
    from .data import Dataset
    from .decorrelation import Decorrelator
    from .device import Device
    from .network import Network
    from .noise import make_noise
    from .optim import make_optimizer
    from .rules import make_rule
    from .train import Trainer, TrainSettings

    batch = int(check_number("batch", batch, 1, None, integer=True))
    r = make_rule(rule)
    net = Network(parse_layers(layers), dtype=dtype, decorrelation=r.decorrelated, seed=0,
                  input_shape=input_shape)
    widths = list(net.widths)
    noise_model = make_noise(noise, **({"sigma": 0.01} if noise == "gaussian" else {}))
    device = Device(net, noise=noise_model, seed=0)
    gen = np.random.default_rng(0)
    x = np.tile(gen.random((batch, widths[0]), dtype=np.float32).astype(dtype), (batches, 1))
    y = np.tile(gen.integers(0, widths[-1], batch), batches)
    data = Dataset(name="random", x_train=x, y_train=y, x_test=x[:0], y_test=y[:0],
                   n_classes=widths[-1], input_shape=(widths[0],), meta={})
    trainer = Trainer(device, r, make_optimizer("adam", lr=1e-4), data,
                      TrainSettings(epochs=1, batch_size=batch, log_every=10**9),
                      decorrelator=Decorrelator(1e-7) if r.decorrelated else None,
                      backend=backend, graphs=graphs)
    return trainer, widths


def timed_step(trainer):
    """One training step on the trainer's whole (one-batch) training set, waiting for the
    backend to finish it; raises if the step failed."""
    K = trainer.kernels

    def one_step():
        failure = trainer._train_rows(0, trainer.settings.batch_size)
        getattr(K, "synchronize", lambda: None)()
        if failure:
            raise NoisysimError(f"benchmark step diverged: {failure}")
    return one_step


def bench(rule="danp", layers="3072,1024,1024,1024,10", batch=1000, steps=5, backend="cpu",
          noise="gaussian", dtype="float32", verbose=False, input_shape=None) -> dict:
    """One JSON-able row: the median step time on ``backend`` ("cpu", "cuda" or "auto")
    and the backend's matrix-product rate on exactly the step's products. ``layers`` may
    be layer tables of a conv net (``parse_layers``) on images of ``input_shape``: its
    products are the im2col ones (B L rows of d = C_in k k)."""
    from .backends import cuda_status, resolve_backend

    backend = resolve_backend(backend)
    steps = int(check_number("steps", steps, 1, None, integer=True))
    trainer, widths = random_data_trainer(rule, layers, batch, noise, dtype, backend,
                                          input_shape)
    K, xp = trainer.kernels, trainer.kernels.xp
    r = trainer.rule
    gen = np.random.default_rng(1)
    if verbose:
        print(f"timing {rule} on {widths}, batch {batch} ({backend}): warm-up, then {steps} "
              "steps", flush=True)
    t_step = median_time(timed_step(trainer), steps)
    net = trainer.network
    prods = step_products(r, widths, batch, trainer.device.random_layers(), net.maps)
    mats = [(K.asarray(gen.random((m, k), dtype=np.float32).astype(dtype)),
             K.asarray(gen.random((k, n), dtype=np.float32).astype(dtype)))
            for m, k, n in prods]

    def gemms():
        for a, b in mats:
            xp.matmul(a, b)
        getattr(K, "synchronize", lambda: None)()

    t_gemm = median_time(gemms, steps)
    flop = float(sum(2.0 * m * k * n for m, k, n in prods))
    row = {
        "rule": rule, "layers": widths if net.spec is None else list(net.spec),
        "widths": widths, "batch": batch, "backend": backend, "dtype": dtype,
        "noise": noise,
        "step_s": round(t_step, 6),
        "samples_per_s": round(batch / t_step, 1),
        "gflop_per_s": round(flop / t_step / 1e9, 2),
        "gemm_gflop_per_s": round(flop / t_gemm / 1e9, 2),
        "ratio_to_gemm": round(t_gemm / t_step, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if backend == "cuda":
        row["gpu"] = cuda_status()[1]
    return row
