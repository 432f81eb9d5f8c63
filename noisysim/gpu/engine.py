"""``CudaSession``: the training step of ``noisysim.train.Trainer`` on the GPU.

One step, as ``Trainer._train_step`` (same order, same failure messages, same logged row):

    m = device.measure(x, y, **rule.request())          CudaDevice (kernels + cuBLAS)
    g = rule estimate                                   noisysim.gpu.rules
    -- read 1: loss statistics, accuracy, per-layer gradient norms (one small copy)
    optimizer update (W, b)                             CudaOptimizer
    decorrelation step (R)                              CudaDecorrelator
    -- read 2: update norms, decorrelation norms, non-finite flags (one small copy)
    R <- R - Delta R

Parameters, optimiser state, noise state and (with ``train_indices``) the training data stay
on the GPU across steps; only the scalars of the row and, when asked for, snapshots,
checkpoints, alignment diagnostics and the decorrelation loss (on logged steps) come back.
``pull()`` writes the GPU state into the host objects (the trainer's network, device,
optimiser) so that their ``state_dict()`` are current; ``push()`` does the opposite after a
``load_state_dict``.
"""

from __future__ import annotations

import math

import numpy as np

from ..decorrelation import decorrelation_loss
from ..device import exact_gradient
from ..errors import NoisysimError, check_finite_array
from ..kernels import cuda as K
from ..losses import check_targets
from .arrays import synchronize, to_device, to_host, xp, zeros
from .device import CudaDevice
from .noise import DeviceNoise
from .optim import FLAG_B, FLAG_R, FLAG_W, CudaDecorrelator, CudaOptimizer
from .rules import estimate, supports

_N_STATS = 5  # sum of reference losses, dl mean, dl variance, correct, non-finite losses


def check_supported(rule, device, optimizer) -> None:
    """Raise a one-line NoisysimError when a run cannot use the cuda backend."""
    if not supports(rule):
        raise NoisysimError(f"rule {rule.name!r} has no cuda implementation (cuda runs bp, "
                            "np, inp, anp and their decorrelated variants); use backend 'cpu'")
    if rule.request()["perturb"] == "weights":
        raise NoisysimError(f"rule {rule.name!r} perturbs weights: use backend 'cpu'")
    for model in device.noise.values():
        DeviceNoise(model)  # refuses models without a kernel
    if optimizer.name not in ("adam", "sgd"):
        raise NoisysimError(f"optimizer {optimizer.name!r} has no cuda implementation")


