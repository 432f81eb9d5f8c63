"""Stacked forward throughput of the simulator, as a ratio to numpy's matmul.

    python experiments/bench_forward.py [--layers 3072,1024,1024,1024,10] [--batch 1000]
                                        [--passes 2] [--noise gaussian] [--repeats 7]

Times ``Device.measure`` (P passes of B samples: a clean reference pass and P-1 passes with
intrinsic noise and an injected N(0, sigma^2) node perturbation) against the bare matrix
products numpy needs for the same shapes, (P*B, N_{l-1}) @ (N_{l-1}, N_l) for every layer,
measured in the same process. ratio = numpy time / simulator time (>= 1: the simulator's
elementwise work, noise draws and losses cost less than the products it saves by computing
layer 0 once for all passes). Medians over repeats after a warm-up that compiles.
Not a test: prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from noisysim.bench import median_time
from noisysim.device import Device
from noisysim.network import Network
from noisysim.noise import make_noise

NOISE_DEFAULTS = {"none": {}, "gaussian": {"sigma": 0.01}, "telegraph": {"p_flip": 0.1, "amplitude": 0.01},
                  "smtj": {}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="3072,1024,1024,1024,10")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--noise", default="gaussian", choices=sorted(NOISE_DEFAULTS))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--fresh-buffers", action="store_true",
                    help="allocate new arrays every call (Device default) instead of reusing "
                         "them as the training engine does")
    args = ap.parse_args(argv)
    widths = [int(w) for w in args.layers.split(",")]
    B, P = args.batch, args.passes

    net = Network(widths, activation="leaky_relu", dtype=args.dtype, seed=0)
    device = Device(net, noise=make_noise(args.noise, **NOISE_DEFAULTS[args.noise]), seed=0,
                    reuse_buffers=not args.fresh_buffers)  # the engine reuses them
    gen = np.random.default_rng(0)
    x = gen.random((B, widths[0]), dtype=np.float32).astype(args.dtype)
    y = gen.integers(0, widths[-1], B)

    def ours():
        device.measure(x, y, perturb="nodes", sigma=1e-3, samples=P - 1)

    rows = [gen.random((P * B, w), dtype=np.float32).astype(args.dtype) for w in widths[:-1]]
    weights = [p.W for p in net.layers]

    def numpy_matmul():
        for h, W in zip(rows, weights):
            h @ W.T

    t_ours = median_time(ours, args.repeats)
    t_np = median_time(numpy_matmul, args.repeats)
    flop = sum(2.0 * P * B * a * b for a, b in zip(widths[:-1], widths[1:]))
    print(json.dumps({
        "layers": widths, "batch": B, "passes": P, "noise": args.noise, "dtype": args.dtype,
        "simulator_s": round(t_ours, 5), "numpy_matmul_s": round(t_np, 5),
        "gemm_equivalent_gflop_per_s": round(flop / t_ours / 1e9, 2),
        "ratio_to_numpy_matmul": round(t_np / t_ours, 3),
    }))


if __name__ == "__main__":
    main()
