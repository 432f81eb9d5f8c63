"""The training engine: epochs of measure -> estimate -> update -> decorrelate -> record.

One step, in order (ARCHITECTURE.md):
    m = device.measure(x, y, **rule.request())      # the simulated hardware
    g = rule.estimate(m, network, out=optimizer.gradients.layers)  # the Measurement only
    optimizer.gradient_norms(g, ...); optimizer.apply(device.layers, g, ...)  # W, b
    decorrelator.step(..., R_l, m.inputs[l][0], ...) # R, from the reference pass
The exact gradient for the alignment diagnostic comes from the oracle on the same batch and
the same parameters as the estimate (before the update), outside the rule.

The step is written once for every backend (``noisysim.kernels.backend``): the CPU's numba
kernels and BLAS, or the GPU's numba.cuda kernels and cuBLAS. Its statistics (loss, loss
changes, accuracy, gradient and update norms, non-finite flags) collect in one float64
array on the backend (``noisysim.kernels.step``); a failure (a non-finite loss, gradient,
parameter or R) stops every later update of the run and is reported, as a ``StepFailure``,
at the step where it happened. The host reads the statistics every step on the CPU, where
that is free, and on the GPU only on steps that log, checkpoint, snapshot or end an epoch.

Randomness: the data order of epoch e is the argsort of uniform draws keyed by
(seed, SHUFFLE, e); every other draw is keyed inside the device and the rules. Everything a
run needs to continue is returned by ``Trainer.state_dict`` (checkpoints).
"""

from __future__ import annotations

import inspect
import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from .decorrelation import decorrelation_loss
from .device import Device, exact_gradient
from .errors import NoisysimError, check_finite_array, check_number
from .kernels import rng, step as _step
from .kernels.backend import kernels_for
from .losses import check_targets, loss
from .network import Network