class CudaSession:
    """Runs a ``Trainer``'s steps on the GPU (the trainer keeps its loop and its records).

    Build it after the trainer (the optimiser must be initialised); the trainer's objects
    then describe the configuration and receive the state on ``pull()``.
    """

    def __init__(self, trainer):
        check_supported(trainer.rule, trainer.device, trainer.optimizer)
        self.trainer = trainer
        self.network = trainer.network
        self.rule = trainer.rule
        self.device = CudaDevice(trainer.device)
        self.optimizer = CudaOptimizer(trainer.optimizer)
        self.decorrelator = (None if trainer.decorrelator is None
                             else CudaDecorrelator(trainer.decorrelator))
        self._data = None
        self._order = None

    # -- host <-> device ----------------------------------------------------------------
    def pull(self) -> None:
        """Write parameters, noise state, clock and optimiser state to the host objects."""
        self.device.pull()
        self.optimizer.pull()

    def push(self) -> None:
        """Copy the host objects' state to the GPU (after loading a checkpoint)."""
        self.device.push()
        self.optimizer.push()

    def _device_data(self):
        if self._data is None:
            data = self.trainer.data
            check_finite_array("training inputs", data.x_train)
            x = to_device(np.ascontiguousarray(data.x_train, dtype=self.network.dtype))
            y = to_device(check_targets(self.network.loss, data.y_train,
                                        self.network.widths[-1]))
            self._data = (x, y)
        return self._data

    # -- steps ---------------------------------------------------------------------------
    def train_rows(self, order: np.ndarray, start: int, stop: int) -> str:
        """One step on the training rows ``order[start:stop]``, gathered on the GPU from the
        training set (copied there once). ``order`` is an epoch's permutation
        (``Trainer.order``); it is copied once per epoch, so a step copies nothing to the
        GPU. Returns "" or the failure message."""
        x_all, y_all = self._device_data()
        if self._order is None or self._order[0] is not order:
            self._order = (order, to_device(np.asarray(order, dtype=np.int64)))
        idx_d = self._order[1][start:stop]
        data = self.trainer.data
        idx = order[start:stop]
        return self._step(x_all[idx_d], y_all[idx_d],
                          lambda: (data.x_train[idx], data.y_train[idx]))

    def train_indices(self, idx: np.ndarray) -> str:
        """One step on the training rows ``idx`` (host ints; copied to the GPU)."""
        idx = np.asarray(idx, dtype=np.int64)
        return self.train_rows(idx, 0, idx.shape[0])

    def train_step(self, x: np.ndarray, y: np.ndarray) -> str:
        """One step on a host batch (copied to the GPU). Returns "" or the failure message."""
        self.trainer.device._check_inputs(x)
        return self._step(self.device.inputs(x), self.device.targets(y), lambda: (x, y))

    def _step(self, x, y, host_batch) -> str:
        tr = self.trainer
        s = tr.settings
        net = self.network
        dev = self.device
        L = net.n_layers
        m = dev.measure(x, y, **self.rule.request())
        grads = estimate(self.rule, m, dev)
        step = tr.step + 1
        batch = m.losses.shape[1]

        buf = zeros(_N_STATS + L, np.float64)
        has_labels = (net.loss == "cross_entropy" and m.outputs.shape[-1] > 1
                      and bool(tr.data.n_classes))
        labels = m.targets if net.loss == "cross_entropy" else _dummy_labels()
        K.step_stats(m.losses, m.outputs[0], labels, buf, has_labels)
        for l, g in enumerate(grads):
            K.sum_squares(g.W, buf, _N_STATS + l)
            if g.b is not None:
                K.sum_squares(g.b, buf, _N_STATS + l)
        stats = to_host(buf)  # read 1
        if stats[4] > 0:
            return f"the loss became non-finite at step {step}"
        for l in range(L):
            if not math.isfinite(stats[_N_STATS + l]):
                return f"the gradient estimate of layer {l} became non-finite at step {step}"
        if s.alignment_every and step % s.alignment_every == 0:
            self._alignment(step, grads, *host_batch())
        grad_norm = math.sqrt(float(np.sum(stats[_N_STATS:])))

        norms = zeros(2 * L, np.float64)
        bad = zeros((L, 3), np.int32)
        opt_scalars = self.optimizer.update(dev.layers, grads, grad_norm, norms, bad)
        log_row = step % s.log_every == 0 or step == tr.total_steps
        deltas, decor_loss = [], {}
        if self.decorrelator is not None:
            for l, p in enumerate(dev.layers):
                x_star = m.inputs[l][0]
                if log_row:  # O(B d^2) on the host: only when the row is recorded
                    decor_loss[l] = decorrelation_loss(to_host(x_star))
                deltas.append(self.decorrelator.delta(p.R, x_star, norms, L + l,
                                                      bad[l, FLAG_R:][:1]))
        norms_h, bad_h = to_host(norms), to_host(bad)  # read 2
        scalars = {f"update_norm_l{l}": math.sqrt(norms_h[l]) for l in range(L)}
        scalars.update(opt_scalars)
        for l, delta in enumerate(deltas):
            if l in decor_loss:
                scalars[f"decorrelation_loss_l{l}"] = decor_loss[l]
            norm = math.sqrt(norms_h[L + l]) if delta is not None else 0.0
            if not math.isfinite(norm):
                return f"the decorrelation matrix R of layer {l} diverged at step {step}"
            CudaDecorrelator.apply(dev.layers[l].R, delta)
            scalars[f"decorrelation_update_l{l}"] = norm
        for l in range(L):
            for flag, name in ((FLAG_W, "W"), (FLAG_B, "b"), (FLAG_R, "R")):
                if bad_h[l, flag]:
                    return f"parameter {name} of layer {l} became non-finite after the " \
                           f"update of step {step}"
        tr.step = step
        row = {"step": step, "epoch": tr.epoch, "loss": float(stats[0] / batch)}
        if m.n_passes > 1:
            row["loss_change_mean"] = float(stats[1])
            row["loss_change_std"] = math.sqrt(max(float(stats[2]), 0.0))
        if has_labels:
            row["accuracy"] = float(stats[3] / batch)
        row.update({k: float(v) for k, v in scalars.items()})
        if log_row:
            tr.recorder.log("train", row)
        if s.snapshot_every and step % s.snapshot_every == 0:
            dev.pull_params()
            tr.recorder.snapshot(step, net.state_dict())
        if tr.progress is not None:
            tr.progress(step, tr.total_steps, tr.epoch, row)
        return ""

    def _alignment(self, step, grads, x, y) -> None:
        """Cosine of each layer's estimate with the oracle's exact gradient (on the host)."""
        self.device.pull_params()
        exact = exact_gradient(self.network, x, y)
        row = {"step": step}
        for l, (g, e) in enumerate(zip(grads, exact)):
            gw = [to_host(g.W).ravel()] + ([to_host(g.b).ravel()] if g.b is not None else [])
            ew = [e.W.ravel()] + ([e.b.ravel()] if e.b is not None else [])
            a = np.concatenate(gw).astype(np.float64)
            b = np.concatenate(ew).astype(np.float64)
            denom = np.linalg.norm(a) * np.linalg.norm(b)
            row[f"layer_{l}"] = float(a @ b / denom) if denom > 0 else math.nan
        self.trainer.recorder.log("alignment", row)

    # -- inference -----------------------------------------------------------------------
    def infer(self, x: np.ndarray, noisy: bool = False) -> np.ndarray:
        """Host outputs (B, N_L) of one pass on the GPU (``Device.infer``)."""
        self.trainer.device._check_inputs(x)
        return to_host(self.device.infer(x, noisy))

    def synchronize(self) -> None:
        synchronize()


_DUMMY = {}


def _dummy_labels():
    if "labels" not in _DUMMY:
        _DUMMY["labels"] = xp.zeros(1, dtype=np.int64)
    return _DUMMY["labels"]
