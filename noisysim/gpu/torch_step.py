"""A PyTorch CUDA reference for the timing of one training step (bp, np, anp and their
decorrelated variants), written the way a PyTorch user would write it.

Same work as noisysim's step on the same shapes: He-normal MLP with leaky-ReLU hidden
units, softmax cross-entropy, Adam (lr 1e-4); for perturbation rules a clean pass and one
perturbed pass (layer 0's product computed once, Gaussian intrinsic noise sigma 0.01 and an
injected N(0, 1e-6) perturbation in every layer of the perturbed pass), the rule's
estimate from per-sample loss and activity changes, and for decorrelated rules the inputs
x* = x R^T and the update R <- R - lr_R (X*^T X* R / B - D R) (kappa = 0). Draws come from
torch.randn (the numbers are for timing only, not bit-compatible with noisysim). Full FP32
(TF32 off), eager mode, torch.optim.Adam with its default (foreach) implementation.

    python -m noisysim.gpu.torch_step --rule anp      # one JSON line
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def bench_torch(rule="danp", layers="3072,1024,1024,1024,10", batch=1000, steps=5,
                dtype="float32", warmup=2, device="cuda") -> dict:
    import torch
    import torch.nn.functional as F

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    dt = getattr(torch, dtype)
    family = rule[1:] if rule in ("dbp", "dnp", "danp") else rule
    if family not in ("bp", "np", "anp"):
        raise ValueError(f"torch reference covers bp, np, anp (+ d variants), not {rule!r}")
    decorrelated = rule.startswith("d") and rule != family
    widths = [int(w) for w in str(layers).split(",")]
    L = len(widths) - 1
    gen = torch.Generator(device=dev).manual_seed(0)
    Ws = [(torch.randn(widths[l + 1], widths[l], generator=gen, device=dev, dtype=dt)
           * (2.0 / widths[l]) ** 0.5).requires_grad_() for l in range(L)]
    bs = [torch.zeros(widths[l + 1], device=dev, dtype=dt, requires_grad=True)
          for l in range(L)]
    Rs = [torch.eye(widths[l], device=dev, dtype=dt) for l in range(L)] if decorrelated else None
    opt = torch.optim.Adam(Ws + bs, lr=1e-4)
    x = torch.rand(batch, widths[0], generator=gen, device=dev, dtype=dt)
    y = torch.randint(0, widths[-1], (batch,), generator=gen, device=dev)
    sigma, noise_sigma, lr_r = 1e-3, 0.01, 1e-7
    n_nodes = sum(widths[1:])

    def decorrelate(inputs):
        with torch.no_grad():
            for l in range(L):
                xs = inputs[l]
                second = (xs * xs).mean(dim=0)
                delta = xs.T @ (xs @ Rs[l]) / batch - second[:, None] * Rs[l]
                Rs[l] -= lr_r * delta

    def step_bp():
        h, inputs = x, []
        for l in range(L):
            if Rs is not None:
                h = h @ Rs[l].T
            inputs.append(h.detach())
            a = h @ Ws[l].T + bs[l]
            h = F.leaky_relu(a, 0.01) if l < L - 1 else a
        loss = F.cross_entropy(h, y)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        if Rs is not None:
            decorrelate(inputs)

    @torch.no_grad()
    def step_node():
        h = x
        inputs, da, eps_all = [], [], []
        for l in range(L):
            if Rs is not None:
                h = h @ Rs[l].T
            inputs.append(h[0] if h.dim() == 3 else h)
            if h.dim() == 2:  # layer 0: one product, shared by both passes
                a0 = h @ Ws[l].T + bs[l]
                a = torch.stack([a0, a0])
            else:
                a = h @ Ws[l].T + bs[l]
            eps = sigma * torch.randn(a.shape[1:], device=dev, dtype=dt)
            a[1] += eps
            a[1] += noise_sigma * torch.randn(a.shape[1:], device=dev, dtype=dt)
            da.append(a[1] - a[0])
            eps_all.append(eps)
            h = F.leaky_relu(a, 0.01) if l < L - 1 else a
        losses = F.cross_entropy(h.reshape(2 * batch, -1), y.repeat(2),
                                 reduction="none").reshape(2, batch)
        dell = losses[1] - losses[0]
        if family == "np":
            scale = dell / sigma ** 2
            vecs = eps_all
        else:
            sq = sum((d.double() ** 2).sum(dim=1) for d in da)
            scale = torch.where(sq > 0, dell.double() * n_nodes / sq, 0.0).to(dt)
            vecs = da
        for l in range(L):
            c = scale[:, None] * vecs[l]
            Ws[l].grad = c.T @ inputs[l] / batch
            bs[l].grad = c.mean(dim=0)
        opt.step()
        if Rs is not None:
            decorrelate(inputs)

    step = step_bp if family == "bp" else step_node
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    t_step = statistics.median(times)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"impl": "torch", "torch": torch.__version__, "gpu": name,
            "rule": rule, "layers": widths, "batch": batch, "dtype": dtype,
            "step_s": round(t_step, 6), "samples_per_s": round(batch / t_step, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m noisysim.gpu.torch_step", description=__doc__)
    p.add_argument("--rule", default="danp")
    p.add_argument("--layers", default="3072,1024,1024,1024,10")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cuda", help="torch device (cpu for a smoke run)")
    args = p.parse_args(argv)
    print(json.dumps(bench_torch(args.rule, args.layers, args.batch, args.steps, args.dtype,
                                 device=args.device)), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
