"""The schema: the keys users type, their types, defaults and documentation.

``SCHEMA`` is the single list of documented keys; the README's configuration table is
generated from it (``schema_markdown``, run ``python docs/render_readme.py``). Adding a key:
add a ``Key`` here, resolve it in ``validate.py`` (``_Resolver``) and, for a range or a
check, in ``_check_fixed_value``.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from noisysim import data as _data
from noisysim.activations import ACTIVATIONS
from noisysim.backends import BACKENDS
from noisysim.hardware import WEIGHT_DEVICE_KEYS, WEIGHT_DEVICES
from noisysim.losses import LOSSES
from noisysim.network import DTYPES, INITIALISERS
from noisysim.noise import NOISE_MODELS
from noisysim.optim import OPTIMIZERS
from noisysim.rules import RULES
from noisysim.train import TrainSettings

from .values import _toml_value

SECTIONS = ("model", "noise", "rule", "decorrelation", "optimizer", "data", "train", "backend",
            "measurement")
_TOP_KEYS = ("name", "seed")  # plus "model" as an include path
_MAX_SEED = 2**63 - 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@,-]*$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")

#: Input size, number of classes and sizes of the splits of the registered datasets, so that
#: validation never loads data. ``None``: taken from the options (teacher, cifar100).
#: ``image``: (H, W, C) of sets whose rows are NHWC-flat images (what conv layers need;
#: the CIFAR loaders give such rows with data.layout = "hwc", the default for conv nets).
DATASET_SHAPES: dict[str, dict] = {
    "digits": {"inputs": 64, "classes": 10, "n_train": 1500, "n_test": 297,
               "image": (8, 8, 1)},
    "mnist": {"inputs": 784, "classes": 10, "n_train": 60000, "n_test": 10000,
              "image": (28, 28, 1)},
    "fashion-mnist": {"inputs": 784, "classes": 10, "n_train": 60000, "n_test": 10000,
                      "image": (28, 28, 1)},
    "cifar10": {"inputs": 3072, "classes": 10, "n_train": 50000, "n_test": 10000,
                "image": (32, 32, 3)},
    "cifar100": {"inputs": 3072, "classes": None, "n_train": 50000, "n_test": 10000,
                 "image": (32, 32, 3)},
    "teacher": {"inputs": None, "classes": None, "n_train": None, "n_test": None},
}


def _default_config_resource():
    return importlib.resources.files("noisysim").joinpath("defaults", "default.toml")


DEFAULT_CONFIG = "noisysim/defaults/default.toml"


_NO_DEFAULT = object()


@dataclass(frozen=True)
class Key:
    """One documented config key. ``open`` keys (``rule.<option>``) stand for the options
    of the chosen component; their defaults are the component's own."""

    key: str
    type: str
    default: Any
    description: str
    choices: Callable[[], Sequence[str]] | None = None
    open: bool = False

    def default_text(self) -> str:
        if self.open:
            return "(component's)"
        if self.default is _NO_DEFAULT:
            return "-"
        if isinstance(self.default, str) and self.default.startswith("<"):
            return self.default
        return _toml_value(self.default)


def _train_keys() -> list[Key]:
    docs = {
        "epochs": "passes over the training set",
        "batch_size": "examples per update (the B parallel copies of the hardware)",
        "log_every": "updates between rows of per-update scalars (1 = every update)",
        "alignment_every": "updates between cosine alignments with the exact gradient "
                           "(0 = never; costs one backward pass)",
        "snapshot_every": "updates between parameter snapshots (0 = never)",
        "checkpoint_every": "updates between checkpoints (0 = at epoch ends only)",
        "eval_noise": "evaluate with intrinsic noise (one noisy pass) instead of clean",
        "eval_batch_size": "examples per evaluation batch (memory only, not results)",
    }
    out = []
    for f in dataclasses.fields(TrainSettings):
        typ = "boolean" if isinstance(f.default, bool) else (
            "integer" if isinstance(f.default, int) else "float")
        out.append(Key(f"train.{f.name}", typ, f.default,
                       docs.get(f.name, "see noisysim.train.TrainSettings")))
    return out


def _param_list(pairs: Iterable[tuple[str, Iterable[str]]]) -> str:
    return "; ".join(f"{n}: {', '.join(p) or '-'}" for n, p in pairs)


def _noise_params(name: str) -> list[str]:
    sig = inspect.signature(NOISE_MODELS[name].__init__)
    return [p for p in sig.parameters if p != "self"]


def _optimizer_params(name: str) -> list[str]:
    sig = inspect.signature(OPTIMIZERS[name].__init__)
    return [p for p in sig.parameters if p != "self"]


