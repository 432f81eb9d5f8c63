"""One run from a resolved configuration: build the objects, train, stream to HDF5.

``build(config)`` turns the plain config dict (``noisysim.config``'s ``to_dict()``) into
the network, device, rule, optimiser, decorrelator, data and settings; ``run(...)`` trains
them with a ``TrajectoryWriter``, handles SIGINT/SIGTERM (checkpoint, status "interrupted")
and resumes from a file's checkpoint so that the finished trajectory equals an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .data import load_dataset
from .decorrelation import Decorrelator
from .device import Device
from .errors import NoisysimError
from .network import Network
from .noise import make_noise
from .optim import make_optimizer
from .record import TrajectoryWriter
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
        loss=model["loss"],
    )
    noise_opts = dict(config.get("noise") or {"model": "none"})
    noise_name = noise_opts.pop("model")
    noise_layers = noise_opts.pop("layers", "all")
    noise = make_noise(noise_name, **noise_opts)
    device = Device(network, noise=noise, noise_layers=noise_layers, seed=seed)
    opt_opts = dict(config["optimizer"])
    optimizer = make_optimizer(opt_opts.pop("name"), **opt_opts)
    decorrelator = Decorrelator(**config["decorrelation"]) if rule.decorrelated else None
    if data is None:
        data_opts = dict(config["data"])
        data = load_dataset(data_opts.pop("name"), **data_opts)
    settings = TrainSettings(**config["train"])
    return Built(network, device, rule, optimizer, decorrelator, data, settings)


class _StopFlag:
    """Set by SIGINT/SIGTERM; the engine checkpoints at the end of the current step."""

    def __init__(self):
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    @contextlib.contextmanager
    def installed(self):
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


def run(config: dict, out_dir: str | Path = "runs", *, path: str | Path | None = None,
        resume: str | Path | None = None, overwrite: bool = False,
        progress: Callable | None = None, data=None, flush_seconds: float = 5.0) -> tuple[Result, Path]:
    """Train one configured run, streaming its trajectory; returns (result, file path).

    ``resume`` names an interrupted trajectory: its stored config is used, the run continues
    from its checkpoint and rows written after that checkpoint are replaced.
    """
    stop = _StopFlag()
    if resume is not None:
        path = Path(resume)
        if not path.exists():
            raise NoisysimError(f"cannot resume {path}: no such file")
        writer = TrajectoryWriter(path, None, None, mode="resume", flush_seconds=flush_seconds)
        config = writer.config
        state = writer.read_checkpoint()
    else:
        path = Path(path) if path is not None else trajectory_path(config, out_dir)
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
                              progress=progress, should_stop=stop)
            if state is not None:
                trainer.load_state_dict(state)
                writer.truncate_after(trainer.step)
            elif resume is not None:
                writer.truncate_after(0)
            result = trainer.run()
        except NoisysimError as err:
            writer.set_status("failed", str(err))
            raise
        writer.set_status(result.status, result.message)
    if stop.signal is not None:
        result.message = f"stopped by signal {signal.Signals(stop.signal).name} at step {result.step}"
    return result, path


class Progress:
    """A progress line (step, epoch, loss, accuracy, ETA): redrawn in place on a terminal,
    plain periodic lines (every ``every_s`` seconds) when output is not a terminal."""

    def __init__(self, label: str = "", stream=None, every_s: float = 10.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.label = label
        self.every_s = every_s
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, step, total, epoch, row):
        now = time.monotonic()
        final = step == total
        if not final and now - self.last < (0.2 if self.tty else self.every_s):
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / step * (total - step) if step else float("nan")
        acc = row.get("accuracy")
        text = (f"{self.label}step {step}/{total} epoch {epoch + (0 if final else 1)} "
                f"loss {row['loss']:.4f}" + (f" acc {acc:.3f}" if acc is not None else "")
                + f" ETA {_fmt_time(eta)}")
        if self.tty:
            width = 30
            done = int(width * step / total)
            bar = "#" * done + "-" * (width - done)
            self.stream.write(f"\r[{bar}] {text}   ")
            if final:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _fmt_time(seconds: float) -> str:
    if seconds != seconds:
        return "--:--"
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m:d}:{s:02d}"
