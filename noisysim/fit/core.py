"""Fit a noise model to a recorded trace: ``fit_trace`` and its ``FitResult``.

Time: the fit works in samples of the trace. One forward pass of the network is one time
step; ``step_dt`` says how much device time a pass takes and ``dt`` how much a sample
does, so one step lasts r = step_dt / dt samples. The per-step parameters of the noise
model are then

    tau_step  = tau / r                                   (ou, pink base_tau)
    p_step    = (1 - (1 - 2 p_flip)^r) / 2                (telegraph, smtj: the flip
                                                           probability over r samples)

and white parts (sigma of gaussian, read-out sigma) are per reading and stay as they are.
Standard errors follow by the delta method. Without ``step_dt`` one sample is one step.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from ..errors import NoisysimError, check_number
from ..noise import NoiseModel
from .io import check_samples, read_trace
from .models import (FAMILIES, Family, _acf_lags, bartlett_psd, expected_bartlett_psd,
                     make_family)

__all__ = ["FitResult", "fit_trace", "simulate", "PoorFitWarning", "AUTO_CANDIDATES", "MODELS"]

MODELS = tuple(FAMILIES) + ("auto",)
# auto compares these (smtj is the two-level telegraph under other names)
AUTO_CANDIDATES = ("gaussian", "ou", "telegraph", "pink")  # telegraph with `levels` levels
ACF_LAGS = 64


@dataclass
class FitResult:
    """One fitted model.

    params / se: per-step parameters (what ``noise`` uses) and their standard errors;
    params_per_sample / se_per_sample: the same in samples of the trace; loglik: the
    exact time-domain log-likelihood at the estimate (natural log; the maximum except for
    pink, whose estimate is spectral; for a trace without read-out noise a
    log-probability); bic = k ln N - 2 loglik over N = samples x devices; psd_distance
    (decades, RMS of log10 data/model Bartlett PSD) and acf_distance (largest absolute
    difference of the autocorrelation over lags 1..64): model checks. candidates: the rows
    of the auto table (empty unless model="auto").
    """

    model: str
    family: Family
    params: dict
    se: dict
    params_per_sample: dict
    se_per_sample: dict
    loglik: float
    bic: float
    n_samples: int
    n_devices: int
    psd_distance: float
    acf_distance: float
    noise: NoiseModel
    noise_per_sample: NoiseModel
    source: dict = field(default_factory=dict)
    dt: float | None = None
    step_dt: float | None = None
    candidates: list = field(default_factory=list)
    device: int | None = None
    data: np.ndarray | None = field(default=None, repr=False)  # the (T, D) samples fitted
    date: str = field(default_factory=lambda: datetime.datetime.now(
        datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))

    @property
    def samples_per_step(self) -> float:
        return 1.0 if self.step_dt is None else self.step_dt / self.dt

    def provenance(self) -> dict:
        """Where the parameters came from (written into the TOML and kept in every
        trajectory that uses it as ``noise.provenance``)."""
        out = {"fitted_by": f"noisysim {__version__} noise fit", "date": self.date}
        for k in ("file", "dataset", "column", "sha256"):
            if self.source.get(k) is not None:
                out["trace" if k == "file" else k] = self.source[k]
        if self.device is not None:
            out["device"] = self.device
        out.update(samples=self.n_samples, devices=self.n_devices, model=self.model,
                   loglik=self.loglik, bic=self.bic)
        if self.dt is not None:
            out["dt"] = self.dt
        if self.step_dt is not None:
            out["step_dt"] = self.step_dt
        out["params"] = dict(self.params)
        out["se"] = dict(self.se)
        return out

    def to_toml(self) -> str:
        """A ``[noise]`` section (noise.file = "this.toml" in a config, or paste it)."""
        prov = self.provenance()
        r = self.samples_per_step
        lines = [f"# Noise model fitted by {prov['fitted_by']} on {prov['date']}"]
        if "trace" in prov:
            where = prov["trace"] + (f":{prov['dataset']}" if prov.get("dataset") else "")
            where += f" column {prov['column']!r}" if prov.get("column") else ""
            lines.append(f"# trace: {where}")
            lines.append(f"#   sha256 {prov['sha256']}")
        lines.append(f"#   {self.n_samples} samples x {self.n_devices} device(s)"
                     + (f", device {self.device}" if self.device is not None else ""))
        if self.dt is not None:
            lines.append(f"# dt = {self.dt!r} s per sample" + (
                f"; step_dt = {self.step_dt!r} s per pass ({r:g} samples per step)"
                if self.step_dt is not None else "; one sample = one step"))
        lines.append(f"# model {self.model}: log-likelihood {self.loglik:.6f}, "
                     f"BIC {self.bic:.3f}")
        lines.append("# parameters per step +- standard error"
                     + ("" if r == 1 else " (per sample in brackets)") + ":")
        for k, v in self.params.items():
            extra = "" if r == 1 else (f"  [{self.params_per_sample[k]:.8g} +- "
                                       f"{self.se_per_sample[k]:.2g}]")
            lines.append(f"#   {k} = {v:.8g} +- {self.se[k]:.2g}{extra}")
        if self.candidates:
            lines.append("# auto: candidates by BIC")
            lines += ["#   " + row for row in format_table(self.candidates).splitlines()]
        lines.append("")
        lines.append("[noise]")
        lines.append(f"model = {json.dumps(self.noise.name)}")
        for k, v in self.noise.params().items():
            lines.append(f"{k} = {_toml_value(v)}")
        lines.append(f"provenance = {_toml_value(prov)}")
        return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise AssertionError(type(v))


def simulate(noise: NoiseModel, n_samples: int, devices: int = 1, seed: int = 0,
             layer: int = 0) -> np.ndarray:
    """(n_samples, devices) float64 trace of ``noise`` (one sample per time step),
    drawn by the model's own kernels: what a layer of ``devices`` nodes would see."""
    a = np.zeros((int(n_samples), 1, int(devices)))
    noise.apply(a, np.arange(int(n_samples), dtype=np.int64),
                noise.init_state(seed, layer, 1, int(devices)), seed, layer)
    return a[:, 0, :]


