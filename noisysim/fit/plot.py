"""The ``noise fit --plot`` figure: data against the fitted model in four panels.

Trace (the first samples of device 0 and a trace simulated by the fitted noise model),
amplitude histogram against the fitted density, Bartlett PSD against the model's expected
PSD, and autocorrelation against the model's. Uses matplotlib's Agg canvas directly (no
pyplot), like noisysim.plot.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .core import ACF_LAGS, FitResult, psd_segment, simulate
from .models import _acf_lags, bartlett_psd, expected_bartlett_psd

__all__ = ["plot_fit"]

SHOWN = 300  # samples of the trace panel


def plot_fit(res: FitResult, path, seed: int = 0, fmt: str | None = None) -> None:
    """Write the four-panel figure of ``res`` (its ``data``) to ``path``; fmt: png, pdf,
    svg (default: from the name)."""
    y = res.data
    fam, theta = res.family, np.array(list(res.params_per_sample.values()))
    fig = Figure(figsize=(10, 7), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots(2, 2)
    unit = " [s]" if res.dt is not None else " [samples]"
    scale = res.dt if res.dt is not None else 1.0
    n = min(SHOWN, y.shape[0])
    sim = simulate(res.noise_per_sample, n, seed=seed)
    t = np.arange(n) * scale
    ax[0, 0].plot(t, y[:n, 0], lw=0.8, label="data")
    ax[0, 0].plot(t, sim[:, 0], lw=0.8, alpha=0.8, label=f"simulated {res.model}")
    ax[0, 0].set(title="trace", xlabel="time" + unit, ylabel="value")
    ax[0, 0].legend(loc="upper right", fontsize=8)

    ax[0, 1].hist(y.ravel(), bins=100, density=True, alpha=0.5, label="data")
    x = np.linspace(y.min(), y.max(), 400)
    dens = fam.pdf(theta, x)
    if isinstance(dens, tuple):  # discrete: stems at the levels
        ax[0, 1].stem(dens[0], dens[1], linefmt="C1-", markerfmt="C1o", basefmt=" ",
                      label="model (probability)")
    else:
        ax[0, 1].plot(x, dens, color="C1", label="model")
    ax[0, 1].set(title="amplitude distribution", xlabel="value", ylabel="density")
    ax[0, 1].legend(loc="upper right", fontsize=8)

    L = psd_segment(y.shape[0])
    f, p, _ = bartlett_psd(y, L)
    model = expected_bartlett_psd(fam.acov(theta, L - 1), L)
    band = slice(1, len(f) - 1)  # no DC (mean removed), no Nyquist
    ax[1, 0].loglog(f[band] / scale, p[band] * scale, lw=0.8, label="data (Bartlett)")
    ax[1, 0].loglog(f[band] / scale, model[band] * scale, lw=1.2, label="model")
    ax[1, 0].set(title=f"PSD (distance {res.psd_distance:.3f} decades)",
                 xlabel="frequency" + (" [Hz]" if res.dt is not None else " [1/sample]"),
                 ylabel="one-sided PSD")
    ax[1, 0].legend(loc="lower left", fontsize=8)

    ac = _acf_lags(y, ACF_LAGS)
    mac = fam.acov(theta, ACF_LAGS)
    lags = np.arange(ACF_LAGS + 1) * scale
    ax[1, 1].plot(lags, ac / ac[0], "o", ms=3, label="data")
    ax[1, 1].plot(lags, mac / mac[0], lw=1.2, label="model")
    ax[1, 1].set(title=f"autocorrelation (distance {res.acf_distance:.3f})",
                 xlabel="lag" + unit, ylabel="correlation")
    ax[1, 1].legend(loc="upper right", fontsize=8)
    for a in (ax[0, 0], ax[0, 1], ax[1, 1]):  # linear x axes: few ticks, 1e-6 as a factor
        a.xaxis.set_major_locator(MaxNLocator(5))
        a.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useOffset=False)
    src = os.path.basename(res.source.get("file", "array"))
    fig.suptitle(f"{res.model} fit of {src}: loglik {res.loglik:.1f}, BIC {res.bic:.1f}",
                 fontsize=10)
    fig.savefig(path, dpi=110, format=fmt)
