"""The main job: what ``noisysim run`` does without a config file, callable from Python.

One run per rule of ``MAIN_RULES`` on the embedded default config
(``noisysim/defaults/default.toml``: the shipped digits, a 64-64-10 MLP, Gaussian intrinsic
noise of sigma 0.01 on every pre-activation), each streamed to ``<out>/<name>.h5``; then
the final test accuracies per rule (mean, std, n, as ``noisysim summary`` prints them) and
``<out>/comparison.png`` (test accuracy per epoch). A run whose file already holds a
completed run of the same config is reused, unless ``overwrite``.

    from noisysim.main_job import main_job
    job = main_job(["train.epochs=5"], out="runs/main")
    job.rows        # [{"rule.name": "anp", "mean": ..., "std": ..., "n": 1, ...}, ...]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .errors import NoisysimError

MAIN_RULES = ("bp", "np", "anp", "danp")


@dataclass
class MainJob:
    """What the main job left: one trajectory per rule run so far (``MAIN_RULES`` order),
    the summary rows and the figure (None when a run was interrupted: the job stops there;
    calling it again reuses the completed runs and reruns that rule)."""

    out: Path
    paths: list[Path] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    figure: Path | None = None
    interrupted: bool = False


def main_job(overrides: Iterable[str] = (), out: str | Path = "runs/main", *,
             overwrite: bool = False, echo: Callable[[str], None] = print,
             report: Callable | None = None, progress: bool = True) -> MainJob:
    """Run the main job (see the module docstring) and return what it wrote.

    ``overrides``: ``--set`` strings applied to every run (``rule.name`` is the job's;
    ``name=X`` names the runs ``X-<rule>``). ``echo`` receives the job's lines (the header,
    reused runs, the table, the figure); ``report(result, path, start)`` is called after
    each run (the command line prints its summary there). ``progress``: a progress line per
    run on stderr.
    """
    # imported here: the command line imports MAIN_RULES at start-up, before any work
    from .analysis import format_table, summarize
    from .config import load_config
    from .experiment import Progress, build, run
    from .plot import plot_curves

    overrides = list(overrides)
    job = MainJob(Path(out))
    base = load_config(None, overrides).to_dict()
    echo(f"noisysim main job: {', '.join(MAIN_RULES)} on {base['data']['name']} with "
         f"{base['noise']['model']} intrinsic noise -> {job.out}/")
    data = None  # loaded once, shared by the runs
    for rule in MAIN_RULES:
        # named <rule>-digits unless --set name=... (then <name>-<rule>)
        ov = overrides + [f"rule.name={rule}"]
        if any(o.startswith("name=") for o in overrides):
            ov.append(f"name={base['name']}-{rule}")
        config = load_config(None, ov).to_dict()
        path = job.out / f"{config['name']}.h5"
        if path.exists() and not overwrite and _completed(path, config):
            echo(f"{rule}: already completed in {path} (use --overwrite to rerun)")
        else:
            if data is None:
                data = build(config).data
            start = time.monotonic()
            result, path = run(config, job.out, overwrite=True, data=data,
                               progress=Progress(f"{rule:>5} ") if progress else None)
            if report is not None:
                report(result, path, start)
            if result.status == "interrupted":
                job.interrupted = True
                return job
        job.paths.append(path)
    job.rows = summarize(job.paths, by=["rule.name"], metric="eval/test_accuracy")
    echo("\nfinal test accuracy (noise-free inference):")
    echo(format_table(job.rows))
    job.figure = job.out / "comparison.png"
    plot_curves(job.paths, job.figure, metric="eval/test_accuracy", by="rule.name", x="epoch")
    echo(f"figure: {job.figure}")
    return job


def _completed(path: Path, config: dict) -> bool:
    """Whether ``path`` holds a completed run of exactly this config."""
    from .record import Trajectory, config_to_json

    try:
        t = Trajectory(path)
        return t.status == "completed" and config_to_json(t.config) == config_to_json(config)
    except NoisysimError:
        return False
