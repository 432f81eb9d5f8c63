"""``noisysim bench --backend cuda``: time full training steps on the GPU.

The same setup as ``noisysim.bench.bench`` (random data, He-normal network, Gaussian
intrinsic noise sigma 0.01, Adam lr 1e-4, decorrelation lr 1e-7 for decorrelated rules),
with the step run by ``CudaSession`` on data already on the GPU. Each timed step ends with a
device synchronisation; warm-up steps (kernel compilation, cuBLAS handles, memory pools) are
excluded and the median is reported. ``gemm_gflop_per_s`` times cuBLAS (CuPy matmul, full
FP32, no TF32) on exactly the products of the step (``noisysim.bench.step_products``).

    python -m noisysim.gpu.bench --rule danp [--torch]    # JSON lines
"""

from __future__ import annotations

import argparse
import json
import resource
import sys

import numpy as np

from ..errors import NoisysimError, check_number


def bench_cuda(rule="danp", layers="3072,1024,1024,1024,10", batch=1000, steps=5,
               noise="gaussian", dtype="float32", verbose=False) -> dict:
    """One JSON-able row like ``noisysim.bench.bench`` with backend "cuda"."""
    from ..bench import median_time, random_data_trainer, step_products
    from .arrays import synchronize, xp
    from .engine import CudaSession
    from ..backends import cuda_status

    steps = int(check_number("steps", steps, 1, None, integer=True))
    trainer, x, y, widths = random_data_trainer(rule, layers, batch, noise, dtype)
    r, batch = trainer.rule, x.shape[0]
    gen = np.random.default_rng(1)
    session = CudaSession(trainer)
    order = np.arange(batch, dtype=np.int64)

    def one_step():
        failure = session.train_rows(order, 0, batch)
        if failure:
            raise NoisysimError(f"benchmark step diverged: {failure}")
        synchronize()

    if verbose:
        print(f"timing {rule} on {widths}, batch {batch} (cuda): warm-up, then {steps} steps",
              file=sys.stderr, flush=True)
    t_step = median_time(one_step, steps)
    prods = step_products(r, widths, batch)
    mats = [(xp.asarray(gen.random((m, k), dtype=np.float32).astype(dtype)),
             xp.asarray(gen.random((k, n), dtype=np.float32).astype(dtype)))
            for m, k, n in prods]

    def gemms():
        for a, b in mats:
            xp.matmul(a, b)
        synchronize()

    t_gemm = median_time(gemms, steps)
    flop = float(sum(2.0 * m * k * n for m, k, n in prods))
    return {
        "rule": rule, "layers": widths, "batch": batch, "backend": "cuda", "dtype": dtype,
        "noise": noise, "gpu": cuda_status()[1],
        "step_s": round(t_step, 6),
        "samples_per_s": round(batch / t_step, 1),
        "gflop_per_s": round(flop / t_step / 1e9, 2),
        "gemm_gflop_per_s": round(flop / t_gemm / 1e9, 2),
        "ratio_to_gemm": round(t_gemm / t_step, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m noisysim.gpu.bench", description=__doc__)
    p.add_argument("--rule", default="danp")
    p.add_argument("--layers", default="3072,1024,1024,1024,10")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--noise", default="gaussian")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--torch", action="store_true", help="also time the PyTorch reference step")
    args = p.parse_args(argv)
    from ..backends import resolve_backend

    try:
        resolve_backend("cuda")
        row = bench_cuda(args.rule, args.layers, args.batch, args.steps, args.noise, args.dtype,
                         verbose=True)
    except NoisysimError as err:
        print(f"noisysim: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(row), flush=True)
    if args.torch:
        from .torch_step import bench_torch

        print(json.dumps(bench_torch(args.rule, args.layers, args.batch, args.steps,
                                     args.dtype)), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