def _per_step(family: Family, theta, cov, r):
    """Per-step parameters and covariance (delta method) for r samples per step."""
    theta = np.array(theta, dtype=np.float64)
    jac = np.ones(len(theta))
    for i, kind in enumerate(family.kinds):
        if kind == "time":
            theta[i], jac[i] = theta[i] / r, 1.0 / r
        elif kind == "prob" and r != 1.0:
            base = 1.0 - 2.0 * theta[i]
            if base < 0 and not float(r).is_integer():
                raise NoisysimError(
                    f"p_flip = {theta[i]:.4g} per sample (> 1/2: anti-correlated) cannot be "
                    f"converted to {r:g} samples per step (step_dt / dt must be an integer)")
            theta[i], jac[i] = (1.0 - base**r) / 2.0, r * base ** (r - 1.0)
    return theta, cov * np.outer(jac, jac)


class PoorFitWarning(UserWarning):
    """The fitted model's PSD is further from the data's than estimation noise explains."""


def _distances(family: Family, theta, y):
    """(PSD distance in decades, ACF distance, PSD distance that estimation noise alone
    gives) between the data and the fitted model. A Bartlett bin averages m periodograms,
    P = S Gamma(m, 1/m), so log10(P / S) has std ~ log10(e) / sqrt(m): the RMS distance of
    a right model."""
    L = psd_segment(y.shape[0])
    f, p, m = bartlett_psd(y, L)
    model = expected_bartlett_psd(family.acov(theta, L - 1), L)
    band = slice(1, len(f) - 1)
    psd = float(np.sqrt(np.mean(np.log10(p[band] / model[band]) ** 2)))
    ac = _acf_lags(y, ACF_LAGS)
    mac = family.acov(theta, ACF_LAGS)
    acf = float(np.max(np.abs(ac[1:] / ac[0] - mac[1:] / mac[0])))
    return psd, acf, math.log10(math.e) / math.sqrt(m)


