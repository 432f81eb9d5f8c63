"""One training step of noisysim against the same step written plainly in PyTorch (CPU).

    python experiments/bench_vs_torch.py [--layers 3072,1024,1024,1024,10]
                                         [--rules bp,np,anp,inp,danp] [--batches 1000,64]
                                         [--repeats 5] [--rounds 2] [--threads N]
                                         [--torch-adam default|foreach|fused] [--check]
    python experiments/bench_vs_torch.py --conv [--rules bp,np,anp] [--batches 100]

The network is the paper's CIFAR-10 MLP: leaky ReLU (slope 0.01, the MTJ study's; the DANP
authors' TF code uses 0.2 at the same cost) hidden units, identity
output, softmax cross-entropy, float32, Adam (lr 1e-4, betas 0.9/0.999, eps 1e-8). Perturbed
passes carry intrinsic Gaussian node noise (sigma 0.01, all layers' pre-activations:
noisysim's default benchmark noise) plus, for np/inp/anp, an injected node perturbation
N(0, 1e-3^2). The reference pass is clean. Decorrelated rules (danp) put a matrix R before
every layer (x* = x R^T) and after the Adam step update it with
R <- R - lr_R offdiag(mean x* x*^T) R, lr_R = 1e-7, computed as X*^T (X* R) / B minus the
diagonal part (O(B d^2)); see noisysim/rules/ for the estimators.

noisysim's step is ``noisysim.bench.bench`` (``Trainer._train_rows``: device passes, the
rule's estimate, Adam, R update, the engine's finiteness checks). The PyTorch step is what a
competent PyTorch user writes: bp with autograd (``loss.backward()`` + ``torch.optim.Adam``);
perturbation rules under ``torch.no_grad()`` with the passes stacked (layer 0 computed once,
its input being the same in every pass; inp's passes recompute every layer with fresh
noise, as noisysim's do), the estimates as batched matmuls ``(scale[:, None] * da).T @ x_star / B``
written into ``p.grad`` and applied by ``torch.optim.Adam``. Both use the same number of
threads (``torch.set_num_threads``; numba and the BLAS use all cores by default).

Timing: each framework runs in its own worker process, started once, and the parent asks
them in turn; warm-up steps are excluded and each answer is the median of ``repeats`` steps
(``repeats`` at B >= 256, 4 x ``repeats`` below). ``rounds`` rounds alternate which framework
goes first, and the reported time is the median of the round medians, so both see the same
machine load. Why not one process: numba and PyTorch would share one OpenMP runtime (both
load ``libgomp.so.1``), whose wait policy is read once, when it loads. noisysim asks for
sleeping idle workers (its matrix products run on BLAS's own threads, see
``noisysim.kernels``); PyTorch, with all its work in that one pool, is faster with the
default spinning. Sharing, one of the two would run with the other's setting (2 cores:
PyTorch's bp step at B = 64 took 1.1-1.2x longer with ``OMP_WAIT_POLICY=PASSIVE`` set for
this script, two runs; noisysim's steps take 1.3-1.6x longer with spinning, see the
README's design notes), so each framework keeps its own defaults in its own process.
speedup = torch_step_s / noisysim_step_s (> 1: noisysim is faster). floor_s is a lower
bound on any step built from the same matrix products and Adam (numpy's time for exactly
those products plus Adam's minimal memory traffic, measured in the noisysim worker), and
bound = torch_step_s / floor_s the largest speedup such a step could reach. On a machine busy with
other jobs, thread pools that spin-wait suffer more than the work they do: compare with one
thread each as well, e.g. ``NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
python experiments/bench_vs_torch.py --threads 1``, and report the load average (printed).

``--conv``: the same comparison on a convnet (models/fashion_convnet.toml without its dense 128 layer: 28x28x1 -> conv
16 5x5 -> max 2 -> conv 32 5x5 -> max 2 -> dense 10, no padding) for bp, np and anp.
PyTorch's step (``TorchConvStep``) runs ``torch.nn.functional.conv2d`` / ``max_pool2d`` in
its native NCHW layout; bp with autograd, np / anp under ``torch.no_grad()`` with the two
passes stacked along the batch (the first conv computed once) and each conv weight estimate
as ``torch.nn.grad.conv2d_weight(x_ref, W.shape, c) / B`` (the conv weight-gradient
product), biases ``c.sum((0, 2, 3)) / B``.

``--check``: the PyTorch bp gradient of one batch equals noisysim's exact gradient on the
same weights (copied from a noisysim Network) to float32 tolerance; the R update equals
noisysim's Decorrelator; and the PyTorch perturbation estimates point along the exact
gradient (cosine of the mean of many estimates, on a small network).

Without PyTorch it prints "skipped: ..." and exits 0. Not a test.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import multiprocessing
import os
import statistics
import sys

import numpy as np

try:  # run from a checkout without installing noisysim
    import noisysim  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from noisysim.bench import median_time  # noqa: E402

SKIP = "skipped: PyTorch is not installed (pip install 'noisysim[bench]')"
RULES = ("bp", "np", "inp", "anp", "dbp", "dnp", "dinp", "danp")
NOISE_SIGMA = 0.01      # intrinsic Gaussian node noise (noisysim.bench's default)
SIGMA = 1e-3            # injected node perturbation (the rules' default)
LR = 1e-4
LR_R = 1e-7
SLOPE = 0.01


class TorchStep:
    """The same network, rule and optimiser as one noisysim benchmark step, in PyTorch.

    ``weights``: optional list of (W, b) numpy arrays to start from (else He-normal).
    """

    def __init__(self, rule, widths, weights=None, seed=0, sigma=SIGMA,
                 noise_sigma=NOISE_SIGMA, lr=LR, lr_R=LR_R, adam="default"):
        import torch
        self.torch = torch
        self.decorrelated = rule.startswith("d")
        self.family = rule[1:] if self.decorrelated else rule
        if self.family not in ("bp", "np", "inp", "anp"):
            raise ValueError(f"unknown rule {rule!r}")
        self.widths = list(widths)
        self.L = len(widths) - 1
        self.n_nodes = sum(widths[1:])
        self.sigma, self.noise_sigma, self.lr_R = sigma, noise_sigma, lr_R
        gen = torch.Generator().manual_seed(seed)
        self.W, self.b = [], []
        for l, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            if weights is None:
                W = torch.randn(n_out, n_in, generator=gen) * math.sqrt(2.0 / n_in)
                b = torch.zeros(n_out)
            else:
                W = torch.tensor(weights[l][0], dtype=torch.float32)
                b = torch.tensor(weights[l][1], dtype=torch.float32)
            self.W.append(torch.nn.Parameter(W))
            self.b.append(torch.nn.Parameter(b))
        self.R = [torch.eye(n) for n in widths[:-1]] if self.decorrelated else None
        # adam: "default" (PyTorch's choice: the per-tensor loop on CPU), "foreach" or "fused"
        variant = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[adam]
        self.opt = torch.optim.Adam([*self.W, *self.b], lr=lr, **variant)

    # -- forward pieces ---------------------------------------------------------------
    def _act(self, l, a):
        F = self.torch.nn.functional
        return F.leaky_relu(a, SLOPE) if l < self.L - 1 else a

    def _losses(self, logits, y):
        """Per-sample cross-entropy of stacked passes (P, B, C) -> (P, B)."""
        P, B, C = logits.shape
        F = self.torch.nn.functional
        return F.cross_entropy(logits.reshape(P * B, C), y.repeat(P),
                               reduction="none").view(P, B)

    def _noise(self, *shape):
        return self.noise_sigma * self.torch.randn(*shape)

    # -- the rules' estimates ---------------------------------------------------------
    def estimate(self, x, y):
        """Perturbation rules: per layer (g_W, g_b) and the reference inputs x*."""
        if self.family == "inp":
            return self._estimate_inp(x, y)
        torch = self.torch
        B = x.shape[0]
        with torch.no_grad():
            xs, vec = [], []  # reference x*_{l-1}; eps (np) or da (anp) per layer
            h = x
            for l in range(self.L):
                if self.R is not None:
                    h = h @ self.R[l].T
                if l == 0:
                    xs.append(h)
                    a0 = torch.nn.functional.linear(h, self.W[0], self.b[0])
                    pert = self._noise(B, a0.shape[1])
                    eps = self.sigma * torch.randn(B, a0.shape[1])
                    a = torch.stack([a0, a0 + pert + eps])       # layer 0 computed once
                else:
                    xs.append(h[0])
                    a = torch.nn.functional.linear(h, self.W[l], self.b[l])  # (2, B, N)
                    eps = self.sigma * torch.randn(B, a.shape[2])
                    a[1] += self._noise(B, a.shape[2]) + eps
                vec.append(eps if self.family == "np" else a[1] - a[0])
                h = self._act(l, a)
            loss = self._losses(h, y)
            dell = loss[1] - loss[0]
            if self.family == "np":
                scale = dell / self.sigma ** 2
            else:
                sq = sum((d * d).sum(dim=1) for d in vec)
                scale = torch.where(sq > 0, dell * self.n_nodes / sq, torch.zeros_like(sq))
            grads = []
            for l in range(self.L):
                c = scale[:, None] * vec[l]
                grads.append((c.T @ xs[l] / B, c.mean(dim=0)))
        return grads, xs

    def _estimate_inp(self, x, y):
        torch = self.torch
        B = x.shape[0]
        with torch.no_grad():
            xs, das = [], []
            P = self.L + 1  # the reference, then pass l + 1 perturbs layer l only
            h = x[None]     # layer 0's input: the same in every pass, one product
            for l in range(self.L):
                if self.R is not None:
                    h = h @ self.R[l].T
                xs.append(h[0])
                a = torch.nn.functional.linear(h, self.W[l], self.b[l])
                if a.shape[0] == 1:  # layer 0: the one product, copied to every pass
                    a = a.expand(P, -1, -1).clone()
                # every pass is a new run through the noisy device: fresh noise in every
                # layer, also below the perturbed one (noisysim's pass layout)
                a[1:] += self._noise(P - 1, B, a.shape[2])
                a[l + 1] += self.sigma * torch.randn(B, a.shape[2])
                das.append(a[l + 1] - a[0])      # measured activity change
                h = self._act(l, a)
            loss = self._losses(h, y)            # (L + 1, B)
            grads = []
            for l in range(self.L):
                dell = loss[l + 1] - loss[0]
                sq = (das[l] * das[l]).sum(dim=1)
                scale = torch.where(sq > 0, dell * das[l].shape[1] / sq, torch.zeros_like(sq))
                c = scale[:, None] * das[l]
                grads.append((c.T @ xs[l] / B, c.mean(dim=0)))
        return grads, xs

    def bp_loss(self, x, y):
        """Mean loss of the clean pass, with autograd; also the (detached) inputs x*."""
        xs = []
        h = x
        for l in range(self.L):
            if self.R is not None:
                h = h @ self.R[l].T
            xs.append(h.detach())
            h = self._act(l, self.torch.nn.functional.linear(h, self.W[l], self.b[l]))
        return self.torch.nn.functional.cross_entropy(h, y), xs

    # -- one training step -------------------------------------------------------------
    def step(self, x, y):
        if self.family == "bp":
            self.opt.zero_grad(set_to_none=True)
            loss, xs = self.bp_loss(x, y)
            loss.backward()
            self.opt.step()
        else:
            grads, xs = self.estimate(x, y)
            for l, (gW, gb) in enumerate(grads):
                self.W[l].grad, self.b[l].grad = gW, gb
            self.opt.step()
        if self.R is not None:
            self.update_R(xs)

    def update_R(self, xs):
        """R <- R - lr_R offdiag(mean x* x*^T) R = R - lr_R (X*^T (X* R) / B - D R)."""
        with self.torch.no_grad():
            for R, x in zip(self.R, xs):
                M = x.T @ (x @ R)
                M.div_(x.shape[0]).addcmul_((x * x).mean(dim=0)[:, None], R, value=-1.0)
                R.sub_(M, alpha=self.lr_R)


CONV_LAYERS = ('[{conv = 16, kernel = 5}, {pool = "max", size = 2}, {conv = 32, kernel = 5}, '
               '{pool = "max", size = 2}, {dense = 10}]')
CONV_INPUT = (28, 28, 1)
CONV_RULES = ("bp", "np", "anp")


class TorchConvStep:
    """``CONV_LAYERS`` in PyTorch (NCHW): conv 16 5x5, max 2, conv 32 5x5, max 2, dense 10,
    leaky ReLU hidden units, with the rule, noise and Adam of ``TorchStep``."""

    def __init__(self, rule, seed=0, sigma=SIGMA, noise_sigma=NOISE_SIGMA, lr=LR,
                 adam="default"):
        import torch
        if rule not in CONV_RULES:
            raise ValueError(f"--conv times {', '.join(CONV_RULES)}, not {rule!r}")
        self.torch, self.rule = torch, rule
        self.sigma, self.noise_sigma = sigma, noise_sigma
        gen = torch.Generator().manual_seed(seed)
        shapes = [(16, 1, 5, 5), (32, 16, 5, 5), (10, 32 * 4 * 4)]
        self.W = [torch.nn.Parameter(torch.randn(*s, generator=gen)
                                     * math.sqrt(2.0 / math.prod(s[1:]))) for s in shapes]
        self.b = [torch.nn.Parameter(torch.zeros(s[0])) for s in shapes]
        self.n_nodes = 16 * 24 * 24 + 32 * 8 * 8 + 10
        variant = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[adam]
        self.opt = torch.optim.Adam([*self.W, *self.b], lr=lr, **variant)

    def _layer(self, l, h):
        """Layer l's input map and product: (pool) then conv, or flatten then dense."""
        F = self.torch.nn.functional
        if l == 0:
            return F.conv2d(h, self.W[0], self.b[0])
        h = F.max_pool2d(h, 2)
        if l == 1:
            return F.conv2d(h, self.W[1], self.b[1])
        return F.linear(h.flatten(1), self.W[2], self.b[2])

    def _input(self, l, h):
        """What layer l's weights multiply (its pooled input), for the estimates."""
        return h if l == 0 else self.torch.nn.functional.max_pool2d(h, 2)

    def step(self, x, y):
        torch, F = self.torch, self.torch.nn.functional
        x = x.view(-1, 1, 28, 28)
        if self.rule == "bp":
            self.opt.zero_grad(set_to_none=True)
            h = x
            for l in range(3):
                a = self._layer(l, h)
                h = F.leaky_relu(a, SLOPE) if l < 2 else a
            F.cross_entropy(h, y).backward()
            self.opt.step()
            return
        B = x.shape[0]
        with torch.no_grad():
            ins, vec, h = [], [], None
            for l in range(3):
                if l == 0:
                    ins.append(x)
                    a0 = self._layer(0, x)
                    a = torch.cat([a0, a0])                  # the first conv computed once
                else:
                    ins.append(self._input(l, h[:B]))
                    a = self._layer(l, h)
                eps = self.sigma * torch.randn(a[B:].shape)
                a[B:] += self.noise_sigma * torch.randn(a[B:].shape) + eps
                vec.append(eps if self.rule == "np" else a[B:] - a[:B])
                h = F.leaky_relu(a, SLOPE) if l < 2 else a
            loss = F.cross_entropy(h, y.repeat(2), reduction="none")
            dell = loss[B:] - loss[:B]
            if self.rule == "np":
                scale = dell / self.sigma ** 2
            else:
                sq = sum((v * v).flatten(1).sum(dim=1) for v in vec)
                scale = torch.where(sq > 0, dell * self.n_nodes / sq, torch.zeros_like(sq))
            for l in range(3):
                c = scale.view((B,) + (1,) * (vec[l].dim() - 1)) * vec[l]
                if l < 2:
                    self.W[l].grad = torch.nn.grad.conv2d_weight(ins[l], self.W[l].shape, c) / B
                    self.b[l].grad = c.sum(dim=(0, 2, 3)) / B
                else:
                    self.W[l].grad = c.T @ ins[l].flatten(1) / B
                    self.b[l].grad = c.mean(dim=0)
        self.opt.step()