SCHEMA: tuple[Key, ...] = (
    Key("name", "string", "<rule>-<dataset>-<hash>",
        "file stem of the trajectory (`<out>/<name>.h5`): letters, digits, `._+=@,-`; the "
        "default's hash is 6 hex digits of the SHA-256 of the resolved config"),
    Key("seed", "integer", 0,
        "key of every random draw (weights, noise, perturbations, data order), 0..2^63-1"),
    Key("model", "path", _NO_DEFAULT,
        "at top level: a model file to include (holds `[model]`, may hold `[noise]`): a path "
        "relative to this file, then the working directory, or the name of a shipped one "
        "(`cifar_mlp`); keys here override it"),
    Key("model.file", "path", _NO_DEFAULT,
        "the same include, written inside `[model]` so that this table can override it"),
    Key("model.layers", "list of integers", [64, 64, 10],
        "widths from input to output: first = dataset input size, last = classes (outputs); "
        "or a convolutional network as layer tables from the input image on, e.g. "
        "`[{conv = 16, kernel = 5}, {pool = \"max\", size = 2}, {dense = 10}]` (conv: "
        "channels, kernel, stride = 1, padding = 0; pool: \"max\" or \"avg\", size, "
        "stride = size; dense: width; the last gives the classes)"),
    Key("model.input_shape", "list of integers", _NO_DEFAULT,
        "[H, W, C] of the input images of a network in table form (default: the "
        "dataset's image shape: digits [8, 8, 1], mnist and fashion-mnist [28, 28, 1], "
        "cifar10 and cifar100 [32, 32, 3])"),
    Key("model.activation", "string", "leaky_relu", "hidden-layer activation",
        lambda: ACTIVATIONS),
    Key("model.activation_params", "table", {},
        "parameters of the hidden activation, e.g. `{slope = 0.1}` (leaky_relu: slope; "
        "hardtanh: lo, hi; step: threshold; quantize: levels, lo, hi; table: path (CSV or "
        ".npy of (input, output) rows, relative to this file), interpolation (linear, "
        "pchip))"),
    Key("model.output_activation", "string", "identity",
        "applied to the last layer before the loss", lambda: ACTIVATIONS),
    Key("model.loss", "string", "cross_entropy",
        "per-sample loss on the outputs (classification: cross_entropy, or softmax_mse = "
        "mean over classes of (softmax - one-hot)^2, the DANP authors' squared error; "
        "regression: squared_error)", lambda: LOSSES),
    Key("model.bias", "boolean", True, "layers have biases (initialised to zero)"),
    Key("model.init", "string", "he_normal", "weight initialisation", lambda: INITIALISERS),
    Key("model.dtype", "string", "float32", "precision of parameters and activities "
        "(also the data's, unless data.dtype is set)", lambda: DTYPES),
    Key("noise.model", "string", "none",
        "intrinsic device noise added to pre-activations", lambda: tuple(NOISE_MODELS)),
    Key("noise.layers", '"all" or list of integers', "all",
        "layers (0-based, output layer included) that carry the noise"),
    Key("noise.hold_upstream", "boolean", False,
        "the hardware latches (samples and holds) the activity of the layers below a "
        "perturbed one between passes, so INP's passes reuse the reference pass there and "
        "draw no fresh noise; false: every pass is a new run through the whole device"),
    Key("noise.file", "path", _NO_DEFAULT,
        "a noise file to include (holds only `[noise]`, e.g. written by `noisysim noise fit`); "
        "this table's own keys override it"),
    Key("noise.provenance", "table", {},
        "where fitted noise parameters came from (trace, sha256, dt, standard errors); kept "
        "in every trajectory"),
    Key("noise.variability", "table", {},
        "device-to-device variability, per-node values drawn once from the seed: "
        "`{amplitude = 0.1}` (a factor on the noise), `p_flip = 0.2` (the switching "
        "probability of telegraph/smtj/bernoulli noise), `gain = 0.1` (x = f(g a + o)) as "
        "relative spreads, distribution = lognormal (mean 1) or normal (1 + s z, floored at "
        "0); `offset = 0.05` (o, normal, absolute std)"),
    Key("noise.<param>", "per model", _NO_DEFAULT,
        "parameters of the noise model (" + _param_list(
            (n, _noise_params(n)) for n in NOISE_MODELS if _noise_params(n)) + ")",
        open=True),
    Key("rule.name", "string", "danp", "learning rule", lambda: RULES),
    Key("rule.<option>", "per rule", _NO_DEFAULT,
        "options of the rule: sigma (std of the injected perturbation), samples (perturbed "
        "passes per update), clean_pass (reference pass without intrinsic noise), surrogate "
        "(bp/dbp: none or ste), seed (fg); decorrelated is implied by the d* names", open=True),
    Key("decorrelation.lr", "float", 1e-3,
        "learning rate of the decorrelation matrices R (dbp, dnp, dinp, danp); 0 freezes R"),
    Key("decorrelation.kappa", "float", 0.0,
        "0 = decorrelate only, up to 1 = also drive input variances to 1"),
    Key("decorrelation.positions", "integer", _NO_DEFAULT,
        "conv layers update R from every s-th patch row only (s >= 1; default 1 = all "
        "B L rows), for speed; dense layers use every sample"),
    Key("optimizer.name", "string", "adam", "optimiser of W and b", lambda: tuple(OPTIMIZERS)),
    Key("optimizer.lr", "float", 1e-4, "learning rate (> 0)"),
    Key("optimizer.<option>", "per optimiser", _NO_DEFAULT,
        "options of the optimiser (" + _param_list(
            (n, [p for p in _optimizer_params(n) if p != "lr"]) for n in OPTIMIZERS) + ")",
        open=True),
    # -- hardware realism (noisysim.hardware): weight devices, the measurement channel --
    Key("optimizer.device", "string", "ideal",
        "the device that holds W: ideal (W = the optimiser's proposal), constant_step "
        "(pulses of a fixed step), soft_bounds (steps shrink towards the bounds); biases "
        "stay ideal", lambda: WEIGHT_DEVICES),
    Key("optimizer.states", "integer", 64,
        "weight levels of the device between its bounds (step = (hi - lo) / (states - 1))"),
    Key("optimizer.bounds", "range [lo, hi]", [-1.0, 1.0], "the device's weight range"),
    Key("optimizer.asymmetry", "float", 0.0,
        "a in (-1, 1): up steps are step * (1 + a), down steps step * (1 - a)"),
    Key("optimizer.write_noise", "float", 0.0,
        "std (weight units) of the noise each write adds"),
    Key("measurement.noise_std", "float", 0.0,
        "read-out noise std of the pre-activations the rules measure (the forward pass is "
        "unchanged)"),
    Key("measurement.bits", "integer", 0,
        "ADC resolution of the measured pre-activations (0 = no ADC)"),
    Key("measurement.range", "range [lo, hi]", [-4.0, 4.0], "ADC range of the pre-activations"),
    Key("measurement.loss_noise_std", "float", 0.0, "read-out noise std of the measured losses"),
    Key("measurement.loss_bits", "integer", 0, "ADC resolution of the losses (0 = no ADC)"),
    Key("measurement.loss_range", "range [lo, hi]", [0.0, 8.0], "ADC range of the losses"),
    Key("data.name", "string", "digits", "dataset", lambda: _data.dataset_names()),
    Key("data.<option>", "per dataset", _NO_DEFAULT,
        "loader options: normalize (unit, standard, none), validation (fraction split off), "
        "n_train, n_test (keep the first n), seed (validation split, generated data), dtype; "
        "downloaded sets: data_dir, mirror, download; cifar10 and cifar100: layout (chw: "
        "plane by plane, the default for MLPs; hwc: pixel by pixel, the default and the "
        "only choice for conv nets); cifar100: label_mode; teacher: "
        "n_inputs, n_outputs, hidden, correlation, task, target_noise, slope", open=True),
    *_train_keys(),
    Key("backend.name", "string", "auto",
        "compute backend (auto picks cuda when usable and the step is large enough)",
        lambda: BACKENDS),
    Key("backend.graphs", "boolean", False,
        "cuda: replay the quiet training steps as a CUDA graph (noisysim.gpu.graph; not yet "
        "verified on a GPU, so off by default)"),
)