def psd_segment(n: int) -> int:
    """Segment length of the model-check PSD (distances and plot): 8 or more segments of
    16..1024 samples."""
    return int(min(1024, max(16, 2 ** int(math.log2(max(n // 8, 16))))))


def _fit_one(family: Family, y, r):
    if y.shape[0] < family.min_samples:
        raise NoisysimError(
            f"the trace has {y.shape[0]} samples per device; a {family.label()} fit needs at "
            f"least {family.min_samples}")
    theta, cov = family.fit(y)
    loglik = family.loglik(theta, y)
    bic = family.n_free() * math.log(y.size) - 2.0 * loglik
    psd, acf, noise_level = _distances(family, theta, y)
    step, cov_step = _per_step(family, theta, cov, r)
    se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    se_step = np.sqrt(np.maximum(np.diag(cov_step), 0.0))
    return dict(theta=theta, se=se, step=step, se_step=se_step, loglik=loglik, bic=bic,
                psd=psd, acf=acf, psd_noise=noise_level)


def _result(family, fit, y, source, dt, step_dt, device=None, candidates=()):
    if fit["psd"] > 3 * fit["psd_noise"]:
        warnings.warn(
            f"{'' if device is None else f'device {device}: '}the {family.label()} fit is "
            f"{fit['psd'] / fit['psd_noise']:.1f} times further from the data's PSD "
            f"({fit['psd']:.3f} decades RMS) than estimation noise explains "
            f"({fit['psd_noise']:.3f}); the trace may follow none of these models "
            "(look at --plot)", PoorFitWarning, stacklevel=3)
    names = family.params
    return FitResult(
        model=family.name if getattr(family, "levels", 2) == 2 else family.label(),
        family=family,
        params={k: float(v) for k, v in zip(names, fit["step"])},
        se={k: float(v) for k, v in zip(names, fit["se_step"])},
        params_per_sample={k: float(v) for k, v in zip(names, fit["theta"])},
        se_per_sample={k: float(v) for k, v in zip(names, fit["se"])},
        loglik=float(fit["loglik"]), bic=float(fit["bic"]), n_samples=y.shape[0],
        n_devices=y.shape[1], psd_distance=fit["psd"], acf_distance=fit["acf"],
        noise=family.noise(fit["step"]), noise_per_sample=family.noise(fit["theta"]),
        source=dict(source), dt=dt, step_dt=step_dt, candidates=list(candidates),
        device=device, data=y)


def format_table(rows) -> str:
    """The auto table: one line per candidate, best BIC marked with *."""
    head = f"  {'model':<22} {'loglik':>16} {'BIC':>16} {'PSD dist':>9} {'ACF dist':>9}"
    out = [head]
    for row in rows:
        if "error" in row:
            out.append(f"  {row['model']:<22} not fitted: {row['error']}")
        else:
            mark = "*" if row.get("chosen") else " "
            out.append(f"{mark} {row['model']:<22} {row['loglik']:16.3f} {row['bic']:16.3f} "
                       f"{row['psd_distance']:9.4f} {row['acf_distance']:9.4f}")
    return "\n".join(out)


def _fit_auto(y, r, source, dt, step_dt, device, levels):
    fits, rows = [], []
    discrete = len(np.unique(y)) <= levels
    for name in AUTO_CANDIDATES:
        family = make_family(name, levels)
        if discrete and name != "telegraph":
            rows.append({"model": family.label(), "error": f"the trace takes only "
                         f"{len(np.unique(y))} distinct values (a density model is degenerate)"})
            continue
        try:
            fit = _fit_one(family, y, r)
        except NoisysimError as exc:
            # the table keeps the first clause (e.g. "the ou fit did not converge")
            rows.append({"model": family.label(), "error": str(exc).split(" (")[0]})
            continue
        fits.append((family, fit))
        rows.append({"model": family.label(), "loglik": fit["loglik"], "bic": fit["bic"],
                     "psd_distance": fit["psd"], "acf_distance": fit["acf"]})
    if not fits:
        reasons = "; ".join(f"{r['model']}: {r['error']}" for r in rows)
        raise NoisysimError(f"no candidate model could be fitted ({reasons})")
    best = min(range(len(fits)), key=lambda i: fits[i][1]["bic"])
    best_label = fits[best][0].label()
    for row in rows:
        row["chosen"] = row["model"] == best_label
    family, fit = fits[best]
    return _result(family, fit, y, source, dt, step_dt, device, rows)


def fit_trace(trace, model: str = "auto", *, dt=None, step_dt=None, column=None,
              per_device: bool = False, levels: int = 2):
    """Fit ``model`` to a recorded trace; returns a FitResult (a list with per_device).

    trace: a path (.npy, .csv/.txt, ``file.h5:/dataset``) or an array, (T,) or (T, D) with
    one column per device; the D devices are independent realisations of one model (a
    joint fit) unless ``per_device``. model: gaussian, ou, telegraph, smtj, pink or auto
    (fit gaussian, ou, telegraph with ``levels`` levels and pink; pick the smallest BIC).
    dt: seconds per sample; step_dt: seconds per forward pass (needs dt). levels: telegraph
    levels (2 or more). Bad input raises NoisysimError (one line).
    """
    if model not in MODELS:
        raise NoisysimError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if dt is not None:
        dt = float(check_number("dt", dt, 0.0, lo_open=True))
    if step_dt is not None:
        step_dt = float(check_number("step_dt", step_dt, 0.0, lo_open=True))
        if dt is None:
            raise NoisysimError("step_dt needs dt (the seconds per sample of the trace): "
                                "give both, e.g. --dt 1e-6 --step-dt 1e-5")
    levels = check_number("levels", levels, 2, 16, integer=True)
    if isinstance(trace, (str, os.PathLike)):
        y, source = read_trace(trace, column)
    else:
        if column is not None:
            raise NoisysimError("column applies to a CSV/text trace file, not to an array")
        y = check_samples(trace, "array")
        # an array has no file: identify it by its float64 bytes, as TraceNoise does
        source = {"file": "array", "sha256": hashlib.sha256(y.tobytes()).hexdigest()}
    r = 1.0 if step_dt is None else step_dt / dt
    columns = [(j, y[:, j:j + 1]) for j in range(y.shape[1])] if per_device else [(None, y)]
    out = []
    for device, yy in columns:
        if model == "auto":
            out.append(_fit_auto(yy, r, source, dt, step_dt, device, levels))
        else:
            family = make_family(model, levels)
            out.append(_result(family, _fit_one(family, yy, r), yy, source, dt, step_dt,
                               device))
    return out if per_device else out[0]
