"""The same seed gives the same bytes, whatever the number of threads."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np

from noisysim.device import Device
from noisysim.network import Network
from noisysim.noise import make_noise

# Every noise model and a stochastic activation, through several stacked measure calls.
SCRIPT = textwrap.dedent(
    """
    import hashlib, numpy as np
    from noisysim.device import Device
    from noisysim.network import Network
    from noisysim.noise import make_noise
    h = hashlib.sha256()
    # 300 x 1024 units per pass: above PARALLEL_MIN_SIZE, so the parallel kernels run
    x = np.linspace(-1, 1, 300 * 9).reshape(300, 9)
    y = np.arange(300) % 3
    for model, params in [("gaussian", {"sigma": 0.1}), ("telegraph", {"p_flip": 0.2, "amplitude": 0.1}),
                          ("smtj", {}), ("ou", {"tau": 3.0, "sigma": 0.1}), ("pink", {"sigma": 0.1}),
                          ("bernoulli", {"p": 0.3, "amplitude": 0.1}), ("multiplicative", {"sigma": 0.1})]:
        for act in ("leaky_relu", "binary_stochastic"):
            net = Network([9, 1024, 17, 3], activation=act, seed=5, decorrelation=True)
            dev = Device(net, noise=make_noise(model, **params), seed=7)
            for perturb in ("nodes", "each_layer", "weights"):
                m = dev.measure(x, y, perturb=perturb, sigma=0.01, samples=2, clean_pass=False)
                for arr in m.pre + (m.losses, m.outputs):
                    h.update(np.ascontiguousarray(arr).tobytes())
    print(h.hexdigest())
    """
)


def _digest(threads: int) -> str:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         check=True, timeout=600)
    return out.stdout.strip().splitlines()[-1]


def test_same_seed_same_bytes_with_one_and_two_threads():
    one, two = _digest(1), _digest(2)
    assert len(one) == 64
    assert one == two


def test_same_seed_same_trajectory_and_different_seed_differs():
    x = np.linspace(-1, 1, 40).reshape(8, 5)
    y = np.arange(8) % 2

    def run(seed):
        dev = Device(Network([5, 6, 2], seed=1), noise=make_noise("telegraph", p_flip=0.3, amplitude=0.2),
                     seed=seed)
        return hashlib.sha256(b"".join(dev.measure(x, y, perturb="nodes", sigma=0.1).losses.tobytes()
                                       for _ in range(3))).hexdigest()

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_serial_and_parallel_kernels_give_identical_bytes(monkeypatch):
    """Small arrays take the serial twins, large ones the parallel kernels: same values."""
    import noisysim.kernels.cpu as cpu
    import noisysim.kernels.noise as noise_kernels
    import noisysim.kernels.rng as rng

    x = np.linspace(-1, 1, 40 * 6).reshape(40, 6)
    y = np.arange(40) % 3

    def run(threshold):
        for module in (cpu, noise_kernels, rng):
            monkeypatch.setattr(module, "PARALLEL_MIN_SIZE", threshold)
        h = hashlib.sha256()
        for model, params in [("gaussian", {"sigma": 0.1}), ("smtj", {}),
                              ("ou", {"tau": 2.0, "sigma": 0.1}), ("bernoulli", {"p": 0.3, "amplitude": 0.1})]:
            net = Network([6, 50, 3], activation="binary_stochastic", seed=2)
            dev = Device(net, noise=make_noise(model, **params), seed=3)
            for perturb in ("nodes", "each_layer"):
                m = dev.measure(x, y, perturb=perturb, sigma=0.05, samples=2, clean_pass=False)
                for arr in m.pre + (m.losses, m.outputs) + m.injected:
                    h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    assert run(0) == run(1 << 62)