_FIXED: dict[str, Key] = {k.key: k for k in SCHEMA if not k.open and k.key not in ("model",)}
_INCLUDE_KEYS = ("model", "model.file")

# Component groups: the options of a component depend on its name.
#   prefix -> (name key, fixed keys of the section that are not component options)
_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "noise": ("noise.model", ("model", "layers", "hold_upstream", "file", "provenance",
                              "variability")),
    "rule": ("rule.name", ("name",)),
    "optimizer": ("optimizer.name", ("name",) + WEIGHT_DEVICE_KEYS),
    "data": ("data.name", ("name",)),
    "model.activation_params": ("model.activation", ()),
}
_PATH_PARAMS = ("noise.path", "data.data_dir")


def schema_markdown() -> str:
    """The key table of ``SCHEMA`` as GitHub markdown (for the README). The default column
    is what a config gets: the embedded default's value where it sets the key."""
    import tomllib

    embedded = tomllib.loads(_default_config_resource().read_text(encoding="utf-8"))
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for k in SCHEMA:
        desc = k.description
        if k.choices is not None:
            desc += ": " + ", ".join(f"`{c}`" for c in k.choices())
        section, _, leaf = k.key.partition(".")
        value = embedded.get(section, {}).get(leaf) if leaf else None
        default = _toml_value(value) if value is not None and not k.open else k.default_text()
        default = default if default in ("-", "(component's)") else f"`{default}`"
        rows.append(f"| `{k.key}` | {k.type} | {default} | {desc} |")
    return "\n".join(rows)
