"""The training engine: epochs of measure -> estimate -> update -> decorrelate -> record.

One step, in order (ARCHITECTURE.md):
    m = device.measure(x, y, **rule.request())      # the simulated hardware
    g = rule.estimate(m, network)                    # rules see the Measurement only
    optimizer.update(network.layers, g)              # W, b
    decorrelator.update(R_l, m.inputs[l][0])         # R, from the reference pass
The exact gradient for the alignment diagnostic comes from the oracle on the same batch and
the same parameters as the estimate (before the update), outside the rule.

Randomness: the data order of epoch e is the argsort of uniform draws keyed by
(seed, SHUFFLE, e); every other draw is keyed inside the device and the rules. Everything a
run needs to continue is returned by ``Trainer.state_dict`` (checkpoints).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from .decorrelation import decorrelation_loss
from .device import Device, exact_gradient
from .errors import NoisysimError, check_number
from .kernels import rng
from .losses import check_targets, loss
from .optim import nonfinite_layer
from .network import Network


class Recorder(Protocol):
    """What the engine hands its records to (noisysim.record.TrajectoryWriter fits)."""

    def log(self, group: str, row: dict) -> None: ...
    def snapshot(self, step: int, params: dict) -> None: ...
    def write_checkpoint(self, state: dict) -> None: ...


class NullRecorder:
    """Keeps the last rows in memory; for tests and interactive use."""

    def __init__(self):
        self.rows: dict[str, list[dict]] = {}
        self.snapshots: list[tuple[int, dict]] = []
        self.checkpoint: dict | None = None

    def log(self, group, row):
        self.rows.setdefault(group, []).append(dict(row))

    def snapshot(self, step, params):
        self.snapshots.append((step, params))

    def write_checkpoint(self, state):
        self.checkpoint = state

    def series(self, group: str, name: str) -> np.ndarray:
        return np.array([r.get(name, np.nan) for r in self.rows.get(group, [])], dtype=float)


@dataclass
class TrainSettings:
    """The [train] section: how long, how often to log, evaluate and snapshot."""

    epochs: int = 10
    batch_size: int = 100
    log_every: int = 10          # steps between per-step scalar rows (1 = every step)
    alignment_every: int = 0     # steps between oracle alignments (0 = never)
    snapshot_every: int = 0      # steps between parameter snapshots (0 = never)
    checkpoint_every: int = 0    # steps between checkpoints (0 = at epoch ends only)
    eval_noise: bool = False     # evaluate with intrinsic noise (one noisy pass per batch)
    eval_batch_size: int = 1000

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            setattr(self, name, check_number(f"train.{name}", getattr(self, name), 1, None, integer=True))
        for name in ("log_every",):
            setattr(self, name, check_number(f"train.{name}", getattr(self, name), 1, None, integer=True))
        for name in ("alignment_every", "snapshot_every", "checkpoint_every"):
            setattr(self, name, check_number(f"train.{name}", getattr(self, name), 0, None, integer=True))


@dataclass
class Result:
    status: str
    message: str
    step: int
    epoch: int
    final: dict = field(default_factory=dict)


class Trainer:
    """Trains ``device.network`` on a dataset with a rule, an optimiser and (optionally) a
    decorrelator, handing every record to ``recorder``.

    ``progress(step, total_steps, epoch, scalars)`` is called after every step.
    ``should_stop()`` is polled after every step (signal handlers set it); the run then
    checkpoints and ends with status "interrupted".
    """

    def __init__(self, device: Device, rule, optimizer, data, settings: TrainSettings,
                 decorrelator=None, recorder: Recorder | None = None, seed: int = 0,
                 progress: Callable | None = None, should_stop: Callable[[], bool] | None = None,
                 backend: str = "cpu"):
        self.device = device
        device.reuse_buffers = True  # each Measurement is consumed within its step
        self.network: Network = device.network
        self.rule = rule
        self.optimizer = optimizer
        self.decorrelator = decorrelator
        self.data = data
        self.settings = settings
        self.recorder = recorder or NullRecorder()
        self.seed = int(seed)
        self.progress = progress
        self.should_stop = should_stop or (lambda: False)
        if decorrelator is not None and any(p.R is None for p in self.network.layers):
            raise NoisysimError("a decorrelator needs a network built with decorrelation=True")
        n = data.x_train.shape[0]
        if n < 1:
            raise NoisysimError("the training set is empty")
        self.batches_per_epoch = math.ceil(n / settings.batch_size)
        self.total_steps = self.batches_per_epoch * settings.epochs
        self.optimizer.init(self.network.layers)
        # Position: the next step runs batch `batch` of epoch `epoch`.
        self.step = 0
        self.epoch = 0
        self.batch = 0
        self._order: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int64))
        # backend "cuda": the same step on the GPU (noisysim.gpu); state is pulled back to
        # these host objects for checkpoints and pushed after a restore.
        self._cuda = None
        if backend == "cuda":
            from .gpu import CudaSession
            self._cuda = CudaSession(self)

    # -- state as data -------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self._cuda is not None:
            self._cuda.pull()
        return {
            "position": {"step": np.int64(self.step), "epoch": np.int64(self.epoch),
                         "batch": np.int64(self.batch)},
            "data_order": self.order(self.epoch),
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rule": self.rule.state_dict(),
            "device": self.device.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        pos = state["position"]
        self.step, self.epoch, self.batch = int(pos["step"]), int(pos["epoch"]), int(pos["batch"])
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rule.load_state_dict(state["rule"])
        self.device.load_state_dict(state["device"])
        if self._cuda is not None:
            self._cuda.push()

    def order(self, epoch: int) -> np.ndarray:
        """The data order of an epoch: a permutation keyed by (seed, SHUFFLE, epoch)."""
        if self._order[0] != epoch:  # one permutation per epoch, not per step
            n = self.data.x_train.shape[0]
            u = rng.uniform_array(self.seed, rng.STREAM_SHUFFLE, epoch, 0, (n,))
            self._order = (epoch, np.argsort(u, kind="stable"))
        return self._order[1]

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> Result:
        s = self.settings
        if self.step == 0:
            self._evaluate(epoch=0)
        while self.epoch < s.epochs:
            order = self.order(self.epoch)
            start, stop = self.batch * s.batch_size, (self.batch + 1) * s.batch_size
            if self._cuda is not None:
                failure = self._cuda.train_rows(order, start, stop)
            else:
                idx = order[start:stop]
                failure = self._train_step(self.data.x_train[idx], self.data.y_train[idx])
            if failure:
                return self._end("diverged", failure)
            self.batch += 1
            if self.batch == self.batches_per_epoch:
                self.batch, self.epoch = 0, self.epoch + 1
                self._evaluate(epoch=self.epoch)
                self.recorder.write_checkpoint(self.state_dict())
            elif s.checkpoint_every and self.step % s.checkpoint_every == 0:
                self.recorder.write_checkpoint(self.state_dict())
            if self.should_stop() and self.step < self.total_steps:
                self.recorder.write_checkpoint(self.state_dict())
                return self._end("interrupted", f"interrupted at step {self.step}")
        return self._end("completed", "")

    def _train_step(self, x, y) -> str:
        s = self.settings
        net = self.network
        m = self.device.measure(x, y, **self.rule.request())
        grads = self.rule.estimate(m, net)
        step = self.step + 1
        if not np.isfinite(m.losses[0]).all():
            return f"the loss became non-finite at step {step}"
        if s.alignment_every and step % s.alignment_every == 0:
            exact = exact_gradient(net, x, y)
            row = {"step": step}
            for l, (g, e) in enumerate(zip(grads, exact)):
                row[f"layer_{l}"] = _cosine(g, e)
            self.recorder.log("alignment", row)
        try:  # the optimizer checks the gradients (their norm) before it changes anything
            scalars = self.optimizer.update(net.layers, grads)
        except NoisysimError as err:
            return _gradient_failure(grads, step, err)
        bad = nonfinite_layer(scalars)
        if bad is not None:
            return f"a parameter (W or b) of layer {bad} became non-finite after the update of step {step}"
        log_row = step % s.log_every == 0 or step == self.total_steps
        if self.decorrelator is not None:
            for l, p in enumerate(net.layers):
                x_star = m.inputs[l][0]
                if log_row:  # O(B d^2): only when the row is recorded
                    scalars[f"decorrelation_loss_l{l}"] = decorrelation_loss(x_star)
                try:
                    scalars[f"decorrelation_update_l{l}"] = self.decorrelator.update(p.R, x_star)
                except NoisysimError:
                    return f"the decorrelation matrix R of layer {l} diverged at step {step}"
        self.step = step
        ref = m.losses[0]
        row = {"step": step, "epoch": self.epoch, "loss": float(ref.mean())}
        if m.n_passes > 1:
            dl = m.losses[1:] - ref
            row["loss_change_mean"] = float(dl.mean())
            row["loss_change_std"] = float(dl.std())
        if m.outputs.shape[-1] > 1 and self.data.n_classes:
            row["accuracy"] = float((m.outputs[0].argmax(axis=1) == y).mean())
        row.update({k: float(v) for k, v in scalars.items()})
        if log_row:
            self.recorder.log("train", row)
        if s.snapshot_every and step % s.snapshot_every == 0:
            self.recorder.snapshot(step, net.state_dict())
        if self.progress is not None:
            self.progress(step, self.total_steps, self.epoch, row)
        return ""

    def evaluate(self, x, y) -> tuple[float, float]:
        """Mean loss and accuracy (NaN for regression) of one pass over (x, y)."""
        s = self.settings
        total_loss, correct = 0.0, 0
        for start in range(0, x.shape[0], s.eval_batch_size):
            xb, yb = x[start:start + s.eval_batch_size], y[start:start + s.eval_batch_size]
            if self._cuda is not None:
                out = self._cuda.infer(xb, s.eval_noise)
            else:
                out = self.device.infer(xb, noisy=s.eval_noise)
            targets = check_targets(self.network.loss, yb, self.network.widths[-1])
            total_loss += float(loss(self.network.loss, out, targets).sum())
            if self.data.n_classes:
                correct += int((out.argmax(axis=1) == yb).sum())
        n = x.shape[0]
        acc = correct / n if self.data.n_classes else math.nan
        return total_loss / n, acc

    def _evaluate(self, epoch: int) -> dict:
        row = {"epoch": epoch, "step": self.step}
        row["train_loss"], row["train_accuracy"] = self.evaluate(self.data.x_train, self.data.y_train)
        if getattr(self.data, "x_test", None) is not None and self.data.x_test.shape[0]:
            row["test_loss"], row["test_accuracy"] = self.evaluate(self.data.x_test, self.data.y_test)
        self.recorder.log("eval", row)
        self.last_eval = row
        return row

    def _end(self, status: str, message: str) -> Result:
        if self._cuda is not None:
            self._cuda.pull()
        return Result(status, message, self.step, self.epoch, getattr(self, "last_eval", {}))


def _cosine(g, e) -> float:
    a = np.concatenate([g.W.ravel()] + ([g.b.ravel()] if g.b is not None else [])).astype(np.float64)
    b = np.concatenate([e.W.ravel()] + ([e.b.ravel()] if e.b is not None else [])).astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else math.nan


def _gradient_failure(grads, step, err) -> str:
    """Why the optimizer refused the gradients: one of them is not finite, or all are but
    their norm overflows."""
    for l, g in enumerate(grads):
        if not np.isfinite(g.W).all() or (g.b is not None and not np.isfinite(g.b).all()):
            return f"the gradient estimate of layer {l} became non-finite at step {step}"
    layer = next((l for l, g in enumerate(grads)
                  if not np.isfinite(np.linalg.norm(g.W.astype(np.float64)))), None)
    where = f" (layer {layer})" if layer is not None else ""
    return f"the optimizer update overflowed at step {step}{where}: {err}"