# -- timing ------------------------------------------------------------------------------
def _batch_data(widths, batch):
    """The inputs and targets noisysim.bench uses (uniform [0, 1) inputs, random labels)."""
    gen = np.random.default_rng(0)
    x = gen.random((batch, widths[0]), dtype=np.float32)
    y = gen.integers(0, widths[-1], batch)
    return x, y


def time_torch(rule, layers, batch, repeats, adam="default"):
    import torch
    conv = layers == CONV_LAYERS
    widths = [math.prod(CONV_INPUT), 10] if conv else [int(w) for w in layers.split(",")]
    x, y = _batch_data(widths, batch)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    model = TorchConvStep(rule, adam=adam) if conv else TorchStep(rule, widths, adam=adam)
    return median_time(lambda: model.step(x, y), repeats)


def time_noisysim(rule, layers, batch, repeats):
    """(step_s, floor_s): noisysim's step, and a lower bound on any step that uses the same
    matrix products and Adam: numpy's time for exactly the step's products (as
    ``noisysim bench`` measures it) plus the time to stream Adam's minimal memory traffic
    (read p, g, m, v and write p, m, v once: 3.5 float32 copies of all W and b)."""
    from noisysim.bench import bench, parse_layers
    from noisysim.network import Network
    conv = layers == CONV_LAYERS
    shape = CONV_INPUT if conv else None
    out = bench(rule=rule, layers=layers, batch=batch, steps=repeats, input_shape=shape)
    gemm_s = out["ratio_to_gemm"] * out["step_s"]  # ratio_to_gemm = products' time / step's
    net = Network(parse_layers(layers), input_shape=shape)
    n_params = sum(p.W.size + p.b.size for p in net.layers)
    src = np.ones(n_params, dtype=np.float32)
    dst = np.empty_like(src)
    stream_s = 3.5 * median_time(lambda: np.copyto(dst, src), repeats)
    return out["step_s"], gemm_s + stream_s


