"""Run configuration: one TOML file describes one run; ``--set section.key=value`` overrides.

Entry points::

    cfg = load_config("run.toml", ["rule.sigma=1e-3", "model.layers=[64,32,10]"])
    cfg = load_config(None)                  # the embedded main job (defaults/default.toml)
    cfg.rule.name, cfg.model.layers          # attribute access (read-only; lists are tuples)
    cfg.to_dict()                            # plain, JSON-able, every default filled in
    config_from_dict(cfg.to_dict()) == cfg   # programmatic configs, same validation
    resolve_value(cfg, "rule.sigma")         # one value by its dotted key

Layers, lowest first: the defaults of ``SCHEMA`` (and of the rule, noise model, optimiser,
dataset and activation themselves), the config file, then each ``--set`` in order. A model
file (``model = "models/x.toml"`` at the top level, or ``file = ...`` inside ``[model]``)
sits just below the layer that names it: the including file overrides its keys, and
``--set model=models/x.toml`` overrides the file's ``[model]`` and ``[noise]``. A later layer
replaces single keys, never whole sections. When a later layer changes a component
(``rule.name``, ``noise.model``, ``optimizer.name``, ``data.name``, ``model.activation``), the
options that lower layers gave the *old* component and that the new one does not accept are
dropped, so ``--set rule.name=bp`` works on a file written for ``danp``; options it accepts
are kept.

Validation happens once, in ``load_config`` / ``config_from_dict``, before any work, and
stops at the first problem with a one-line ``NoisysimError`` naming the place (file and
line, or the ``--set`` argument), the dotted key, the value, what was expected and the fix.
The checks: unknown sections and keys (with "did you mean"), types, ranges, names of rules,
noise models, optimisers, datasets and activations (listing the valid ones), component
options (by building the rule, noise model, optimiser and activation, and by checking the
dataset's registered option names; no dataset is loaded), layer widths against the
dataset's input size and classes (from ``DATASET_SHAPES``), the loss against the task, and
the noise layers against the network depth.

Paths in a file (``model`` includes, ``noise.path``, ``data.data_dir``) are relative to that
file, then to the working directory; the resolved config holds them absolute. Paths given
with ``--set`` or in a dict are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import inspect
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import data as _data
from .activations import ACTIVATIONS, make_activation
from .decorrelation import Decorrelator
from .errors import NoisysimError, check_choice, check_number
from .losses import LOSSES
from .network import DTYPES, INITIALISERS
from .noise import NOISE_MODELS, make_noise
from .optim import OPTIMIZERS, make_optimizer
from .rules import RULES, make_rule
from .train import TrainSettings

__all__ = [
    "Config",
    "Section",
    "Key",
    "SCHEMA",
    "SECTIONS",
    "BACKENDS",
    "DATASET_SHAPES",
    "DEFAULT_CONFIG",
    "load_config",
    "config_from_dict",
    "resolve_value",
    "parse_override",
    "schema_markdown",
]

BACKENDS = ("auto", "cpu", "cuda")
SECTIONS = ("model", "noise", "rule", "decorrelation", "optimizer", "data", "train", "backend")
_TOP_KEYS = ("name", "seed")  # plus "model" as an include path
_MAX_SEED = 2**63 - 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@,-]*$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")

#: Input size, number of classes and sizes of the splits of the registered datasets, so that
#: validation never loads data. ``None``: taken from the options (teacher, cifar100).
DATASET_SHAPES: dict[str, dict] = {
    "digits": {"inputs": 64, "classes": 10, "n_train": 1500, "n_test": 297},
    "mnist": {"inputs": 784, "classes": 10, "n_train": 60000, "n_test": 10000},
    "fashion-mnist": {"inputs": 784, "classes": 10, "n_train": 60000, "n_test": 10000},
    "cifar10": {"inputs": 3072, "classes": 10, "n_train": 50000, "n_test": 10000},
    "cifar100": {"inputs": 3072, "classes": None, "n_train": 50000, "n_test": 10000},
    "teacher": {"inputs": None, "classes": None, "n_train": None, "n_test": None},
}


def _default_config_resource():
    return importlib.resources.files("noisysim").joinpath("defaults", "default.toml")


DEFAULT_CONFIG = "noisysim/defaults/default.toml"

# --------------------------------------------------------------------------------------
# The schema: the keys users type
# --------------------------------------------------------------------------------------

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
    Key("name", "string", "<rule>-<dataset>",
        "file stem of the trajectory (`<out>/<name>.h5`): letters, digits, `._+=@,-`"),
    Key("seed", "integer", 0,
        "key of every random draw (weights, noise, perturbations, data order), 0..2^63-1"),
    Key("model", "path", _NO_DEFAULT,
        "at top level: a model file to include (holds `[model]`, may hold `[noise]`); "
        "relative to this file, then the working directory; keys here override it"),
    Key("model.file", "path", _NO_DEFAULT,
        "the same include, written inside `[model]` so that this table can override it"),
    Key("model.layers", "list of integers", [64, 64, 10],
        "widths from input to output: first = dataset input size, last = classes (outputs)"),
    Key("model.activation", "string", "leaky_relu", "hidden-layer activation",
        lambda: ACTIVATIONS),
    Key("model.activation_params", "table", {},
        "parameters of the hidden activation, e.g. `{slope = 0.1}` (leaky_relu: slope; "
        "hardtanh: lo, hi; step: threshold; quantize: levels, lo, hi)"),
    Key("model.output_activation", "string", "identity",
        "applied to the last layer before the loss", lambda: ACTIVATIONS),
    Key("model.loss", "string", "cross_entropy",
        "per-sample loss on the outputs (classification needs cross_entropy, regression "
        "squared_error)", lambda: LOSSES),
    Key("model.bias", "boolean", True, "layers have biases (initialised to zero)"),
    Key("model.init", "string", "he_normal", "weight initialisation", lambda: INITIALISERS),
    Key("model.dtype", "string", "float32", "precision of parameters and activities "
        "(also the data's, unless data.dtype is set)", lambda: DTYPES),
    Key("noise.model", "string", "none",
        "intrinsic device noise added to pre-activations", lambda: tuple(NOISE_MODELS)),
    Key("noise.layers", '"all" or list of integers', "all",
        "layers (0-based, output layer included) that carry the noise"),
    Key("noise.file", "path", _NO_DEFAULT,
        "a noise file to include (holds only `[noise]`, e.g. written by `noisysim noise fit`); "
        "this table's own keys override it"),
    Key("noise.provenance", "table", {},
        "where fitted noise parameters came from (trace, sha256, dt, standard errors); kept "
        "in every trajectory"),
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
    Key("optimizer.name", "string", "adam", "optimiser of W and b", lambda: tuple(OPTIMIZERS)),
    Key("optimizer.lr", "float", 1e-4, "learning rate (> 0)"),
    Key("optimizer.<option>", "per optimiser", _NO_DEFAULT,
        "options of the optimiser (" + _param_list(
            (n, [p for p in _optimizer_params(n) if p != "lr"]) for n in OPTIMIZERS) + ")",
        open=True),
    Key("data.name", "string", "digits", "dataset", lambda: _data.dataset_names()),
    Key("data.<option>", "per dataset", _NO_DEFAULT,
        "loader options: normalize (unit, standard, none), validation (fraction split off), "
        "n_train, n_test (keep the first n), seed (validation split, generated data), dtype; "
        "downloaded sets: data_dir, mirror, download; cifar100: label_mode; teacher: "
        "n_inputs, n_outputs, hidden, correlation, task, target_noise, slope", open=True),
    *_train_keys(),
    Key("backend.name", "string", "auto", "compute backend (auto picks cuda when usable)",
        lambda: BACKENDS),
)

_FIXED: dict[str, Key] = {k.key: k for k in SCHEMA if not k.open and k.key not in ("model",)}
_INCLUDE_KEYS = ("model", "model.file")

# Component groups: the options of a component depend on its name.
#   prefix -> (name key, fixed keys of the section that are not component options)
_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "noise": ("noise.model", ("model", "layers", "file", "provenance")),
    "rule": ("rule.name", ("name",)),
    "optimizer": ("optimizer.name", ("name",)),
    "data": ("data.name", ("name",)),
    "model.activation_params": ("model.activation", ()),
}
_PATH_PARAMS = ("noise.path", "data.data_dir")


def schema_markdown() -> str:
    """The key table of ``SCHEMA`` as GitHub markdown (for the README)."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for k in SCHEMA:
        desc = k.description
        if k.choices is not None:
            desc += ": " + ", ".join(f"`{c}`" for c in k.choices())
        default = k.default_text()
        default = default if default in ("-", "(component's)") else f"`{default}`"
        rows.append(f"| `{k.key}` | {k.type} | {default} | {desc} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------
# Sources and entries (where every value came from)
# --------------------------------------------------------------------------------------


@dataclass
class _Source:
    label: str                 # "run.toml", "--set rule.sigma=1", "config dict", "defaults"
    kind: str                  # "file" | "set" | "dict" | "default"
    layer: float               # 0 defaults, 2 file or dict, 3... each --set; an
                               # included file: 0.5 below the layer naming it
    text: str | None = None    # file text, for line numbers
    base: Path | None = None   # folder that relative paths start from

    def where(self, dotted: str | None = None) -> str:
        if self.kind == "file" and dotted and self.text is not None:
            line = _find_line(self.text, dotted)
            if line:
                return f"{self.label}:{line}"
        return self.label

    def fix(self, dotted: str, value_text: str) -> str:
        """How to write ``dotted`` = value in this kind of source."""
        if self.kind == "set":
            return f"write --set {dotted}={value_text}"
        if self.kind == "dict":
            return f"give {dotted} = {value_text}"
        leaf = dotted.rsplit(".", 1)[-1]
        return f"write {leaf} = {value_text}"


_DEFAULTS_SOURCE = _Source("defaults", "default", 0)


@dataclass
class _Entry:
    value: Any
    source: _Source


def _find_line(text: str, dotted: str) -> int | None:
    """Line of the assignment of ``dotted`` in a TOML text (a heuristic: tables and dotted
    keys are followed, multi-line values are not parsed)."""
    table = ""
    header = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
    assign = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
                        r"(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")
    for i, line in enumerate(text.splitlines(), 1):
        m = header.match(line)
        if m:
            table = _norm_key(m.group(1))
            if table == dotted:
                return i
            continue
        m = assign.match(line)
        if m:
            key = _norm_key(m.group(1))
            full = f"{table}.{key}" if table else key
            if full == dotted or dotted.startswith(full + "."):
                return i
    return None


