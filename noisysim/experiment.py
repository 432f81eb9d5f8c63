"""One run from a resolved configuration: build the objects, train, stream to HDF5.

``build(config)`` turns the plain config dict (``noisysim.config``'s ``to_dict()``) into
the network, device, rule, optimiser, decorrelator, data and settings; ``run(...)`` trains
them with a ``TrajectoryWriter``, handles SIGINT/SIGTERM (checkpoint, status "interrupted")
and resumes from a file's checkpoint so that the finished trajectory equals an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .data import load_dataset
from .decorrelation import Decorrelator
from .device import Device
from .errors import NoisysimError
from .network import Network
from .noise import make_noise
from .hardware import WEIGHT_DEVICE_KEYS, Readout, Variability, WeightDevice
from .optim import make_optimizer
from .record import Trajectory, TrajectoryWriter
from .rules import make_rule
from .train import Result, Trainer, TrainSettings


@dataclass
class Built:
    network: Network
    device: Device
    rule: object
    optimizer: object
    decorrelator: Decorrelator | None
    data: object
    settings: TrainSettings
    backend: str = "cpu"
    graphs: bool = False


def build(config: dict, data=None) -> Built:
    """Objects for one run; ``data`` may be passed to share a loaded dataset between runs."""
    seed = int(config["seed"])
    rule_opts = dict(config["rule"])
    rule = make_rule(rule_opts.pop("name"), **rule_opts)
    model = dict(config["model"])
    network = Network(
        model["layers"], activation=model["activation"],
        activation_params=model.get("activation_params") or {},
        output_activation=model.get("output_activation", "identity"), bias=model["bias"],
        init=model["init"], decorrelation=rule.decorrelated, dtype=model["dtype"], seed=seed,
        loss=model["loss"], input_shape=model.get("input_shape"),
    )
    noise_opts = dict(config.get("noise") or {"model": "none"})
    noise_name = noise_opts.pop("model")
    noise_layers = noise_opts.pop("layers", "all")
    hold_upstream = noise_opts.pop("hold_upstream", False)
    noise_opts.pop("provenance", None)  # where fitted parameters came from: record only
    variability = Variability(**noise_opts.pop("variability", {}))
    noise = make_noise(noise_name, **noise_opts)
    readout = Readout(**config["measurement"]) if "measurement" in config else None
    device = Device(network, noise=noise, noise_layers=noise_layers, seed=seed,
                    hold_upstream=hold_upstream, readout=readout, variability=variability)
    opt_opts = dict(config["optimizer"])
    device_opts = {k: opt_opts.pop(k) for k in WEIGHT_DEVICE_KEYS if k in opt_opts}
    weight_device = WeightDevice(device_opts.pop("device", "ideal"), **device_opts, seed=seed)
    optimizer = make_optimizer(opt_opts.pop("name"), weight_device=weight_device, **opt_opts)
    decorrelator = Decorrelator(**config["decorrelation"]) if rule.decorrelated else None
    if data is None:
        data_opts = dict(config["data"])
        data = load_dataset(data_opts.pop("name"), **data_opts)
    settings = TrainSettings(**config["train"])
    backend = _backend(config.get("backend", {}).get("name", "auto"), rule, device, optimizer,
                       settings.batch_size)
    graphs = bool(config.get("backend", {}).get("graphs", False))
    return Built(network, device, rule, optimizer, decorrelator, data, settings, backend,
                 graphs)


def _backend(name: str, rule, device, optimizer, batch_size: int) -> str:
    """cpu or cuda; "auto" picks cuda only when a GPU is usable and the step is large enough
    to gain from it (``noisysim.backends.AUTO_CUDA_MIN_GFLOP``), and says so once."""
    from .backends import resolve_backend
    from .bench import step_products

    flop = sum(2.0 * m * k * n for m, k, n in
               step_products(rule, device.network.widths, batch_size,
                             device.random_layers(), device.network.maps))
    return resolve_backend(name, step_gflop=flop / 1e9)


#: Seconds between flushes of buffered rows to the file (what a SIGKILL can lose at most).
#: ``NOISYSIM_FLUSH_SECONDS`` overrides it (e.g. 1 on a flaky cluster, 0.2 in tests).
FLUSH_SECONDS = 5.0


def flush_seconds_default() -> float:
    text = os.environ.get("NOISYSIM_FLUSH_SECONDS", "")
    if not text:
        return FLUSH_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise NoisysimError(f"NOISYSIM_FLUSH_SECONDS must be a number of seconds > 0, got "
                            f"{text!r}; unset it or set e.g. NOISYSIM_FLUSH_SECONDS=1")
    return value


class _StopFlag:
    """Set by SIGINT/SIGTERM; the engine checkpoints at the end of the current step.

    Handlers are installed only in the main thread (Python allows no other); a run in a
    worker thread (Dask) is stopped by its host process instead.
    """

    def __init__(self):
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            self.signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def trajectory_path(config: dict, out_dir: str | Path) -> Path:
    return Path(out_dir) / f"{config['name']}.h5"


def _resumable(path: Path) -> None:
    """Refuse to resume a file that is missing, unreadable or already finished."""
    if not path.exists():
        raise NoisysimError(f"cannot resume {path}: no such file; start the run without --resume")
    try:
        status = Trajectory(path).status
    except NoisysimError:
        return  # a killed writer's file: TrajectoryWriter repairs it or says why not
    if status == "completed":
        raise NoisysimError(f"cannot resume {path}: the run already completed; nothing to do "
                            "(use --overwrite with its config to run it again)")
    if status == "diverged":
        raise NoisysimError(f"cannot resume {path}: the run diverged, and would diverge again "
                            "from its checkpoint; change the config (e.g. a smaller optimizer.lr) "
                            "and start a new run")


def run(config: dict, out_dir: str | Path = "runs", *, path: str | Path | None = None,
        resume: str | Path | None = None, overwrite: bool = False,
        progress: Callable | None = None, data=None,
        flush_seconds: float | None = None) -> tuple[Result, Path]:
    """Train one configured run, streaming its trajectory; returns (result, file path).

    ``resume`` names an interrupted trajectory (or one whose writer was killed): its stored
    config is used (``config`` is ignored), the run continues from its last checkpoint and
    rows written after that checkpoint are replaced, so the finished file equals the one an
    uninterrupted run writes. ``flush_seconds`` (default ``flush_seconds_default()``) bounds
    what a killed process loses.
    """
    if flush_seconds is None:
        flush_seconds = flush_seconds_default()
    stop = _StopFlag()
    if resume is not None:
        path = Path(resume)
        _resumable(path)
        writer = TrajectoryWriter(path, None, None, mode="resume", flush_seconds=flush_seconds)
        try:
            config = writer.config
            state = writer.read_checkpoint()
        except BaseException:
            writer.close()
            raise
    else:
        path = Path(path) if path is not None else trajectory_path(config, out_dir)
        for folder in (path.parent, *path.parent.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise NoisysimError(f"cannot write {path}: {folder} is a file, not a folder; "
                                        "choose another output folder (--out)")
                break
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = TrajectoryWriter(path, config, int(config["seed"]),
                                  mode="overwrite" if overwrite else "new",
                                  flush_seconds=flush_seconds)
        state = None
    with writer, stop.installed():
        try:
            b = build(config, data)
            trainer = Trainer(b.device, b.rule, b.optimizer, b.data, b.settings,
                              decorrelator=b.decorrelator, recorder=writer, seed=int(config["seed"]),
                              progress=progress, should_stop=stop, backend=b.backend,
                              graphs=b.graphs)
            if state is not None:
                trainer.load_state_dict(state)
                writer.truncate_after(trainer.step)
            elif resume is not None:
                writer.truncate_after(-1)  # no checkpoint: start over (the step-0 eval too)
            if isinstance(progress, Progress):
                progress.begin(trainer.step, b.settings.epochs)
            # overflow on the way to a divergence is detected and reported by the engine
            # (status "diverged", step and layer); numpy's warnings would only add noise
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                result = trainer.run()
            if result.status == "diverged":
                result.message = _divergence_message(result.message, trainer)
            elif result.status == "completed":
                from .analysis import loss_explosion  # finite but 10x its start: say so

                writer.flush()
                result.message = loss_explosion(Trajectory(path)) or result.message
        except NoisysimError as err:
            writer.set_status("failed", str(err))
            raise
        if stop.signal is not None and result.status == "interrupted":
            result.message = f"stopped by {signal.Signals(stop.signal).name} at step {result.step}"
        writer.set_status(result.status, result.message)
    return result, path


def _divergence_message(message: str, trainer: Trainer) -> str:
    """The engine's message, plus the layer where the values first blow up if it names none.

    The failing batch is run through the network noise-free, layer by layer: the first layer
    whose pre-activations are not finite is named; otherwise (the noise or the perturbation
    pushed it over) the layer holding the largest weights.
    """
    if "layer" in message:
        return message
    net = trainer.network
    try:
        s = trainer.settings
        idx = trainer.order(trainer.epoch)[trainer.batch * s.batch_size:(trainer.batch + 1) * s.batch_size]
        h = np.asarray(trainer.data.x_train[idx], dtype=np.float64)
        with np.errstate(all="ignore"):
            for l, p in enumerate(net.layers):
                if p.R is not None:
                    h = h @ p.R.T.astype(np.float64)
                a = h @ p.W.T.astype(np.float64) + (p.b if p.b is not None else 0.0)
                if not np.all(np.isfinite(a)) or np.abs(a).max() > np.finfo(net.dtype).max:
                    return f"{message}: the pre-activations of layer {l} overflow"
                h = net.activations[l].forward(a.astype(net.dtype), trainer.seed, l).astype(np.float64)
    except Exception:  # a best-effort diagnosis must not hide the divergence itself
        pass
    sizes = [float(np.abs(p.W).max()) for p in net.layers]
    l = int(np.argmax(sizes))
    return f"{message}: layer {l} holds the largest weights (max |W| = {sizes[l]:.3g})"


class Progress:
    """Progress of a run on ``stream`` (stderr): a bar redrawn in place on a terminal; plain
    lines when the stream is not a terminal (a log file, a pipe): the first step, then one
    line every ``every_s`` seconds and the last step.

    Each line: step, epoch, loss, accuracy (classification), steps per second and ETA (from
    the rate since the first step, so compilation and data loading do not distort it).
    """

    def __init__(self, label: str = "", stream=None, every_s: float = 10.0):
        self.stream = stream or sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.label = label
        self.every_s = every_s
        self.epochs: int | None = None
        self.first: tuple[int, float] | None = None  # (step, time) of the first report
        self.last = -math.inf

    def begin(self, step: int, epochs: int | None = None) -> None:
        """Called by ``run`` before training: the starting step (resume) and the epochs."""
        self.epochs = epochs
        self.first = None

    def __call__(self, step, total, epoch, row):
        now = time.monotonic()
        if self.first is None:
            self.first = (step, now)
        final = step >= total
        if not final and now - self.last < (0.2 if self.tty else self.every_s):
            return
        self.last = now
        done_steps = step - self.first[0]
        rate = done_steps / (now - self.first[1]) if done_steps and now > self.first[1] else math.nan
        eta = (total - step) / rate if rate == rate and rate > 0 else (0.0 if final else math.nan)
        acc = row.get("accuracy")
        # ``epoch`` is the 0-based epoch the step belongs to; show it 1-based
        ep = f"epoch {epoch + 1}" + (f"/{self.epochs}" if self.epochs else "")
        text = (f"{self.label}step {step}/{total} {ep} loss {row['loss']:.4g}"
                + (f" acc {acc:.3f}" if acc is not None else "")
                + (f" {rate:.0f} steps/s" if rate == rate else "")
                + f" ETA {_fmt_time(eta)}")
        if self.tty:
            width = 30
            filled = int(width * step / total) if total else width
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] {text}\x1b[K")
            if final:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _fmt_time(seconds: float) -> str:
    if seconds != seconds or seconds == math.inf:
        return "--:--"
    m, s = divmod(int(seconds + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"
