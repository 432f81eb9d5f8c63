"""``noisysim noise fit TRACE``: the command-line face of ``fit_trace``.

Prints the fitted parameters with standard errors (and the auto table), then writes the
``[noise]`` TOML (-o) and the figure (--plot). Outputs are written only after every fit
succeeded, each to a temporary file renamed into place, so a failure leaves nothing new
and an existing file is never replaced without --overwrite.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import NoisysimError

DESCRIPTION = (
    "Fit a noise model to a recorded device trace (.npy, .csv/.txt, or file.h5:/dataset; "
    "2-D = one column per device) by maximum likelihood (exact AR(1) for ou, the HMM "
    "forward algorithm for telegraph/smtj, Whittle on the Bartlett PSD for pink), with "
    "standard errors from the observed information; auto fits every family and picks the "
    "smallest BIC. Writes a [noise] section a config includes with [noise] file = "
    "\"noise.toml\".")


def add_parser(sub, common) -> None:
    """Register ``noise fit`` under the ``noisysim`` subcommands."""
    noise = sub.add_parser("noise", parents=[common], help="device noise tools (fit)",
                           description="Device noise tools.")
    nsub = noise.add_subparsers(dest="noise_command", metavar="ACTION", required=True)
    f = nsub.add_parser("fit", parents=[common], help="fit a noise model to a recorded trace",
                        description=DESCRIPTION)
    f.add_argument("trace", help="trace.npy, trace.csv (--column NAME) or file.h5:/dataset")
    f.add_argument("--model", default="auto",
                   help="gaussian, ou, telegraph, smtj, pink or auto (the default)")
    f.add_argument("--levels", type=int, default=2,
                   help="telegraph levels (2 or more; also the telegraph that auto tries)")
    f.add_argument("--dt", type=float, default=None, help="seconds per sample of the trace")
    f.add_argument("--step-dt", type=float, default=None,
                   help="seconds of device time per forward pass (needs --dt); default: "
                        "one sample = one pass")
    f.add_argument("--column", default=None, help="CSV column (header name) to fit")
    f.add_argument("--per-device", action="store_true",
                   help="fit each column separately (default: one joint fit)")
    f.add_argument("-o", "--output", default=None,
                   help="write the [noise] TOML here (per device: NAME.<device>.toml)")
    f.add_argument("--plot", default=None, help="write the data-vs-model figure (.png/.pdf/.svg)")
    f.add_argument("--overwrite", action="store_true", help="replace existing output files")
    f.set_defaults(func=cmd_fit)


def _outputs(path, n, per_device):
    if path is None:
        return [None] * n
    if not per_device:
        return [Path(path)]
    p = Path(path)
    return [p.with_name(f"{p.stem}.{d}{p.suffix or '.toml'}") for d in range(n)]


def _refuse_existing(paths, overwrite: bool) -> None:
    for path in paths:
        if path is not None and path.exists() and not overwrite:
            raise NoisysimError(f"{str(path)!r} exists; pass --overwrite to replace it")


def _write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def cmd_fit(args) -> int:
    from .core import fit_trace, format_table

    for out in (args.output, args.plot):
        if out is not None and not Path(out).parent.is_dir():
            raise NoisysimError(f"output folder {str(Path(out).parent)!r} does not exist")
    if not args.per_device:  # refuse before fitting (per device: once the count is known)
        _refuse_existing(_outputs(args.output, 1, False) + _outputs(args.plot, 1, False),
                         args.overwrite)
    results = fit_trace(args.trace, args.model, dt=args.dt, step_dt=args.step_dt,
                        column=args.column, per_device=args.per_device, levels=args.levels)
    results = results if isinstance(results, list) else [results]
    tomls = _outputs(args.output, len(results), args.per_device)
    plots = _outputs(args.plot, len(results), args.per_device)
    _refuse_existing(tomls + plots, args.overwrite)
    for res in results:
        who = "" if res.device is None else f"device {res.device}: "
        if res.candidates:
            print(f"{who}candidates (auto, * = smallest BIC):")
            print(format_table(res.candidates))
        print(f"{who}{res.model}: loglik {res.loglik:.3f}, BIC {res.bic:.3f}, "
              f"{res.n_samples} samples x {res.n_devices} device(s)")
        for k, v in res.params.items():
            print(f"  {k:<10} = {v:.8g} +- {res.se[k]:.2g}")
        print(f"  noise model: {res.noise!r}")
    from .plot import plot_fit

    for res, toml, fig in zip(results, tomls, plots):
        if toml is not None:
            _write(toml, lambda p, r=res: p.write_text(r.to_toml()))
            print(f"wrote {toml}")
        if fig is not None:
            fmt = fig.suffix.lstrip(".") or "png"
            _write(fig, lambda p, r=res, f=fmt: plot_fit(r, p, fmt=f))
            print(f"wrote {fig}")
    return 0
