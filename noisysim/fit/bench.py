"""Benchmark: fitting a long telegraph / sMTJ trace (``python -m noisysim.fit.bench``).

Simulates an sMTJ trace with the MTJ study's parameters (``--samples``, default 1e6) and
a three-level telegraph with read-out noise, compiles the kernels on a short trace first
(not timed), then times one fit of each. Prints one JSON line per model: seconds for the
fit, seconds for one evaluation of its likelihood (the forward algorithm over the whole
trace; median of 5), and their ratio (how many likelihood evaluations the fit costs). Target: a 1e6
sample fit under 30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ..noise import SMTJNoise
from .core import fit_trace, simulate
from .models import make_family


def bench(samples: int = 1_000_000, seed: int = 0) -> list[dict]:
    cases = [("smtj", 2, SMTJNoise()),
             ("telegraph", 3, SMTJNoise(p_flip=0.05, mean=0.02, sigma=0.002,
                                        amplitude=0.006, n_sources=2))]
    out = []
    for model, levels, noise in cases:
        fit_trace(simulate(noise, 5_000, seed=seed), model, levels=levels)  # compile
        y = simulate(noise, samples, seed=seed)
        t0 = time.perf_counter()
        res = fit_trace(y, model, levels=levels)
        fit_s = time.perf_counter() - t0
        fam = make_family(model, levels)
        theta = np.array(list(res.params_per_sample.values()))
        times = []
        for _ in range(5):  # the median of 5: one timing on a shared machine is noisy
            t0 = time.perf_counter()
            fam.loglik(theta, y)
            times.append(time.perf_counter() - t0)
        ll_s = float(np.median(times))
        out.append({"model": res.model, "samples": samples, "fit_s": round(fit_s, 3),
                    "loglik_s": round(ll_s, 4), "fit_over_loglik": round(fit_s / ll_s, 1),
                    "params": {k: float(f"{v:.6g}") for k, v in res.params.items()}})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m noisysim.fit.bench", description=__doc__)
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for row in bench(args.samples, args.seed):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
