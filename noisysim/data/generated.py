"""Generated data: the student-teacher problem (correlated Gaussian inputs, a fixed random
teacher network), drawn from the counter-based generator (stream STREAM_DATA)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from noisysim.errors import NoisysimError, check_choice, check_number
from noisysim.kernels import rng

from .dataset import (
    STEP_TARGET_NOISE,
    STEP_TEACHER_WEIGHTS,
    STEP_TEST_INPUTS,
    STEP_TRAIN_INPUTS,
    Dataset,
    _finish,
    _validation_indices,
)
from .registry import _COMMON, register


def teacher_forward(weights: Sequence[np.ndarray], x: np.ndarray,
                    slope: float = 0.01) -> np.ndarray:
    """Output of a teacher network (float64): leaky ReLU (``slope``) after every layer but
    the last, no biases: ``h_l = f(h_{l-1} @ W_l.T)``."""
    h = np.asarray(x, dtype=np.float64)
    for i, w in enumerate(weights):
        h = h @ np.asarray(w, dtype=np.float64).T
        if i < len(weights) - 1:
            h = np.where(h > 0, h, slope * h)
    return h


def _correlated_inputs(seed: int, step: int, n: int, d: int, c: float) -> np.ndarray:
    z = rng.normal_array(seed, rng.STREAM_DATA, step, 0, (n, d))
    s = rng.normal_array(seed, rng.STREAM_DATA, step, 1, (n,))
    return math.sqrt(1.0 - c) * z + math.sqrt(c) * s[:, None]


@register(
    "teacher",
    _COMMON + ("n_inputs", "n_outputs", "hidden", "correlation", "task", "target_noise", "slope"),
    dict(normalize="none", n_train=10000, n_test=2000, n_inputs=20, n_outputs=10, hidden=(),
         correlation=0.5, task="regression", target_noise=0.0, slope=0.01),
    "student-teacher problem: correlated Gaussian inputs, fixed random teacher network",
)
def _load_teacher(name, **o) -> Dataset:
    """Generated student-teacher data.

    Inputs x ~ N(0, Sigma) with the equicorrelated covariance
    ``Sigma = (1 - c) I + c 1 1^T`` (unit variances, every off-diagonal correlation equal to
    ``c = correlation`` in [0, 1)), built as ``x = sqrt(1-c) z + sqrt(c) s 1`` with
    z ~ N(0, I_d) and one shared s ~ N(0, 1) per example.
    Teacher: widths n_inputs -> *hidden -> n_outputs, no biases, W_l ~ N(0, g / fan_in) with
    g = 2 (He) for layers followed by leaky ReLU and g = 1 for the last (linear) layer.
    ``task="regression"``: y = teacher(x) + target_noise * N(0, 1) (float, (n, n_outputs));
    ``task="classification"``: y = argmax teacher(x) (int64, n_classes = n_outputs).
    Targets are computed from the returned (normalised, cast) inputs, so y == teacher(x_ds).
    All randomness: rng stream STREAM_DATA (see the STEP_* constants of this module).
    """
    n_in = check_number("n_inputs", o["n_inputs"], 1, None, integer=True)
    n_out = check_number("n_outputs", o["n_outputs"], 1, None, integer=True)
    hidden = o["hidden"]
    if hidden is None:
        hidden = ()
    if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool):
        hidden = (hidden,)
    if not isinstance(hidden, (list, tuple)):
        raise NoisysimError(f"hidden must be a list of layer widths, got {hidden!r}")
    hidden = tuple(check_number("hidden width", h, 1, None, integer=True) for h in hidden)
    c = check_number("correlation", o["correlation"], 0.0, 1.0, hi_open=True)
    task = check_choice("task", o["task"], ("regression", "classification"))
    noise = check_number("target_noise", o["target_noise"], 0.0, None)
    slope = check_number("slope", o["slope"], None, None)
    if task == "classification" and n_out < 2:
        raise NoisysimError(f"n_outputs must be >= 2 for task='classification', got {n_out}")
    if task == "classification" and noise > 0:
        raise NoisysimError("target_noise applies to task='regression' only; set it to 0")
    seed = o["seed"]
    n_train = o["n_train"] if o["n_train"] is not None else 10000
    n_test = o["n_test"] if o["n_test"] is not None else 2000
    widths = (n_in,) + hidden + (n_out,)
    weights = []
    for layer in range(len(widths) - 1):
        gain = 2.0 if layer < len(widths) - 2 else 1.0
        w = rng.normal_array(seed, rng.STREAM_DATA, STEP_TEACHER_WEIGHTS, layer,
                             (widths[layer + 1], widths[layer]))
        w *= math.sqrt(gain / widths[layer])
        w.flags.writeable = False
        weights.append(w)
    x_train = _correlated_inputs(seed, STEP_TRAIN_INPUTS, n_train, n_in, c)
    x_test = _correlated_inputs(seed, STEP_TEST_INPUTS, n_test, n_in, c)
    # Target noise is drawn per original row, so the split does not change its values.
    noise_rows = {}
    if noise > 0:
        noise_rows["train"] = rng.normal_array(seed, rng.STREAM_DATA, STEP_TARGET_NOISE, 0,
                                               (n_train, n_out))
        noise_rows["test"] = rng.normal_array(seed, rng.STREAM_DATA, STEP_TARGET_NOISE, 1,
                                              (n_test, n_out))
        if o["validation"] > 0:
            tr, va = _validation_indices(n_train, o["validation"], seed)
            noise_rows["val"] = noise_rows["train"][va]
            noise_rows["train"] = noise_rows["train"][tr]
    dt = o["dtype"]

    def targets(x, split):
        out = teacher_forward(weights, x, slope)
        if task == "classification":
            return np.argmax(out, axis=1).astype(np.int64)
        if noise > 0:
            out = out + noise * noise_rows[split]
        return out.astype(dt)

    meta = {
        "source": "generated by noisysim.data (teacher)",
        "license": "generated data, no restrictions",
        "teacher": weights,
        "teacher_widths": widths,
        "teacher_activation": f"leaky_relu(slope={slope}) after hidden layers, identity output",
        "teacher_bias": False,
        "task": task,
        "correlation": c,
        "covariance": "equicorrelated (1 - c) I + c 11^T: unit variances, off-diagonal c",
        "target_noise": noise,
        "seed": seed,
        "rng": "noisysim.kernels.rng, stream STREAM_DATA",
    }
    opts = dict(o, n_train=None, n_test=None)
    return _finish(name, x_train, None, x_test, None, opts=opts,
                   n_classes=n_out if task == "classification" else 0, unit_scale=None,
                   meta=meta, targets=targets, subset=False)


# --------------------------------------------------------------------------------------
# digits (shipped)
