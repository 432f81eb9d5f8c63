"""The table of ``experiments/gpu_check.sh``: noisysim's cuda step against a PyTorch step.

    python -m noisysim.gpu.check [--steps 10] [--rows small|all] [--json]
    python -m noisysim.gpu.check --crossover [--steps 3]

For every row (network, batch, rule) it times, in one process on the same GPU:

- noisysim's training step on the cuda backend (``noisysim.bench.random_data_trainer``:
  Gaussian intrinsic noise sigma 0.01, Adam lr 1e-4, FP32), median of ``--steps`` steps
  after two warm-up steps, each ending with a device synchronisation;
- the PyTorch step of ``noisysim.gpu.torch_step`` doing the same work (TF32 off);
- with ``torch.profiler`` (CUPTI sees numba's, CuPy's and cuBLAS's kernels alike):
  noisysim's GPU-busy fraction (kernel time / wall time of a step) and its kernel
  launches per step.

- noisysim's step replayed as a CUDA graph (``backend.graphs``, ``noisysim.gpu.graph``):
  the median of ``--steps`` quiet steps of an epoch, after its warm-up and capture steps,
  and its GPU-busy fraction over ``--steps`` more.

ratio = PyTorch step time / noisysim step time (> 1: noisysim is faster); "graph ratio" the
same for the graph's step.

``--crossover`` measures what ``backend = "auto"`` needs instead: noisysim's step on cpu and
on cuda, in one process, for the ANP networks of ``LADDER`` (from 0.016 to 16 GFLOP of
matrix products per step), and the step size from which cuda is faster at every larger
point (``crossover``), to compare with ``noisysim.backends.AUTO_CUDA_MIN_GFLOP``.
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

#: (layers, batch) of the crossover ladder, rule anp (``--crossover``).
LADDER = [(f"784,{h},{h},{h},10", batch) for batch in (64, 1000)
          for h in (64, 128, 256, 512, 1024)]


def crossover(points) -> float:
    """The smallest step size (GFLOP) from which cuda is faster at every larger point, for
    ``points`` of (gflop, cpu seconds, cuda seconds); inf when cuda is slower at the
    largest."""
    best = float("inf")
    for gflop, t_cpu, t_cuda in sorted(points, reverse=True):
        if t_cuda >= t_cpu:
            break
        best = gflop
    return best


def crossover_rows(steps: int) -> list[dict]:
    """cpu and cuda step times of noisysim's ANP step for every ``LADDER`` point."""
    from ..bench import median_time, random_data_trainer, step_products, timed_step

    rows = []
    for layers, batch in LADDER:
        times = {}
        for backend in ("cpu", "cuda"):
            trainer, widths = random_data_trainer("anp", layers, batch, "gaussian", "float32",
                                                  backend)
            times[backend] = median_time(timed_step(trainer), steps, warmup=1)
        gflop = sum(2.0 * m * k * n for m, k, n in step_products(
            trainer.rule, widths, batch, trainer.device.random_layers())) / 1e9
        rows.append({"layers": layers, "batch": batch, "gflop": gflop,
                     "cpu_ms": round(1e3 * times["cpu"], 3),
                     "cuda_ms": round(1e3 * times["cuda"], 3)})
    return rows


def print_crossover(steps: int) -> None:
    from ..backends import AUTO_CUDA_MIN_GFLOP

    print("| network | batch | GFLOP/step | cpu (ms) | cuda (ms) | faster |")
    print("|---|---|---|---|---|---|")
    rows = crossover_rows(steps)
    for r in rows:
        faster = "cuda" if r["cuda_ms"] < r["cpu_ms"] else "cpu"
        print(f"| {r['layers']} | {r['batch']} | {r['gflop']:.3g} | {r['cpu_ms']} "
              f"| {r['cuda_ms']} | {faster} |", flush=True)
    at = crossover([(r["gflop"], r["cpu_ms"], r["cuda_ms"]) for r in rows])
    print(f"crossover (anp, median of {steps} steps): cuda is faster at every step of "
          f"{at:g} GFLOP and more; noisysim.backends.AUTO_CUDA_MIN_GFLOP is "
          f"{AUTO_CUDA_MIN_GFLOP:g}")


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