def _worker(framework, threads, adam, conn):
    """A timing process for one framework: answers (rule, layers, batch, repeats) with the
    median step time until it receives None."""
    if framework == "torch":
        import torch  # first, so that its OpenMP runtime starts with PyTorch's defaults
        torch.set_num_threads(threads)
    while (job := conn.recv()) is not None:
        rule, layers, batch, repeats = job
        if framework == "torch":
            t = time_torch(rule, layers, batch, repeats, adam)
        else:
            t = time_noisysim(rule, layers, batch, repeats)
        conn.send(t)


class Workers:
    """One worker process per framework (spawned, so neither inherits the other's state)."""

    def __init__(self, threads, adam="default"):
        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs = {}, []
        for framework in ("noisysim", "torch"):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(framework, threads, adam, child),
                               daemon=True)
            proc.start()
            self.conns[framework] = parent
            self.procs.append(proc)

    def time(self, framework, *job):
        conn = self.conns[framework]
        conn.send(job)
        try:
            return conn.recv()
        except EOFError:
            raise SystemExit(f"the {framework} worker died timing {job}; run it alone to see why")

    def close(self):
        for conn in self.conns.values():
            conn.send(None)
        for proc in self.procs:
            proc.join(timeout=30)


def _load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# -- correctness --------------------------------------------------------------------------
def check(widths, batch) -> bool:
    import torch
    from noisysim.decorrelation import Decorrelator
    from noisysim.device import Device, exact_gradient
    from noisysim.losses import loss as ns_loss
    from noisysim.network import Network

    ok = True
    # 1. bp: autograd gradient == noisysim's exact gradient on the same weights
    net = Network(widths, dtype="float32", seed=0)
    x, y = _batch_data(widths, batch)
    exact = exact_gradient(net, x, y)
    model = TorchStep("bp", widths, weights=[(p.W, p.b) for p in net.layers])
    loss, _ = model.bp_loss(torch.from_numpy(x), torch.from_numpy(y))
    loss.backward()
    ns_mean = float(ns_loss("cross_entropy", Device(net).infer(x), y).mean())
    rel_loss = abs(loss.item() - ns_mean) / abs(ns_mean)
    worst = rel_loss
    for l, g in enumerate(exact):
        for name, gt, gn in (("W", model.W[l].grad, g.W), ("b", model.b[l].grad, g.b)):
            gt = gt.numpy()
            rel = float(np.linalg.norm(gt - gn) / max(np.linalg.norm(gn), 1e-30))
            worst = max(worst, rel)
            print(f"check bp: d loss / d {name}_{l}: relative error {rel:.2e}, "
                  f"max abs diff {np.abs(gt - gn).max():.2e}")
    good = worst < 1e-4
    ok &= good
    print(f"check bp: loss {loss.item():.6f} vs noisysim {ns_mean:.6f}; worst relative error "
          f"{worst:.2e} (tolerance 1e-4): {'ok' if good else 'FAILED'}")

    # 2. the R update == noisysim's Decorrelator (lr 1e-3 so that the step is visible)
    gen = np.random.default_rng(1)
    d = min(widths[0], 256)
    R0 = (np.eye(d) + 0.05 * gen.standard_normal((d, d))).astype(np.float32)
    xs = gen.random((batch, d), dtype=np.float32) @ R0.T
    Rn = R0.copy()
    Decorrelator(1e-3).update(Rn, xs)
    m = TorchStep("danp", [d, 1], lr_R=1e-3)
    m.R = [torch.from_numpy(R0.copy())]
    m.update_R([torch.from_numpy(xs)])
    rel = float(np.linalg.norm(m.R[0].numpy() - Rn) / np.linalg.norm(R0 - Rn))
    good = rel < 1e-3
    ok &= good
    print(f"check R update: relative error of Delta R {rel:.2e} (tolerance 1e-3): "
          f"{'ok' if good else 'FAILED'}")

    # 3. perturbation estimates point along the exact gradient (small network, many draws)
    #    (danp with R != I: the noisysim network gets the same R as the PyTorch one)
    small = [24, 16, 16, 4]
    x, y = _batch_data(small, 64)
    torch.manual_seed(0)
    for rule, draws in (("np", 3000), ("inp", 1000), ("anp", 1000), ("danp", 1000)):
        net = Network(small, dtype="float32", seed=0, decorrelation=rule == "danp")
        if rule == "danp":
            for p in net.layers:
                p.R += (0.1 * gen.standard_normal(p.R.shape)).astype(np.float32)
        exact = exact_gradient(net, x, y)
        g_true = np.concatenate([np.concatenate([g.W.ravel(), g.b]) for g in exact])
        m = TorchStep(rule, small, weights=[(p.W, p.b) for p in net.layers])
        if rule == "danp":
            m.R = [torch.from_numpy(p.R.copy()) for p in net.layers]
        acc = np.zeros_like(g_true, dtype=np.float64)
        for _ in range(draws):
            grads, _ = m.estimate(torch.from_numpy(x), torch.from_numpy(y))
            acc += np.concatenate([np.concatenate([gW.numpy().ravel(), gb.numpy()])
                                   for gW, gb in grads])
        cos = float(acc @ g_true / (np.linalg.norm(acc) * np.linalg.norm(g_true)))
        good = cos > 0.5
        ok &= good
        print(f"check {rule}: cosine(mean of {draws} estimates, exact gradient) = {cos:.3f} "
              f"(> 0.5 expected): {'ok' if good else 'FAILED'}")
    return ok