def _norm_key(k: str) -> str:
    parts = re.findall(r"\"[^\"]*\"|'[^']*'|[^.\s]+", k)
    return ".".join(p.strip("\"'") for p in parts)


# --------------------------------------------------------------------------------------
# Reading files and overrides
# --------------------------------------------------------------------------------------


def _read_toml(path: Path, label: str) -> tuple[dict, str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NoisysimError(
            f"config file {label!r} does not exist (looked for {path.absolute()}); check the "
            "path, or run without a file to use the embedded default"
        ) from None
    except IsADirectoryError:
        raise NoisysimError(f"config file {label!r} is a folder, not a TOML file") from None
    except OSError as exc:
        raise NoisysimError(f"cannot read config file {label!r}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoisysimError(
            f"{label}: not UTF-8 text (byte {exc.start}); save the config as UTF-8"
        ) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        where = f"{label}:{m.group(1)}" if m else label
        what = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg).rstrip(".")
        if m:
            what += f" at column {m.group(2)}"
        raise NoisysimError(
            f"{where}: not valid TOML ({what}); strings need quotes (name = \"danp\"), lists "
            "brackets ([64, 10]), and each key may appear once per table"
        ) from None
    return doc, text


def parse_override(text: str) -> tuple[str, Any]:
    """``"section.key=value"`` -> (dotted key, value). The value is parsed as a TOML value
    (``1e-3``, ``[64, 10]``, ``true``, ``"x"``); text that is not valid TOML is a string."""
    if not isinstance(text, str) or "=" not in text:
        raise NoisysimError(
            f"bad --set {text!r}: expected section.key=value, e.g. --set rule.sigma=1e-3"
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    if not _KEY_RE.match(key):
        raise NoisysimError(
            f"bad --set {text!r}: expected section.key=value with a key of letters, digits "
            f"and _ joined by dots (e.g. --set train.epochs=5), got key {key!r}"
        )
    return key, _parse_value(raw)


def _parse_value(raw: str) -> Any:
    stripped = raw.strip()
    try:
        return tomllib.loads(f"v = {stripped}")["v"]
    except tomllib.TOMLDecodeError:
        return stripped


# --------------------------------------------------------------------------------------
# Layers -> entries
# --------------------------------------------------------------------------------------


def _flatten(doc: Mapping, source: _Source, *, include_file: bool = False) -> dict[str, _Entry]:
    """A parsed TOML document -> {dotted key: entry}, refusing unknown sections."""
    out: dict[str, _Entry] = {}
    allowed = ("model", "noise") if include_file else SECTIONS
    for key, value in doc.items():
        value = _plain(value)
        if key == "model" and isinstance(value, str):
            if include_file:
                raise NoisysimError(
                    f"{source.where('model')}: a model file cannot include another model file "
                    f"(model = {value!r}); copy its [model] table here instead"
                )
            out["model"] = _Entry(value, source)
            continue
        if key in SECTIONS:
            if key not in allowed:
                raise NoisysimError(
                    f"{source.where(key)}: a model file may hold only [model] and [noise], "
                    f"found [{key}]; move it to the config file that includes this one"
                )
            if not isinstance(value, dict):
                extra = " or the path of a model file (a string)" if key == "model" else ""
                raise NoisysimError(
                    f"{source.where(key)}: {key} must be a table ([{key}] with keys under "
                    f"it){extra}, got {_show(value)}"
                )
            for k, v in value.items():
                dotted = f"{key}.{k}"
                if dotted == "model.file" and include_file:
                    raise NoisysimError(
                        f"{source.where(dotted)}: a model file cannot include another model "
                        f"file (model.file = {v!r}); copy its [model] table here instead"
                    )
                if dotted == "model.activation_params" and isinstance(v, dict):
                    if not v:
                        out[dotted] = _Entry({}, source)
                    for pk, pv in v.items():
                        out[f"{dotted}.{pk}"] = _Entry(pv, source)
                    continue
                out[dotted] = _Entry(v, source)
            continue
        if key in _TOP_KEYS and not include_file:
            out[key] = _Entry(value, source)
            continue
        raise NoisysimError(f"{source.where(key)}: {_unknown_top(key, include_file)}")
    return out


def _unknown_top(key: str, include_file: bool = False) -> str:
    valid = ["model", "noise"] if include_file else list(_TOP_KEYS) + list(SECTIONS)
    msg = f"unknown key {key!r}"
    home = [k.key for k in SCHEMA if "." in k.key and k.key.split(".", 1)[1] == key]
    if home and not include_file:
        section = home[0].split(".", 1)[0]
        return f"{msg}: it belongs in [{section}] ({home[0]}); move it under that table"
    close = difflib.get_close_matches(key, valid, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{msg}{guess}; valid top-level keys and tables: {', '.join(valid)}"


def _override_entries(key: str, value: Any, source: _Source) -> dict[str, _Entry]:
    """The entries one ``--set key=value`` sets."""
    parts = key.split(".")
    head = parts[0]
    if len(parts) == 1:
        if head in SECTIONS and not (head == "model" and isinstance(value, str)) \
                and not isinstance(value, dict):
            raise NoisysimError(
                f"{source.label}: {head} is a table; set one key, e.g. --set {head}."
                f"{_example_key(head)}=..."
            )
        return _flatten({head: value}, source)
    if head not in SECTIONS:
        raise NoisysimError(f"{source.label}: {_unknown_top(head)}")
    if len(parts) == 2:
        return _flatten({head: {parts[1]: value}}, source)
    table_key = ".".join(parts[:2])
    if table_key == "model.activation_params" and len(parts) == 3:
        return {key: _Entry(_plain(value), source)}
    raise NoisysimError(
        f"{source.label}: {table_key} is not a table; set it with --set {table_key}=VALUE"
    )


def _example_key(section: str) -> str:
    for k in SCHEMA:
        if k.key.startswith(section + ".") and not k.open:
            return k.key.split(".", 1)[1]
    return "key"


def _include(entries: dict[str, _Entry]) -> tuple[dict[str, _Entry], _Source | None]:
    """Entries of the model file the layers name (the latest of ``model`` / ``model.file``)."""
    chosen = None
    for k in _INCLUDE_KEYS:
        e = entries.pop(k, None)
        if e is not None and (chosen is None or e.source.layer >= chosen[1].source.layer):
            chosen = (k, e)
    if chosen is None:
        return {}, None
    key, e = chosen
    if not isinstance(e.value, str) or not e.value.strip():
        raise NoisysimError(
            f"{e.source.where(key)}: {key} must be the path of a model file (a string), got "
            f"{_show(e.value)}; e.g. {e.source.fix(key, repr('models/mlp.toml'))}"
        )
    path = _locate_path(e.value, e.source)
    if not path.is_file():
        looked = [str(p) for p in _candidates(e.value, e.source)]
        raise NoisysimError(
            f"{e.source.where(key)}: {key} = {e.value!r}: model file not found (looked for "
            f"{' and '.join(dict.fromkeys(looked))}); give a path relative to the config file "
            "or the working directory"
        )
    label = _label(path)
    doc, text = _read_toml(path, label)
    # Just below the layer that names it: the naming file overrides it, and a --set include
    # overrides the files under it.
    src = _Source(label, "file", e.source.layer - 0.5, text, path.parent)
    inc = _flatten(doc, src, include_file=True)
    return inc, src


def _candidates(value: str, source: _Source) -> list[Path]:
    p = Path(os.path.expanduser(value))
    if p.is_absolute():
        return [p]
    out = []
    if source.base is not None:
        out.append(source.base / p)
    out.append(Path.cwd() / p)
    return out


def _locate_path(value: str, source: _Source) -> Path:
    cands = _candidates(value, source)
    for c in cands:
        if c.exists():
            return Path(os.path.abspath(c))
    return Path(os.path.abspath(cands[0]))


def _label(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return rel if not rel.startswith(".." + os.sep + "..") else str(path)


# --------------------------------------------------------------------------------------
# Resolution and validation
# --------------------------------------------------------------------------------------

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
               list: "a list", dict: "a table"}


def _type_name(v: Any) -> str:
    for t, n in _TYPE_NAMES.items():
        if type(v) is t:
            return n
    return f"a {type(v).__name__}"


def _show(v: Any) -> str:
    return f"{v!r} ({_type_name(v)})"


def _plain(v: Any) -> Any:
    """Tuples -> lists, numpy scalars -> Python, mappings -> dicts (recursively)."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "item") and type(v).__module__ == "numpy" and getattr(v, "ndim", 1) == 0:
        return v.item()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v


class _Resolver:
    def __init__(self, entries: dict[str, _Entry], history: dict[str, list[tuple[int, Any]]]):
        self.entries = entries
        self.history = history
        self.out: dict[str, Any] = {}

    # -- helpers -------------------------------------------------------------------------
    def entry(self, dotted: str) -> _Entry:
        e = self.entries.get(dotted)
        if e is not None:
            return e
        return _Entry(_copy_default(_FIXED[dotted].default), _DEFAULTS_SOURCE)

    def where(self, dotted: str) -> str:
        return self.entry(dotted).source.where(dotted)

    def fail(self, dotted: str, msg: str) -> None:
        raise NoisysimError(f"{self.where(dotted)}: {msg}")

    def typed(self, dotted: str) -> Any:
        """The value of a fixed key, type-checked and range-checked."""
        key = _FIXED[dotted]
        e = self.entry(dotted)
        value = _check_type(dotted, key.type, e.value, e.source)
        try:
            if key.choices is not None:
                value = check_choice(dotted, value, key.choices())
            value = _check_fixed_value(dotted, value)
        except NoisysimError as exc:
            raise NoisysimError(f"{e.source.where(dotted)}: {exc}") from None
        return value

    def params(self, prefix: str, name: str, accepted: Sequence[str],
               what: str) -> dict[str, _Entry]:
        """Component options under ``prefix``: drop stale ones, refuse unknown ones."""
        name_key, fixed = _GROUPS[prefix]
        found = {k[len(prefix) + 1:]: (k, e) for k, e in self.entries.items()
                 if k.startswith(prefix + ".") and k[len(prefix) + 1:] not in fixed
                 and "." not in k[len(prefix) + 1:]}
        out: dict[str, _Entry] = {}
        for opt, (dotted, e) in found.items():
            if opt in accepted:
                out[opt] = e
                continue
            if self.name_at(name_key, e.source.layer) != name:
                del self.entries[dotted]   # an option of the component a later layer replaced
                continue
            valid = list(fixed) + [a for a in accepted if a not in fixed]
            close = difflib.get_close_matches(opt, valid, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(dotted, f"unknown key {dotted} = {_short(e.value)}{guess}: {what} accepts "
                              f"{', '.join(valid) if valid else 'no options'}")
        return out

    def name_at(self, name_key: str, layer: int) -> Any:
        value = _FIXED[name_key].default
        for l, v in self.history.get(name_key, []):
            if l <= layer:
                value = v
        return _dataset_key(value) if name_key == "data.name" else value

    def component(self, prefix: str, build: Callable[..., Any], name: str,
                  opts: dict[str, _Entry], extra: dict | None = None):
        """Build a component from its options; blame the option its error names."""
        kwargs = {**(extra or {}), **{k: e.value for k, e in opts.items()}}
        try:
            return build(name, **kwargs)
        except NoisysimError as exc:
            msg = str(exc)
            blame, pos = None, len(msg) + 1
            for k in opts:
                m = re.search(rf"(?<![A-Za-z0-9_]){re.escape(k)}(?![A-Za-z0-9_])", msg)
                if m and m.start() < pos:
                    blame, pos = k, m.start()
            name_key = _GROUPS[prefix][0]
            if blame is None:
                raise NoisysimError(
                    f"{self.where(name_key)}: {name_key} = {name!r}: {msg}") from None
            e = opts[blame]
            dotted = f"{prefix}.{blame}"
            hint = _unquote_hint(dotted, e.value, e.source)
            raise NoisysimError(
                f"{e.source.where(dotted)}: {dotted} = {_short(e.value)}: {msg}{hint}"
            ) from None

    # -- sections ------------------------------------------------------------------------
    def resolve(self) -> dict:
        for k in list(self.entries):
            if "." in k and k.split(".", 1)[0] in SECTIONS:
                section, rest = k.split(".", 1)
                if k in _FIXED or section in _GROUPS or k.startswith("model.activation_params"):
                    continue
                e = self.entries[k]
                valid = [x.key.split(".", 1)[1] for x in SCHEMA
                         if x.key.startswith(section + ".") and not x.open]
                close = difflib.get_close_matches(rest, valid, n=1)
                guess = f" (did you mean {section}.{close[0]}?)" if close else ""
                other = [x.key for x in SCHEMA if x.key.endswith("." + rest) and not x.open]
                if other and not guess:
                    guess = f" (it belongs in {other[0]})"
                self.fail(k, f"unknown key {k} = {_short(e.value)}{guess}; [{section}] "
                             f"accepts {', '.join(valid)}")
        out = self.out
        out["seed"] = self.typed("seed")
        self.model()
        self.rule()
        self.noise()
        self.decorrelation()
        self.optimizer()
        self.data()
        self.train()
        out["backend"] = {"name": self.typed("backend.name")}
        self.cross_checks()
        out["name"] = self.name()
        order = ("name", "seed") + SECTIONS
        return {k: out[k] for k in order}

    def name(self) -> str:
        if "name" not in self.entries:
            return f"{self.out['rule']['name']}-{self.out['data']['name']}"
        e = self.entries["name"]
        v = _check_type("name", "string", e.value, e.source)
        if not _NAME_RE.match(v) or len(v) > 200:
            fixed = re.sub(r"[^A-Za-z0-9._+=@,-]+", "-", v).strip("-._+=@,") or "my-run"
            self.fail("name", f"name must be a file stem of letters, digits and ._+=@,- "
                              f"(no spaces or slashes, not starting with a dot), got {v!r}; "
                              f"{e.source.fix('name', json.dumps(fixed))}")
        return v

    def model(self) -> None:
        m: dict[str, Any] = {}
        m["layers"] = self.typed("model.layers")
        m["activation"] = act = self.typed("model.activation")
        accepted = list(make_activation(act).params)
        params = self.params("model.activation_params", act, accepted,
                             f"activation {act!r}")
        empty = self.entries.get("model.activation_params")
        if empty is not None and not isinstance(empty.value, dict):
            self.fail("model.activation_params",
                      f"model.activation_params must be a table like {{slope = 0.1}}, got "
                      f"{_show(empty.value)}")
        built = self.component("model.activation_params", make_activation, act, params)
        m["activation_params"] = dict(built.params)
        m["output_activation"] = self.typed("model.output_activation")
        for k in ("loss", "bias", "init", "dtype"):
            m[k] = self.typed(f"model.{k}")
        self.out["model"] = m

    def rule(self) -> None:
        name = self.typed("rule.name")
        accepted = list(make_rule(name).options)
        opts = self.params("rule", name, accepted, f"rule {name!r}")
        rule = self.component("rule", make_rule, name, opts)
        self.out["rule"] = {"name": name, **_plain(rule.options)}

    def noise(self) -> None:
        name = self.typed("noise.model")
        accepted = _noise_params(name)
        opts = self.params("noise", name, accepted, f"noise model {name!r}")
        sig = inspect.signature(NOISE_MODELS[name].__init__)
        missing = [p for p in accepted if sig.parameters[p].default is inspect.Parameter.empty
                   and p not in opts]
        if missing:
            src = self.entry("noise.model").source
            self.fail("noise.model",
                      f"noise.model = {name!r} needs noise.{missing[0]} (parameters: "
                      f"{', '.join(accepted)}); add {missing[0]} = ... under [noise]"
                      + ("" if src.kind != "set" else f" or --set noise.{missing[0]}=..."))
        for k in list(opts):
            if f"noise.{k}" in _PATH_PARAMS and isinstance(opts[k].value, str):
                e = opts[k]
                opts[k] = _Entry(str(_locate_path(e.value, e.source)), e.source)
        model = self.component("noise", make_noise, name, opts)
        params = _plain(model.params())
        for k, e in opts.items():  # keep what params() does not report (e.g. trace data)
            if params.get(k) is None:
                params[k] = _plain(e.value)
        layers = self.typed("noise.layers")
        self.out["noise"] = {"model": name, "layers": layers,
                             **{k: v for k, v in params.items() if v is not None}}
        prov = self.entries.get("noise.provenance")
        if prov is not None and self.name_at("noise.model", prov.source.layer) == name:
            self.out["noise"]["provenance"] = self.typed("noise.provenance")

    def decorrelation(self) -> None:
        lr, kappa = self.typed("decorrelation.lr"), self.typed("decorrelation.kappa")
        try:
            Decorrelator(lr, kappa)
        except NoisysimError as exc:  # a check added to Decorrelator after this schema
            raise NoisysimError(f"{self.where('decorrelation.lr')}: {exc}") from None
        self.out["decorrelation"] = {"lr": lr, "kappa": kappa}

    def optimizer(self) -> None:
        name = self.typed("optimizer.name")
        accepted = _optimizer_params(name)
        opts = self.params("optimizer", name, accepted, f"optimizer {name!r}")
        lr = self.typed("optimizer.lr")
        opt = self.component("optimizer", make_optimizer, name, opts, extra={"lr": lr})
        options = _plain(opt.options())
        self.out["optimizer"] = {"name": name, **{k: v for k, v in options.items()
                                                  if v is not None}}

    def data(self) -> None:
        e = self.entry("data.name")
        raw = _check_type("data.name", "string", e.value, e.source)
        key = _dataset_key(raw)
        if key not in _data.DATASETS:
            try:
                check_choice("data.name", raw, _data.dataset_names())
            except NoisysimError as exc:
                raise NoisysimError(f"{e.source.where('data.name')}: {exc}") from None
        entry = _data.DATASETS[key]
        opts = self.params("data", key, list(entry.options), f"dataset {key!r}")
        resolved: dict[str, Any] = {"normalize": "none", "flatten": True, "validation": 0.0,
                                    "dtype": self.out["model"]["dtype"], "seed": 0}
        resolved.update(_plain(dict(entry.defaults)))
        resolved = {k: v for k, v in resolved.items() if k in entry.options}
        for opt, oe in opts.items():
            dotted = f"data.{opt}"
            value = oe.value
            if dotted in _PATH_PARAMS and isinstance(value, str):
                value = str(_locate_path(value, oe.source))
            check = _DATA_CHECKS.get(opt)
            if check is not None:
                try:
                    value = check(dotted, value)
                except NoisysimError as exc:
                    hint = _unquote_hint(dotted, oe.value, oe.source)
                    raise NoisysimError(f"{oe.source.where(dotted)}: {exc}{hint}") from None
            resolved[opt] = value
        if key == "teacher":
            task, n_out = resolved.get("task"), resolved.get("n_outputs")
            if task == "classification" and isinstance(n_out, int) and n_out < 2:
                self.fail("data.n_outputs" if "n_outputs" in opts else "data.task",
                          f"data.n_outputs must be >= 2 for task = 'classification', got "
                          f"{n_out}")
            if task == "classification" and resolved.get("target_noise", 0) > 0:
                self.fail("data.target_noise", "data.target_noise applies to task = "
                          "'regression' only; remove it or set it to 0")
        shape = DATASET_SHAPES.get(key)
        if shape is not None:
            for split in ("n_train", "n_test"):
                n, have = resolved.get(split), shape[split]
                if have is not None and n is not None and n > have:
                    self.fail(f"data.{split}", f"data.{split} = {n} exceeds the {have} "
                                                f"examples of {key!r}; use at most {have}")
        self.out["data"] = {"name": key, **{k: v for k, v in resolved.items() if v is not None}}

    def train(self) -> None:
        t = {k.key.split(".", 1)[1]: self.typed(k.key) for k in SCHEMA
             if k.key.startswith("train.")}
        try:
            TrainSettings(**t)
        except NoisysimError as exc:  # a check added to TrainSettings after this schema
            blame = next((k for k in t if f"train.{k}" in str(exc)), None)
            raise NoisysimError(f"{self.where(f'train.{blame}') if blame else 'train'}: "
                                f"{exc}") from None
        self.out["train"] = t

    def blame(self, key: str, cause: str) -> str:
        """Where to point for a conflict: ``key`` if the user set it, else ``cause``."""
        if key in self.entries:
            return self.where(key)
        return f"{self.where(cause)}"

    def defaulted(self, key: str) -> str:
        return "" if key in self.entries else " (the default)"

    def cross_checks(self) -> None:
        m, d = self.out["model"], self.out["data"]
        layers = m["layers"]
        info = _dataset_info(d)
        if info is not None:
            inputs, want_out, task = info
            loss = m["loss"]
            cause = "data.task" if "data.task" in self.entries else "data.name"
            if task == "classification" and loss != "cross_entropy":
                raise NoisysimError(
                    f"{self.blame('model.loss', cause)}: model.loss = {loss!r}"
                    f"{self.defaulted('model.loss')} needs regression targets but dataset "
                    f"{d['name']!r} is a classification set (integer labels); set [model] "
                    "loss = \"cross_entropy\"")
            if task == "regression" and loss != "squared_error":
                raise NoisysimError(
                    f"{self.blame('model.loss', cause)}: model.loss = {loss!r}"
                    f"{self.defaulted('model.loss')} needs class labels but dataset "
                    f"{d['name']!r} is a regression set (float targets); set [model] loss = "
                    "\"squared_error\" (or [data] task = \"classification\")")
            if layers[0] != inputs or layers[-1] != want_out:
                good = [inputs] + list(layers[1:-1]) + [want_out]
                what = "classes" if task == "classification" else "outputs"
                bad = (f"the first width must be its input size {inputs}"
                       if layers[0] != inputs else
                       f"the last width must be its number of {what} {want_out}")
                raise NoisysimError(
                    f"{self.blame('model.layers', 'data.name')}: model.layers = "
                    f"{_toml_value(layers)}{self.defaulted('model.layers')} does not fit "
                    f"dataset {d['name']!r}: {bad}; set [model] layers = {_toml_value(good)}")
        n_layers = len(layers) - 1
        nl = self.out["noise"]["layers"]
        if nl != "all":
            for idx in nl:
                if not 0 <= idx < n_layers:
                    self.fail("noise.layers",
                              f"noise.layers = {_toml_value(nl)}: layer {idx} does not exist; "
                              f"the network has {n_layers} layers, numbered 0..{n_layers - 1} "
                              "(the output layer included)")
            if len(set(nl)) != len(nl):
                self.fail("noise.layers", f"noise.layers = {_toml_value(nl)} lists a layer "
                                          "twice; list each layer once")


def _dataset_key(name: Any) -> Any:
    """The registry key of a dataset name (aliases as load_dataset accepts them)."""
    if not isinstance(name, str):
        return name
    aliases = getattr(_data, "_ALIASES", {})
    key = name.strip().lower()
    return aliases.get(key, key)


def _dataset_info(d: dict) -> tuple[int, int, str] | None:
    """(input size, output width, task) of a resolved data section, without loading it."""
    name = d["name"]
    if name == "teacher":
        task = d.get("task", "regression")
        return int(d["n_inputs"]), int(d["n_outputs"]), task
    shape = DATASET_SHAPES.get(name)
    if shape is None:
        return None  # a dataset registered after this table: checked when it loads
    classes = shape["classes"]
    if name == "cifar100":
        classes = 20 if d.get("label_mode") == "coarse" else 100
    return shape["inputs"], classes, "classification"


def _copy_default(v: Any) -> Any:
    return json.loads(json.dumps(v)) if isinstance(v, (list, dict)) else v


def _short(v: Any) -> str:
    s = _toml_value(v) if _is_toml(v) and not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _unquote_hint(dotted: str, value: Any, source: _Source) -> str:
    """'; write sigma = 1e-3 without quotes' when a string holds a TOML number/boolean."""
    if not isinstance(value, str):
        return ""
    parsed = _parse_value(value)
    if isinstance(parsed, (bool, int, float)) and not isinstance(parsed, str):
        return f"; {source.fix(dotted, value.strip())} without quotes"
    return ""


def _check_type(dotted: str, typ: str, value: Any, source: _Source) -> Any:
    where = source.where(dotted)

    def bad(expected: str, example: str, extra: str = ""):
        fix = extra or source.fix(dotted, example)
        raise NoisysimError(f"{where}: {dotted} must be {expected}, got {_short(value)} "
                            f"({_type_name(value)}): {fix}")

    if typ in ("string", "path"):
        if isinstance(value, str):
            return value
        text = _toml_value(value) if _is_toml(value) else str(value)
        bad("a string", json.dumps(text), extra=f"{source.fix(dotted, json.dumps(text))} in quotes")
    if typ in ("integer", "float"):
        if isinstance(value, str):
            parsed = _parse_value(value)
            if isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
                bad(f"{'an integer' if typ == 'integer' else 'a number'}", value.strip(),
                    extra=f"{source.fix(dotted, value.strip())} without quotes")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad("an integer" if typ == "integer" else "a number",
                str(_FIXED[dotted].default) if dotted in _FIXED else "1")
        if typ == "integer":
            if isinstance(value, float):
                if not (math.isfinite(value) and value.is_integer()):
                    bad("an integer", str(int(value)) if math.isfinite(value) else "1",
                        extra="use a whole number")
                return int(value)
            return value
        return float(value)
    if typ == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            bad("true or false", value.strip().lower(),
                extra=f"{source.fix(dotted, value.strip().lower())} without quotes")
        bad("true or false", "true" if value else "false")
    if typ == "list of integers":
        if isinstance(value, str):
            parsed = _parse_value(value)
            if isinstance(parsed, list):
                bad("a list of integers", value.strip(),
                    extra=f"{source.fix(dotted, value.strip())} without quotes")
        if not isinstance(value, list) or not value:
            bad("a list of integers", "[64, 64, 10]")
        for x in value:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or (
                    isinstance(x, float) and not x.is_integer()):
                bad("a list of integers", "[64, 64, 10]")
        return [int(x) for x in value]
    if typ == "table":
        if isinstance(value, dict):
            return value
        bad("a table", "{slope = 0.1}")
    if typ == '"all" or list of integers':
        if value == "all":
            return value
        if isinstance(value, list) and all(
                isinstance(x, int) and not isinstance(x, bool) for x in value):
            return list(value)
        bad('"all" or a list of layer indices', '"all"' if source.kind != "set" else "all",
            extra=f"{source.fix(dotted, '[0, 1]')} (0-based layer indices) or "
                  f"{dotted.split('.')[-1]} = \"all\"")
    raise AssertionError(f"unknown schema type {typ!r}")  # a bug in SCHEMA


def _check_fixed_value(dotted: str, value: Any) -> Any:
    if dotted == "seed":
        if isinstance(value, int) and not 0 <= value <= _MAX_SEED:
            raise NoisysimError(f"seed must be in 0..2**63-1, got {value}; e.g. seed = 0")
        return value
    if dotted == "model.layers":
        if len(value) < 2:
            raise NoisysimError(
                f"model.layers must list at least an input and an output width, got "
                f"{_toml_value(value)}; e.g. layers = [64, 64, 10]"
            )
        for i, w in enumerate(value):
            check_number(f"model.layers[{i}]", w, 1, None, integer=True,
                         hint="every layer needs at least one node")
        return value
    if dotted == "decorrelation.lr":
        return check_number(dotted, value, 0.0, None,
                            hint="0 freezes R; typical values are 1e-7 to 1e-3")
    if dotted == "decorrelation.kappa":
        return check_number(dotted, value, 0.0, 1.0,
                            hint="0 = pure decorrelation, up to 1 = also unit variance")
    if dotted == "optimizer.lr":
        return check_number(dotted, value, 0.0, None, lo_open=True,
                            hint="the learning rate must be positive")
    if dotted.startswith("train."):
        name = dotted.split(".", 1)[1]
        if name in ("alignment_every", "snapshot_every", "checkpoint_every"):
            return check_number(dotted, value, 0, None, integer=True, hint="0 = never")
        if _FIXED[dotted].type == "integer":
            return check_number(dotted, value, 1, None, integer=True)
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise NoisysimError(f"{name} must be true or false, got {_short(value)} "
                            f"({_type_name(value)})")
    return value


def _check_flatten(name: str, value: Any) -> bool:
    _check_bool(name, value)
    if not value:
        raise NoisysimError(f"{name} = false: the networks are dense and need one row per "
                            "example; remove the key (default true)")
    return True


def _check_opt_int(lo: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        return check_number(name, value, lo, None, integer=True)
    return check


def _check_hidden(name: str, value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise NoisysimError(f"{name} must be a list of layer widths like [32, 16], got "
                            f"{_short(value)}")
    return [check_number(f"{name}[{i}]", h, 1, None, integer=True) for i, h in enumerate(value)]


def _check_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise NoisysimError(f"{name} must be a string (a path or URL), got {_short(value)}")
    return value


_DATA_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "normalize": lambda n, v: check_choice(n, v, ("unit", "standard", "none")),
    "flatten": _check_flatten,
    "validation": lambda n, v: check_number(n, v, 0.0, 1.0, hi_open=True,
                                            hint="the fraction of the training set split off"),
    "dtype": lambda n, v: check_choice(n, v, DTYPES),
    "seed": lambda n, v: check_number(n, v, 0, _MAX_SEED, integer=True),
    "n_train": _check_opt_int(1),
    "n_test": _check_opt_int(1),
    "download": _check_bool,
    "data_dir": _check_str,
    "mirror": _check_str,
    "label_mode": lambda n, v: check_choice(n, v, ("fine", "coarse")),
    "n_inputs": _check_opt_int(1),
    "n_outputs": _check_opt_int(1),
    "hidden": _check_hidden,
    "correlation": lambda n, v: check_number(n, v, 0.0, 1.0, hi_open=True),
    "task": lambda n, v: check_choice(n, v, ("regression", "classification")),
    "target_noise": lambda n, v: check_number(n, v, 0.0, None),
    "slope": lambda n, v: check_number(n, v),
}


# --------------------------------------------------------------------------------------
# The frozen config
# --------------------------------------------------------------------------------------


def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return Section(None, v)
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v: Any) -> Any:
    if isinstance(v, Section):
        return {k: _thaw(x) for k, x in v._data.items()}
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


class Section(Mapping):
    """A read-only table of the config: ``cfg.rule.sigma`` (attribute) or ``cfg.rule["sigma"]``.
    Lists are tuples and nested tables are Sections; ``to_dict()`` gives plain copies."""

    __slots__ = ("_name", "_data")

    def __init__(self, name: str | None, data: Mapping[str, Any]):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_data", {k: _freeze(v) for k, v in data.items()})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, key: str) -> Any:
        try:
            return object.__getattribute__(self, "_data")[key]
        except KeyError:
            close = difflib.get_close_matches(key, list(self._data), n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            where = f"[{self._name}]" if self._name else "this table"
            raise AttributeError(f"{where} has no key {key!r}{guess}; it has "
                                 f"{', '.join(self._data)}") from None

    def __setattr__(self, key, value):
        raise AttributeError("the config is read-only; change it with --set or build a new one "
                             "with config_from_dict(cfg.to_dict() | {...})")

    __delattr__ = __setattr__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"

    def __reduce__(self):
        return (Section, (self._name, self.to_dict()))

    def to_dict(self) -> dict:
        """A plain (mutable, JSON-able) copy."""
        return _thaw(self)


class Config(Section):
    """A validated, read-only run configuration (build it with ``load_config`` or
    ``config_from_dict``). Top-level values: ``cfg.name``, ``cfg.seed``; tables:
    ``cfg.model``, ``cfg.noise``, ``cfg.rule``, ``cfg.decorrelation``, ``cfg.optimizer``,
    ``cfg.data``, ``cfg.train``, ``cfg.backend``. ``cfg.source`` names the file it came from
    (None for dicts)."""

    __slots__ = ("source",)

    def __init__(self, resolved: Mapping[str, Any], source: str | None = None):
        super().__init__(None, {k: (Section(k, v) if isinstance(v, Mapping) else v)
                                for k, v in resolved.items()})
        object.__setattr__(self, "source", source)

    def __reduce__(self):
        return (Config, (self.to_dict(), self.source))

    def __repr__(self) -> str:
        return f"Config(name={self.name!r}, source={self.source!r})"

    def to_toml(self) -> str:
        """The resolved config as TOML text that ``load_config`` reads back to an equal
        config."""
        return _to_toml(self.to_dict())


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read, merge and validate one run's configuration.

    ``path``: a TOML file, or None for the embedded main job (``defaults/default.toml``).
    ``overrides``: ``"section.key=value"`` strings as given to ``--set`` (TOML values; text
    that is not valid TOML is a string). Raises ``NoisysimError`` at the first problem.
    """
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    sets = [parse_override(o) for o in overrides]  # syntax first: cheap and certain
    if path is None:
        resource = _default_config_resource()
        text = resource.read_text(encoding="utf-8")
        label = DEFAULT_CONFIG
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:  # pragma: no cover - a packaging bug
            raise NoisysimError(f"{label}: not valid TOML ({exc}); reinstall noisysim") from None
        src = _Source(label, "file", 2, text, Path.cwd())
        source_name = label
    else:
        p = Path(os.path.expanduser(os.fspath(path)))
        label = os.fspath(path)
        doc, text = _read_toml(p, label)
        src = _Source(label, "file", 2, text, Path(os.path.abspath(p)).parent)
        source_name = label
    layers = [_flatten(doc, src)]
    for i, ((key, value), raw) in enumerate(zip(sets, overrides)):
        s = _Source(f"--set {raw.strip()}", "set", 3 + i, None, Path.cwd())
        layers.append(_override_entries(key, _string_for_fixed(key, value, raw), s))
    return Config(_resolve(layers), source_name)


def config_from_dict(d: Mapping[str, Any], *, source: str = "config dict") -> Config:
    """Validate a nested dict (the shape of a TOML file, or of ``Config.to_dict()``).
    A top-level ``model = "path"`` include is relative to the working directory."""
    if not isinstance(d, Mapping):
        raise NoisysimError(f"a config must be a mapping of sections, got {type(d).__name__}")
    src = _Source(source, "dict", 2, None, Path.cwd())
    return Config(_resolve([_flatten(_plain(d), src)]), None)


def _string_for_fixed(key: str, value: Any, raw: str) -> Any:
    """``--set name=2024-01-01`` or ``--set rule.name=1``: string keys take the raw text."""
    k = _FIXED.get(key)
    text = raw.split("=", 1)[1].strip()
    if k is not None and k.type in ("string", "path") and not isinstance(value, str):
        return text
    if not isinstance(value, (str, int, float, bool, list, dict)):  # TOML dates and times
        return text
    return value


_NAME_KEYS = tuple(name_key for name_key, _ in _GROUPS.values())


def _resolve(layers: list[dict[str, _Entry]]) -> dict:
    """Merge the layers (lowest first) over the included model file, then validate."""
    merged: dict[str, _Entry] = {}
    for layer in layers:
        merged.update(layer)
    included, _ = _include(merged)  # pops the include keys
    ordered = sorted([included] + layers,
                     key=lambda lay: next(iter(lay.values())).source.layer if lay else 0)
    noise_file = _include_noise(ordered)  # pops every noise.file
    if noise_file:
        ordered = sorted(ordered + [noise_file],
                         key=lambda lay: next(iter(lay.values())).source.layer if lay else 0)
    final: dict[str, _Entry] = {}
    for layer in ordered:
        final.update({k: e for k, e in layer.items() if k not in _INCLUDE_KEYS})
    history: dict[str, list[tuple[float, Any]]] = {}
    for layer in ordered:
        for k, e in layer.items():
            if k in _NAME_KEYS:
                history.setdefault(k, []).append((e.source.layer, e.value))
    for k in history:
        history[k].sort(key=lambda lv: lv[0])
    return _Resolver(final, history).resolve()


def _include_noise(layers: list[dict[str, _Entry]]) -> dict[str, _Entry]:
    """Entries of the noise file named by the latest ``noise.file`` (``[noise]`` only),
    a quarter layer below the layer that names it (so that layer's keys override it)."""
    found = [lay.pop("noise.file") for lay in layers if "noise.file" in lay]
    if not found:
        return {}
    e = max(found, key=lambda x: x.source.layer)
    if not isinstance(e.value, str) or not e.value.strip():
        raise NoisysimError(
            f"{e.source.where('noise.file')}: noise.file must be the path of a noise file (a "
            f"string), got {_show(e.value)}; e.g. {e.source.fix('noise.file', repr('noise.toml'))}")
    path = _locate_path(e.value, e.source)
    if not path.is_file():
        looked = " and ".join(dict.fromkeys(str(p) for p in _candidates(e.value, e.source)))
        raise NoisysimError(
            f"{e.source.where('noise.file')}: noise.file = {e.value!r}: noise file not found "
            f"(looked for {looked}); write one with `noisysim noise fit TRACE -o {e.value}`")
    label = _label(path)
    doc, text = _read_toml(path, label)
    noise = doc.get("noise")
    if set(doc) != {"noise"} or not isinstance(noise, dict) or "file" in noise:
        raise NoisysimError(
            f"{label}: a noise file holds only a [noise] table (without file =), found "
            f"{', '.join(sorted(doc)) or 'nothing'}; include it with noise.file")
    src = _Source(label, "file", e.source.layer - 0.25, text, path.parent)
    return _flatten(doc, src, include_file=True)


def resolve_value(cfg: Config | Mapping, key: str) -> Any:
    """The value of a dotted key (``"rule.name"``, ``"model.activation_params.slope"``), as
    plain data."""
    node: Any = cfg.to_dict() if isinstance(cfg, Section) else _plain(cfg)
    path = []
    for part in key.split("."):
        path.append(part)
        if not isinstance(node, dict) or part not in node:
            options = list(node) if isinstance(node, dict) else []
            prefix = ".".join(path[:-1])
            full = [f"{prefix}.{o}" if prefix else o for o in options]
            close = difflib.get_close_matches(".".join(path), full, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise NoisysimError(f"the config has no key {key!r}{guess}")
        node = node[part]
    return node


# --------------------------------------------------------------------------------------
# TOML output
# --------------------------------------------------------------------------------------


def _is_toml(v: Any) -> bool:
    if isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_is_toml(x) for x in v)
    if isinstance(v, Mapping):
        return all(_is_toml(x) for x in v.values())
    return False


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_str(k)


def _toml_str(s: str) -> str:
    out = json.dumps(s, ensure_ascii=False)
    return out.replace("\x7f", "\\u007f")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise NoisysimError(f"cannot write {v!r} ({type(v).__name__}) as a TOML value")


def _to_toml(d: Mapping) -> str:
    lines = []
    for k, v in d.items():
        if not isinstance(v, Mapping):
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in d.items():
        if isinstance(v, Mapping):
            lines.append("")
            lines.append(f"[{_toml_key(k)}]")
            for kk, vv in v.items():
                lines.append(f"{_toml_key(kk)} = {_toml_value(vv)}")
    return "\n".join(lines) + "\n"