def graph_step_time(layers: str, batch: int, rule: str, steps: int) -> tuple[float, float]:
    """(median seconds, GPU kernel seconds) of a quiet step replayed as a CUDA graph (module
    docstring): the median over ``steps`` replays, the kernel time over ``steps`` more."""
    import statistics
    import time

    from ..bench import random_data_trainer

    trainer, _ = random_data_trainer(rule, layers, batch, "gaussian", "float32", "cuda",
                                     batches=2 * steps + 4, graphs=True)
    graph, K = trainer._graph, trainer.kernels
    ks = iter(range(2 * steps + 3))  # the epoch's last step (it logs) is left out

    def step():
        k = next(ks)
        if trainer._train_rows(k * batch, (k + 1) * batch):
            raise RuntimeError("the graph benchmark's step diverged")
    times = []
    with graph.on_stream():
        for _ in range(steps + 3):
            start = time.perf_counter()
            step()
            K.synchronize()
            times.append(time.perf_counter() - start)
        busy, _ = _profile(step, steps)
    if not graph.enabled or graph.replays < 2 * steps:
        raise RuntimeError(f"the step was not replayed ({graph.replays} replays)")
    return statistics.median(times[3:]), busy  # after warm-up, capture and the first replay


def check_row(layers: str, batch: int, rule: str, steps: int) -> dict:
    from ..bench import median_time, random_data_trainer, timed_step
    from .torch_step import bench_torch

    trainer, widths = random_data_trainer(rule, layers, batch, "gaussian", "float32", "cuda")
    step = timed_step(trainer)
    t_ns = median_time(step, steps)
    busy, launches = _profile(step, steps)
    t_torch = bench_torch(rule, layers, batch, steps)["step_s"]
    try:
        t_graph, busy_graph = graph_step_time(layers, batch, rule, steps)
    except Exception as exc:  # the plain columns still stand
        print(f"graph {layers} {batch} {rule}: {type(exc).__name__}: {str(exc)[:200]}",
              file=sys.stderr, flush=True)
        t_graph = busy_graph = float("nan")
    return {"layers": layers, "batch": batch, "rule": rule,
            "noisysim_ms": round(1e3 * t_ns, 3), "torch_ms": round(1e3 * t_torch, 3),
            "ratio": round(t_torch / t_ns, 3), "gpu_busy": round(busy / t_ns, 3),
            "launches_per_step": round(launches, 1), "graph_ms": round(1e3 * t_graph, 3),
            "graph_ratio": round(t_torch / t_graph, 3),
            "graph_gpu_busy": round(busy_graph / t_graph, 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m noisysim.gpu.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rows", choices=("small", "all"), default="all",
                   help="small: the B = 64 and B = 1000 rows only")
    p.add_argument("--json", action="store_true", help="one JSON line per row")
    p.add_argument("--crossover", action="store_true",
                   help="cpu against cuda step times for auto's crossover (LADDER), instead")
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
    if args.crossover:
        print_crossover(args.steps)
        return 0
    rows = [r for r in ROWS if args.rows == "all" or r[1] <= 1000]
    header = ("| network | batch | rule | noisysim (ms) | PyTorch (ms) | ratio | GPU busy "
              "| launches/step | graph (ms) | graph ratio | graph GPU busy |")
    if not args.json:
        print(header)
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    failed = 0
    for layers, batch, rule in rows:
        try:
            row = check_row(layers, batch, rule, args.steps)
        except Exception as exc:  # one row failing must not hide the others
            failed += 1
            print(f"| {layers} | {batch} | {rule} | failed: {type(exc).__name__}: "
                  f"{str(exc)[:120]} ||||||||", flush=True)
            continue
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"| {layers} | {batch} | {rule} | {row['noisysim_ms']} | {row['torch_ms']} "
                  f"| {row['ratio']} | {row['gpu_busy']:.0%} | {row['launches_per_step']} "
                  f"| {row['graph_ms']} | {row['graph_ratio']} | {row['graph_gpu_busy']:.0%} |",
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover - needs a GPU
    sys.exit(main())
