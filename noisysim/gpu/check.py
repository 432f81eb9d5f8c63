"""The table of ``experiments/gpu_check.sh``: noisysim's cuda step against a PyTorch step.

    python -m noisysim.gpu.check [--steps 10] [--rows small|all] [--json]

For every row (network, batch, rule) it times, in one process on the same GPU:

- noisysim's training step on the cuda backend (``noisysim.bench.random_data_trainer``:
  Gaussian intrinsic noise sigma 0.01, Adam lr 1e-4, FP32), median of ``--steps`` steps
  after two warm-up steps, each ending with a device synchronisation;
- the PyTorch step of ``noisysim.gpu.torch_step`` doing the same work (TF32 off);
- with ``torch.profiler`` (CUPTI sees numba's, CuPy's and cuBLAS's kernels alike):
  noisysim's GPU-busy fraction (kernel time / wall time of a step) and its kernel
  launches per step.

- noisysim's step replayed as a CUDA graph (``backend.graphs``, ``noisysim.gpu.graph``):
  the median of ``--steps`` quiet steps of an epoch, after its warm-up and capture steps.

ratio = PyTorch step time / noisysim step time (> 1: noisysim is faster); "graph ratio" the
same for the graph's step.
"""

from __future__ import annotations

import argparse
import json
import sys

ROWS = [
    ("3072,1024,1024,1024,10", 1000, "bp"),
    ("3072,1024,1024,1024,10", 1000, "anp"),
    ("3072,1024,1024,1024,10", 1000, "danp"),
    ("784,500,500,500,10", 64, "anp"),
    ("784,500,500,500,10", 64, "danp"),
    ("3072,4096,4096,4096,10", 4096, "anp"),
    ("3072,4096,4096,4096,10", 4096, "danp"),
]


def _profile(step, n: int) -> tuple[float, float]:
    """(GPU kernel seconds per step, kernel launches per step) over n steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    busy_us, count = 0.0, 0
    for evt in prof.events():
        if str(getattr(evt, "device_type", "")).endswith("CUDA"):
            busy_us += float(getattr(evt, "device_time", 0.0)
                             or getattr(evt, "cuda_time", 0.0) or 0.0)
            count += 1
    return busy_us * 1e-6 / n, count / n


def graph_step_time(layers: str, batch: int, rule: str, steps: int) -> float:
    """Median seconds of a quiet step replayed as a CUDA graph (module docstring)."""
    import statistics
    import time

    from ..bench import random_data_trainer

    trainer, _ = random_data_trainer(rule, layers, batch, "gaussian", "float32", "cuda",
                                     batches=steps + 4, graphs=True)
    graph, K = trainer._graph, trainer.kernels
    times = []
    with graph.on_stream():
        for k in range(steps + 3):  # the epoch's last step (it logs) is left out
            start = time.perf_counter()
            if trainer._train_rows(k * batch, (k + 1) * batch):
                raise RuntimeError("the graph benchmark's step diverged")
            K.synchronize()
            times.append(time.perf_counter() - start)
    if not graph.enabled or graph.replays < steps:
        raise RuntimeError(f"the step was not replayed ({graph.replays} replays)")
    return statistics.median(times[3:])  # after warm-up, capture and the first replay


def check_row(layers: str, batch: int, rule: str, steps: int) -> dict:
    from ..bench import median_time, random_data_trainer, timed_step
    from .torch_step import bench_torch

    trainer, widths = random_data_trainer(rule, layers, batch, "gaussian", "float32", "cuda")
    step = timed_step(trainer)
    t_ns = median_time(step, steps)
    busy, launches = _profile(step, steps)
    t_torch = bench_torch(rule, layers, batch, steps)["step_s"]
    try:
        t_graph = graph_step_time(layers, batch, rule, steps)
    except Exception as exc:  # the plain columns still stand
        print(f"graph {layers} {batch} {rule}: {type(exc).__name__}: {str(exc)[:200]}",
              file=sys.stderr, flush=True)
        t_graph = float("nan")
    return {"layers": layers, "batch": batch, "rule": rule,
            "noisysim_ms": round(1e3 * t_ns, 3), "torch_ms": round(1e3 * t_torch, 3),
            "ratio": round(t_torch / t_ns, 3), "gpu_busy": round(busy / t_ns, 3),
            "launches_per_step": round(launches, 1), "graph_ms": round(1e3 * t_graph, 3),
            "graph_ratio": round(t_torch / t_graph, 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m noisysim.gpu.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rows", choices=("small", "all"), default="all",
                   help="small: the B = 64 and B = 1000 rows only")
    p.add_argument("--json", action="store_true", help="one JSON line per row")
    args = p.parse_args(argv)
    from ..backends import resolve_backend, simulated
    from ..errors import NoisysimError

    try:
        resolve_backend("cuda")
        if simulated():
            raise NoisysimError("the GPU check times a real GPU, and numba's CUDA simulator "
                                "is on (NUMBA_ENABLE_CUDASIM=1); unset it on a GPU machine")
    except NoisysimError as err:
        print(f"noisysim: error: {err}", file=sys.stderr)
        return 2
    rows = [r for r in ROWS if args.rows == "all" or r[1] <= 1000]
    header = ("| network | batch | rule | noisysim (ms) | PyTorch (ms) | ratio | GPU busy "
              "| launches/step | graph (ms) | graph ratio |")
    if not args.json:
        print(header)
        print("|---|---|---|---|---|---|---|---|---|---|")
    failed = 0
    for layers, batch, rule in rows:
        try:
            row = check_row(layers, batch, rule, args.steps)
        except Exception as exc:  # one row failing must not hide the others
            failed += 1
            print(f"| {layers} | {batch} | {rule} | failed: {type(exc).__name__}: "
                  f"{str(exc)[:120]} |||||||", flush=True)
            continue
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"| {layers} | {batch} | {rule} | {row['noisysim_ms']} | {row['torch_ms']} "
                  f"| {row['ratio']} | {row['gpu_busy']:.0%} | {row['launches_per_step']} "
                  f"| {row['graph_ms']} | {row['graph_ratio']} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover - needs a GPU
    sys.exit(main())
