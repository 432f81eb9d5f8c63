"""Fitting noise models to a recorded device trace (``noisysim noise fit``).

    from noisysim.fit import fit_trace
    res = fit_trace("trace.npy", "smtj", dt=1e-6, step_dt=1e-6)
    res.params, res.se, res.loglik, res.bic     # per-step parameters and standard errors
    res.noise                                    # the noise model, ready for Device
    open("noise.toml", "w").write(res.to_toml()) # config: [noise] file = "noise.toml"

Modules: io (reading traces), hmm (numba likelihood loops), models (the families and the
maximiser), core (fit_trace, FitResult, simulate), plot (the --plot figure), cli (the
command), bench (the speed benchmark).
"""

import importlib

__all__ = ["fit_trace", "FitResult", "simulate", "read_trace", "format_table", "MODELS",
           "AUTO_CANDIDATES", "PoorFitWarning"]


def __getattr__(name):
    # Lazy: `noisysim --help` registers the fit command through noisysim.fit.cli without
    # paying for scipy.optimize/signal/stats and the likelihood kernels.
    if name in __all__:
        module = importlib.import_module(".io" if name == "read_trace" else ".core", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