@dataclass(frozen=True)
class StepFailure:
    """Why a step failed: ``kind`` (one of ``noisysim.kernels.step.KINDS`` but "none"), the
    1-based ``step`` and the ``layer`` (-1 when no layer is to blame). ``message`` is the
    one place the engine's failure messages are written."""

    kind: str
    step: int
    layer: int = -1

    @property
    def message(self) -> str:
        s, l = self.step, self.layer
        where = f" (layer {l})" if l >= 0 else ""
        return {
            "loss": f"the loss became non-finite at step {s}",
            "gradient": f"the gradient estimate of layer {l} became non-finite at step {s}",
            "overflow": f"the optimizer update overflowed at step {s}{where}: the global "
                        "gradient norm is not finite; lower the learning rate or enable clip",
            "parameter": f"a parameter (W or b) of layer {l} became non-finite after the "
                         f"update of step {s}",
            "decorrelation": f"the decorrelation matrix R of layer {l} diverged at step {s}",
        }[self.kind]

    @classmethod
    def from_record(cls, record) -> "StepFailure | None":
        """From a failure record (step, kind, layer) (``noisysim.kernels.step``)."""
        step, kind, layer = (int(v) for v in record)
        return None if kind == _step.KIND_NONE else cls(_step.KINDS[kind], step, layer)


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

    ``progress(step, total_steps, epoch, scalars)`` is called after every step whose
    scalars the host read (every step on the CPU; on the GPU the steps that log).
    ``should_stop()`` is polled after every step (signal handlers set it); the run then
    checkpoints and ends with status "interrupted". ``backend`` ("cpu" or "cuda", resolved)
    says where the steps run; the trainer's objects keep describing the run, and
    ``state_dict`` reads the backend's state back first. ``graphs``: on a GPU, replay the
    quiet steps as a CUDA graph (``noisysim.gpu.graph``; no effect on the CPU or under
    numba's simulator).
    """

    def __init__(self, device: Device, rule, optimizer, data, settings: TrainSettings,
                 decorrelator=None, recorder: Recorder | None = None, seed: int = 0,
                 progress: Callable | None = None, should_stop: Callable[[], bool] | None = None,
                 backend: str = "cpu", graphs: bool = False):
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
        self.kernels = kernels_for(backend)
        if self.kernels is not device.kernels:
            device.use_kernels(self.kernels)
        self.optimizer.horizon = self.total_steps  # the length of a learning-rate schedule
        self.optimizer.init(device.layers, self.kernels, arena=device.parameters)
        # Position: the next step runs batch `batch` of epoch `epoch`.
        self.step = 0
        self.epoch = 0
        self.batch = 0
        self._order: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int64))
        self._order_backend = (-1, None)
        self._data_backend = None
        L = self.network.n_layers
        self._stats = self.kernels.zeros(_step.size(L), np.float64)
        self._failure = self.kernels.asarray(_step.new_failure())
        self._graph = self._make_graph() if graphs else None

    # -- state as data -------------------------------------------------------------------
    def state_dict(self) -> dict:
        self.device.pull()
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
        self.device.push()

    def order(self, epoch: int) -> np.ndarray:
        """The data order of an epoch: a permutation keyed by (seed, SHUFFLE, epoch)."""
        if self._order[0] != epoch:  # one permutation per epoch, not per step
            n = self.data.x_train.shape[0]
            u = rng.uniform_array(self.seed, rng.STREAM_SHUFFLE, epoch, 0, (n,))
            self._order = (epoch, np.argsort(u, kind="stable"))
        return self._order[1]

    # -- CUDA graphs (noisysim.gpu.graph) ------------------------------------------------
    def _make_graph(self):
        """A StepGraph when this run can replay its quiet steps: on a real GPU, with a rule
        without state of its own (FG draws its tangents on the host) and ideal weights (a
        weight device keys its writes on the host). Says once why not otherwise."""
        from .backends import simulated

        reason = None
        if self.kernels.name != "cuda":
            return None
        if simulated():
            reason = "numba's CUDA simulator has no graphs"
        elif self.rule.state._fields:
            reason = f"rule {self.rule.name!r} keeps state on the host"
        elif not self.optimizer.weight_device.ideal:
            reason = "a non-ideal weight device keys its writes on the host"
        if reason:
            sys.stderr.write(f"noisysim: backend.graphs is on, but {reason}: running "
                             "without graphs\n")
            return None
        from .gpu.graph import StepGraph  # pragma: no cover - needs a GPU

        return StepGraph()  # pragma: no cover

    def host_counters(self) -> dict:
        """The host's values that a quiet step advances: the device's pass clock, the
        optimiser's update count, the step, the last pass time of each stateful noise
        model and the records of the GPU's device counters. A replayed step
        (``noisysim.gpu.graph``) advances them by what a captured step did."""
        out = {"clock": self.device.clock, "updates": int(self.optimizer.state.count),
               "step": self.step}
        for l, state in self.device._noise_state.items():
            if "_last" in state:
                out[("noise_last", l)] = state["_last"]
        if self.kernels.name == "cuda":
            from .kernels import cuda_launch

            out.update({("counter",) + k: v
                        for k, v in cuda_launch.counter_records().items() if v is not None})
        return out

    def step_counters(self, start: int) -> dict:
        """What each device counter must hold when a step on rows [start, ...) begins (the
        values the plain step writes when the host's record differs): the pass clock, the
        optimiser's update count, the step and the batch's first row."""
        return {"clock": self.device.clock, "updates": int(self.optimizer.state.count),
                "step": self.step, "rows": start}

    def advance_host_counters(self, delta: dict) -> None:
        """Add ``delta`` (keys of ``host_counters``) to the host's values."""
        self.device.clock += delta["clock"]
        opt = self.optimizer
        opt.state = opt.state._replace(count=np.int64(int(opt.state.count) + delta["updates"]))
        self.step += delta["step"]
        records = {}
        for key, d in delta.items():
            if isinstance(key, tuple) and key[0] == "noise_last":
                self.device._noise_state[key[1]]["_last"] += d
            elif isinstance(key, tuple) and key[0] == "counter":
                records[key[1:]] = d
        if records:
            from .kernels import cuda_launch

            cuda_launch.advance_records(records)

    def _quiet(self, step: int) -> bool:
        """Whether step ``step`` records nothing: no log row, snapshot, checkpoint, epoch
        end or alignment (the GPU then reads nothing back)."""
        s = self.settings
        return not (step % s.log_every == 0 or step == self.total_steps
                    or (s.snapshot_every and step % s.snapshot_every == 0)
                    or self._epoch_ends(step)
                    or (s.checkpoint_every and step % s.checkpoint_every == 0)
                    or (s.alignment_every and step % s.alignment_every == 0))

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> Result:
        if self._graph is None:
            return self._run()
        with self._graph.on_stream():
            return self._run()

    def _run(self) -> Result:
        s = self.settings
        if self.step == 0:
            self._evaluate(epoch=0)
        while self.epoch < s.epochs:
            start, stop = self.batch * s.batch_size, (self.batch + 1) * s.batch_size
            failure = self._train_rows(start, stop)
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
                failure = self._unread_failure()
                if failure:
                    return self._end("diverged", failure)
                self.recorder.write_checkpoint(self.state_dict())
                return self._end("interrupted", f"interrupted at step {self.step}")
        return self._end("completed", "")

    # -- one step ------------------------------------------------------------------------
    def _backend_data(self):
        """The training set on the backend, checked once (inputs finite, targets valid):
        the same arrays on the CPU, one copy to the GPU."""
        if self._data_backend is None:
            K, net = self.kernels, self.network
            check_finite_array("training inputs", self.data.x_train)
            x = K.asarray(self.data.x_train, net.dtype)
            y = K.asarray(check_targets(net.loss, self.data.y_train, net.widths[-1]))
            self._data_backend = (x, y)
        return self._data_backend

    def _train_rows(self, start: int, stop: int) -> str:
        """One step on rows [start, stop) of the current epoch's order, gathered on the
        backend (the order is copied there once per epoch). Returns "" or the failure."""
        order = self.order(self.epoch)
        if self._order_backend[0] != self.epoch:  # one copy per epoch, into one array
            held = self._order_backend[1]
            if held is None:
                held = self.kernels.asarray(order)
            else:
                held[...] = self.kernels.asarray(order)
            self._order_backend = (self.epoch, held)
        x_all, y_all = self._backend_data()

        def plain():
            x, y = self.kernels.gather_batch(x_all, y_all, self._order_backend[1], start, stop)
            return self._step(x, y, order[start:stop])
        graph = self._graph
        if (graph is not None and graph.enabled and stop - start == self.settings.batch_size
                and self._quiet(self.step + 1)):
            self.kernels.hold_counters(self.step_counters(start))
            return graph.step(self, plain)
        return plain()

    def _train_step(self, x, y) -> str:
        """One step on a host batch (checked and copied to the backend). Returns "" or the
        failure message."""
        net, K = self.network, self.kernels
        x = self.device._check_inputs(x)
        y = check_targets(net.loss, y, net.widths[-1])
        return self._step(K.asarray(x), K.asarray(y), (x, y))

    def _host_batch(self, rows):
        """The host batch of a step: its row indices, or the batch itself."""
        if isinstance(rows, tuple):
            return rows
        return self.data.x_train[rows], self.data.y_train[rows]

    def _step(self, x, y, rows) -> str:
        """measure -> estimate -> update -> decorrelate -> record, on the backend."""
        s = self.settings
        net, K = self.network, self.kernels
        L = net.n_layers
        layers = self.device.layers
        m = self.device.measure_checked(x, y, **self.rule.request())
        grads = (self.rule.estimate(m, net, out=self.optimizer.gradients.layers)
                 if _takes_out(self.rule.estimate) else self.rule.estimate(m, net))
        step = self.step + 1
        stats, failure = self._stats, self._failure
        stats[...] = 0.0
        labels = y if self.data.n_classes and net.widths[-1] > 1 else None
        K.step_stats(m.losses, m.outputs[0], labels, stats)
        self.optimizer.gradient_norms(grads, stats, failure)
        if s.alignment_every and step % s.alignment_every == 0:
            self._alignment(step, grads, rows)
        self.optimizer.apply(layers, grads, stats, failure)
        log_row = step % s.log_every == 0 or step == self.total_steps
        decorrelation_loss_ = {}
        if self.decorrelator is not None:
            for l, p in enumerate(layers):
                x_star = m.inputs[l][0]
                if net.maps[l].is_conv:
                    x_star = self.decorrelator.patch_rows(K, x_star)
                if log_row:  # O(B d^2) on the host: only when the row is recorded
                    decorrelation_loss_[l] = decorrelation_loss(K.to_host(x_star))
                self.decorrelator.step(K, p.R, x_star, stats, failure, L, l)
        K.record(stats, failure, L, step)
        self.step = step
        snapshot = bool(s.snapshot_every) and step % s.snapshot_every == 0
        if not K.eager and self._quiet(step):
            return ""
        failed = self._unread_failure()
        if failed:
            return failed
        row = self._row(step, K.to_host(stats), m.n_passes, labels is not None,
                        decorrelation_loss_)
        if log_row:
            self.recorder.log("train", row)
        if snapshot:
            self.device.pull()
            self.recorder.snapshot(step, net.state_dict())
        if self.progress is not None:
            self.progress(step, self.total_steps, self.epoch, row)
        return ""

    def _unread_failure(self) -> str:
        """A failure recorded on the backend since the host last read (the GPU reads only
        on logged steps): its message, with the position moved back to the failed step."""
        found = StepFailure.from_record(self.kernels.to_host(self._failure))
        if found is None:
            return ""
        self.step = found.step - 1
        return found.message

    def _epoch_ends(self, step: int) -> bool:
        return step % self.batches_per_epoch == 0

    def _row(self, step, stats, n_passes, labelled, decorrelation_loss_) -> dict:
        """The step's scalars from its statistics (host), in the trajectory's column order."""
        L = self.network.n_layers
        row = {"step": step, "epoch": self.epoch, "loss": float(stats[_step.LOSS])}
        if n_passes > 1:
            row["loss_change_mean"] = float(stats[_step.DL_MEAN])
            row["loss_change_std"] = float(stats[_step.DL_STD])
        if labelled:
            row["accuracy"] = float(stats[_step.ACCURACY])
        for l in range(L):
            row[f"update_norm_l{l}"] = math.sqrt(stats[_step.update_sq(L, l)])
        grad_norm = math.sqrt(_step.grad_norm_sq(stats, L))
        row["grad_norm"] = grad_norm
        clip = self.optimizer.clip
        row["clip_scale"] = clip / grad_norm if clip is not None and grad_norm > clip else 1.0
        if not self.optimizer.weight_device.ideal:
            row["weight_writes"] = float(stats[_step.writes(L)])
            row["weight_clipped"] = float(stats[_step.clipped(L)])
        if self.decorrelator is not None:
            for l in range(L):
                if l in decorrelation_loss_:
                    row[f"decorrelation_loss_l{l}"] = decorrelation_loss_[l]
                row[f"decorrelation_update_l{l}"] = math.sqrt(stats[_step.decor_sq(L, l)])
        return row

    def _alignment(self, step, grads, rows) -> None:
        """Cosine of each layer's estimate with the oracle's exact gradient on the same batch
        and parameters (before the update), unless the step already failed."""
        K, L = self.kernels, self.network.n_layers
        if _step.blocked(K.to_host(self._stats), K.to_host(self._failure), L,
                         _step.BEFORE_UPDATE):
            return
        self.device.pull()
        x, y = self._host_batch(rows)
        exact = exact_gradient(self.network, x, y, self.device.variability, self.device.seed)
        row = {"step": step}
        for l, (g, e) in enumerate(zip(grads, exact)):
            host = type(g)(K.to_host(g.W), None if g.b is None else K.to_host(g.b))
            row[f"layer_{l}"] = _cosine(host, e)
        self.recorder.log("alignment", row)

    def evaluate(self, x, y) -> tuple[float, float]:
        """Mean loss and accuracy (NaN for regression) of one pass over (x, y)."""
        s = self.settings
        total_loss, correct = 0.0, 0
        for start in range(0, x.shape[0], s.eval_batch_size):
            xb, yb = x[start:start + s.eval_batch_size], y[start:start + s.eval_batch_size]
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
        self.device.pull()
        return Result(status, message, self.step, self.epoch, getattr(self, "last_eval", {}))


def _cosine(g, e) -> float:
    a = np.concatenate([g.W.ravel()] + ([g.b.ravel()] if g.b is not None else [])).astype(np.float64)
    b = np.concatenate([e.W.ravel()] + ([e.b.ravel()] if e.b is not None else [])).astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else math.nan


def _takes_out(estimate) -> bool:
    """Whether a rule's ``estimate`` accepts ``out`` (the optimiser's gradient arena); a
    rule written without it returns new arrays, which the optimiser copies in."""
    try:
        return "out" in inspect.signature(estimate).parameters
    except (TypeError, ValueError):  # pragma: no cover - a callable without a signature
        return False