# -- main ---------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="3072,1024,1024,1024,10")
    ap.add_argument("--rules", default=None, help="default bp,np,anp,inp,danp (--conv: "
                    "bp,np,anp)")
    ap.add_argument("--batches", default=None, help="default 1000,64 (--conv: 100)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed steps per round at B >= 256 (4x this below)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds per (rule, batch), alternating which framework goes first")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for PyTorch (default: the CPUs this process may use)")
    ap.add_argument("--torch-adam", choices=("default", "foreach", "fused"), default="default",
                    help="PyTorch's Adam implementation (default: PyTorch's own choice, the "
                         "per-tensor loop on CPU)")
    ap.add_argument("--conv", action="store_true",
                    help="time the Fashion-MNIST convnet (CONV_LAYERS) instead of the MLP; "
                         "rules bp, np, anp; default batch 100")
    ap.add_argument("--check", action="store_true",
                    help="check the PyTorch step against noisysim instead of timing")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("torch") is None:
        print(SKIP)
        return 0

    layers = CONV_LAYERS if args.conv else args.layers
    widths = layers if args.conv else [int(w) for w in args.layers.split(",")]
    known = CONV_RULES if args.conv else RULES
    rules = [r.strip() for r in (args.rules or ",".join(CONV_RULES if args.conv else
                                                        ("bp", "np", "anp", "inp", "danp")))
             .split(",") if r.strip()]
    for r in rules:
        if r not in known:
            ap.error(f"unknown rule {r!r}; choose from {', '.join(known)}")
    batches = [int(b) for b in (args.batches or ("100" if args.conv else "1000,64")).split(",")]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or cpus

    if args.check and args.conv:
        ap.error("--check checks the MLP step; drop --conv")
    if args.check:
        import torch
        torch.set_num_threads(threads)
        return 0 if check(widths, batches[0]) else 1

    import numba
    torch_version = importlib.metadata.version("torch")
    print(f"torch {torch_version} ({threads} threads), numba threads "
          f"{numba.config.NUMBA_NUM_THREADS}, CPUs {cpus}, load average at start {_load()}; "
          f"one worker process per framework", flush=True)
    workers = Workers(threads, args.torch_adam)
    rows = []
    order = 0
    try:
        for B in batches:
            repeats = args.repeats if B >= 256 else 4 * args.repeats
            for rule in rules:
                times = {"noisysim": [], "torch": []}
                for _ in range(args.rounds):
                    first = ("noisysim", "torch") if order % 2 == 0 else ("torch", "noisysim")
                    order += 1
                    for framework in first:
                        times[framework].append(workers.time(framework, rule, layers, B,
                                                             repeats))
                t_ns = statistics.median(t for t, _ in times["noisysim"])
                floor = statistics.median(f for _, f in times["noisysim"])
                t_th = statistics.median(times["torch"])
                row = {"rule": rule, "batch": B, "layers": widths,
                       "noisysim_step_s": round(t_ns, 5), "torch_step_s": round(t_th, 5),
                       "speedup": round(t_th / t_ns, 3), "floor_s": round(floor, 5),
                       "bound": round(t_th / floor, 3), "repeats": repeats,
                       "rounds": args.rounds, "threads": threads,
                       "torch_version": torch_version, "torch_adam": args.torch_adam,
                       "load_avg": _load()}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        workers.close()

    print()
    print(f"{'rule':<6} {'B':>5} {'noisysim s':>11} {'torch s':>10} {'torch/noisysim':>15} "
          f"{'floor s':>9} {'torch/floor':>12}")
    for r in rows:
        print(f"{r['rule']:<6} {r['batch']:>5} {r['noisysim_step_s']:>11.4f} "
              f"{r['torch_step_s']:>10.4f} {r['speedup']:>15.2f} {r['floor_s']:>9.4f} "
              f"{r['bound']:>12.2f}")
    print("floor: numpy's time for the step's matrix products plus Adam's minimal memory "
          "traffic; torch/floor is the largest speedup any implementation using them could "
          "reach")
    print(f"load average at end {_load()} on {cpus} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
