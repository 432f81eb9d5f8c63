"""Validation: merged entries -> the fully resolved config dict, or a one-line error.

``_Resolver`` resolves one section at a time (types, ranges, names of components, the
options of the chosen rule, noise model, optimiser, dataset and activation, by building
them), then the checks across sections (layer widths against the dataset, the loss against
the task, the noise layers against the depth). Every error names where the value came
from (file and line, or the ``--set`` argument), the key, the value and the fix.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import math
import re
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Sequence

from noisysim import data as _data
from noisysim.activations import activation_params, make_activation
from noisysim.decorrelation import Decorrelator
from noisysim.layers import build as build_layers
from noisysim.layers import is_table_spec
from noisysim.errors import NoisysimError, check_bool, check_choice, check_number
from noisysim.hardware import WEIGHT_DEVICE_KEYS, Readout, Variability, WeightDevice
from noisysim.losses import CLASS_LOSSES
from noisysim.network import DTYPES
from noisysim.noise import NOISE_MODELS, make_noise
from noisysim.optim import make_optimizer
from noisysim.rules import make_rule
from noisysim.train import TrainSettings

from .schema import (
    _FIXED,
    _GROUPS,
    _MAX_SEED,
    _NAME_RE,
    _PATH_PARAMS,
    DATASET_SHAPES,
    SCHEMA,
    SECTIONS,
    _noise_params,
    _optimizer_params,
)
from .sources import _DEFAULT_LAYER, _DEFAULTS_SOURCE, _Entry, _locate_path, _Source
from .values import (
    _copy_default,
    _is_toml,
    _parse_value,
    _plain,
    _short,
    _show,
    _toml_value,
    _type_name,
)


def default_name(resolved: Mapping[str, Any]) -> str:
    """``<rule>-<dataset>-<hash>``: a readable stem plus the first 6 hex digits of the SHA-256
    of the resolved config (without ``name`` and ``backend``, which do not change the
    trajectory), so that runs of different configs never share a file name."""
    body = {k: v for k, v in resolved.items() if k not in ("name", "backend")}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return f"{resolved['rule']['name']}-{resolved['data']['name']}-{digest[:6]}"


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
            replaced = self.name_at(name_key, e.source.layer) != name
            if opt in accepted and not (replaced and e.source.layer <= _DEFAULT_LAYER
                                        and dotted not in _FIXED):
                out[opt] = e   # the embedded default's options belong to its own component
                continue
            if replaced:
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
        return _data.dataset_key(value) if name_key == "data.name" else value

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
            if blame is None:  # a message that quotes an option's value (a trace file's path)
                blame = next((k for k, e in opts.items() if isinstance(e.value, str)
                              and len(e.value) > 2 and e.value in msg), None)
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
        if self.typed("backend.graphs"):  # off (the default) leaves configs as they were
            out["backend"]["graphs"] = True
        self.measurement()
        self.cross_checks()
        out["name"] = self.name()
        order = ("name", "seed") + SECTIONS
        return {k: out[k] for k in order if k in out}  # [measurement] only when active

    def name(self) -> str:
        if "name" not in self.entries:
            return default_name(self.out)
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
        spec = self.entry("model.layers").value
        if is_table_spec(spec):  # a conv net: validated against the image shape later
            m["layers"] = [dict(t) for t in spec]
        else:
            m["layers"] = self.typed("model.layers")
        if "model.input_shape" in self.entries:
            m["input_shape"] = self.typed("model.input_shape")
        m["activation"] = act = self.typed("model.activation")
        accepted = list(activation_params(act))
        params = self.params("model.activation_params", act, accepted,
                             f"activation {act!r}")
        empty = self.entries.get("model.activation_params")
        if empty is not None and not isinstance(empty.value, dict):
            self.fail("model.activation_params",
                      f"model.activation_params must be a table like {{slope = 0.1}}, got "
                      f"{_show(empty.value)}")
        if "path" in params and isinstance(params["path"].value, str):  # a measured curve
            e = params["path"]
            params["path"] = _Entry(str(_locate_path(e.value, e.source)), e.source)
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
                             "hold_upstream": self.typed("noise.hold_upstream"),
                             **{k: v for k, v in params.items() if v is not None}}
        prov = self.entries.get("noise.provenance")
        if prov is not None and self.name_at("noise.model", prov.source.layer) == name:
            self.out["noise"]["provenance"] = self.typed("noise.provenance")
        variability = self.variability()
        if variability.active:
            self.out["noise"]["variability"] = variability.params()

    def decorrelation(self) -> None:
        lr, kappa = self.typed("decorrelation.lr"), self.typed("decorrelation.kappa")
        positions = {}
        if "decorrelation.positions" in self.entries:
            positions["positions"] = self.typed("decorrelation.positions")
        try:
            Decorrelator(lr, kappa)
        except NoisysimError as exc:  # a check added to Decorrelator after this schema
            raise NoisysimError(f"{self.where('decorrelation.lr')}: {exc}") from None
        self.out["decorrelation"] = {"lr": lr, "kappa": kappa, **positions}

    def optimizer(self) -> None:
        name = self.typed("optimizer.name")
        accepted = _optimizer_params(name)
        opts = self.params("optimizer", name, accepted, f"optimizer {name!r}")
        lr = self.typed("optimizer.lr")
        opt = self.component("optimizer", make_optimizer, name, opts, extra={"lr": lr})
        options = _plain(opt.options())
        self.out["optimizer"] = {"name": name, **{k: v for k, v in options.items()
                                                  if v is not None}}
        device = self.hardware("optimizer", WeightDevice, WEIGHT_DEVICE_KEYS)
        self.out["optimizer"].update(device.params() if not device.ideal else {})

    # -- hardware realism (noisysim.hardware) ----------------------------------------------
    def hardware(self, section: str, build: Callable[..., Any], names: Sequence[str]):
        """``build(**{name: section.name})`` from fixed keys; its error points at the key it
        names (the first one mentioned)."""
        values = {n: self.typed(f"{section}.{n}") for n in names}
        if "device" in values:
            values["kind"] = values.pop("device")
        try:
            return build(**values)
        except NoisysimError as exc:
            msg = str(exc)
            blame = min((n for n in names if f"{section}.{n}" in msg),
                        key=lambda n: msg.index(f"{section}.{n}"), default=names[0])
            raise NoisysimError(f"{self.where(f'{section}.{blame}')}: {msg}") from None

    def variability(self) -> Variability:
        """noise.variability: a table, or its keys one by one (``--set
        noise.variability.amplitude=0.1``)."""
        table = dict(self.typed("noise.variability"))
        prefix = "noise.variability."
        dotted = [k for k in self.entries if k.startswith(prefix)]
        table.update({k[len(prefix):]: self.entries[k].value for k in dotted})
        blame = dotted[-1] if dotted else "noise.variability"
        try:
            return Variability(**table)
        except TypeError:
            self.fail(blame, f"noise.variability = {_short(table)}: accepted keys are "
                             "amplitude, p_flip, gain, offset and distribution")
        except NoisysimError as exc:
            self.fail(blame, str(exc))

    def measurement(self) -> None:
        """[measurement] (only in the resolved config when it does something)."""
        readout = self.hardware("measurement", Readout, (
            "noise_std", "bits", "range", "loss_noise_std", "loss_bits", "loss_range"))
        if readout.active:
            self.out["measurement"] = readout.params()

    def data(self) -> None:
        e = self.entry("data.name")
        raw = _check_type("data.name", "string", e.value, e.source)
        key = _data.dataset_key(raw)
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
        if "layout" in entry.options and "layout" not in opts:  # CIFAR: conv nets read NHWC
            resolved["layout"] = "hwc" if is_table_spec(self.out["model"]["layers"]) else "chw"
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
        e = self.entries.get(key)
        if e is not None and e.source.layer > _DEFAULT_LAYER:
            return self.where(key)
        return f"{self.where(cause)}"

    def defaulted(self, key: str) -> str:
        e = self.entries.get(key)
        return "" if e is not None and e.source.layer > _DEFAULT_LAYER else " (the default)"

    def cross_checks(self) -> None:
        m, d = self.out["model"], self.out["data"]
        layers = self.widths(m, d)
        info = _dataset_info(d)
        if info is not None:
            inputs, want_out, task = info
            loss = m["loss"]
            cause = "data.task" if "data.task" in self.entries else "data.name"
            if task == "classification" and loss not in CLASS_LOSSES:
                raise NoisysimError(
                    f"{self.blame('model.loss', cause)}: model.loss = {loss!r}"
                    f"{self.defaulted('model.loss')} needs regression targets but dataset "
                    f"{d['name']!r} is a classification set (integer labels); set [model] "
                    "loss = \"cross_entropy\" (or \"softmax_mse\")")
            if task == "regression" and loss in CLASS_LOSSES:
                raise NoisysimError(
                    f"{self.blame('model.loss', cause)}: model.loss = {loss!r}"
                    f"{self.defaulted('model.loss')} needs class labels but dataset "
                    f"{d['name']!r} is a regression set (float targets); set [model] loss = "
                    "\"squared_error\" (or [data] task = \"classification\")")
            if is_table_spec(m["layers"]) and (layers[0] != inputs or layers[-1] != want_out):
                what = "classes" if task == "classification" else "outputs"
                bad = (f"input_shape {m['input_shape']} has {layers[0]} inputs, the dataset "
                       f"{inputs}; fix model.input_shape" if layers[0] != inputs else
                       f"the last layer has {layers[-1]} outputs, the dataset {want_out} "
                       f"{what}; end with {{dense = {want_out}}}")
                raise NoisysimError(f"{self.where('model.layers')}: model.layers does not fit "
                                    f"dataset {d['name']!r}: {bad}")
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
        self.check_sizes()
        self.check_lr()
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

    def widths(self, m: dict, d: dict) -> list:
        """Node counts of the layers: model.layers itself, or those of its tables
        (``noisysim.layers.build``) on the input image shape (model.input_shape, else the
        dataset's), which sets m["input_shape"]."""
        if not is_table_spec(m["layers"]):
            return m["layers"]
        if d.get("layout", "hwc") != "hwc":
            self.fail("data.layout", f"data.layout = {d['layout']!r} gives rows plane by "
                                     "plane; a conv net reads pixel by pixel: set data.layout "
                                     "= \"hwc\" (the default for conv nets) or remove it")
        shape = m.get("input_shape") or (DATASET_SHAPES.get(d["name"]) or {}).get("image")
        if shape is None:
            known = [n for n, v in DATASET_SHAPES.items() if v.get("image")]
            self.fail("model.layers",
                      f"model.layers in table form (a conv net) needs input images, and "
                      f"dataset {d['name']!r} has no image shape; use {', '.join(known)}, "
                      f"set [model] input_shape = [H, W, C], or give a list of widths")
        m["input_shape"] = list(shape)
        try:
            widths, _ = build_layers(m["layers"], shape)
        except NoisysimError as exc:
            raise NoisysimError(f"{self.where('model.layers')}: {exc}") from None
        return list(widths)

    def check_sizes(self) -> None:
        """Sizes against the training set: a batch larger than it cannot mean what it says
        (the trainer would take the whole set once per epoch): an error. A period
        (``log_every``, ``alignment_every``, ...) the user set longer than the whole run
        never fires: a warning."""
        d, t = self.out["data"], self.out["train"]
        shape = DATASET_SHAPES.get(d["name"]) or {}
        n = d.get("n_train") or shape.get("n_train")
        if n is None:
            return
        frac = d.get("validation", 0.0)
        if frac > 0:  # as data.dataset._validation_indices splits it off
            n -= min(max(int(math.floor(frac * n + 0.5)), 1), n - 1)
        batch = t["batch_size"]
        if batch > n:
            fix = self.entry("train.batch_size").source.fix("train.batch_size", str(n))
            self.fail("train.batch_size",
                      f"train.batch_size = {batch} exceeds the {n} training examples of "
                      f"{d['name']!r}, so every epoch would be one step on the whole set; "
                      f"use at most {n} ({fix} for full-batch training)")
        per_epoch = math.ceil(n / batch)
        updates = per_epoch * t["epochs"]
        for key in ("log_every", "alignment_every", "snapshot_every", "checkpoint_every"):
            e = self.entries.get(f"train.{key}")
            if t[key] > updates and e is not None and e.source.layer > _DEFAULT_LAYER:
                effect = ("no per-update rows are logged" if key == "log_every"
                          else "it never fires (0 turns it off)")
                warnings.warn(f"{self.where(f'train.{key}')}: train.{key} = {t[key]} exceeds "
                              f"the run's {updates} updates ({t['epochs']} epochs of "
                              f"{per_epoch}), so {effect}; lower it", ConfigWarning,
                              stacklevel=2)

    def check_lr(self) -> None:
        """Legal but almost surely a mistake: Adam moves each weight by about lr per update,
        so lr >= 1 throws the weights (of order 0.1) far away at the first step."""
        o = self.out["optimizer"]
        if o["name"] == "adam" and o["lr"] >= 1:
            warnings.warn(f"{self.where('optimizer.lr')}: optimizer.lr = {o['lr']!r} with adam "
                          "moves every weight by about that much per update (weights are of "
                          "order 0.1): the run will almost surely blow up; typical values are "
                          "1e-4 to 1e-2", ConfigWarning, stacklevel=2)


class ConfigWarning(UserWarning):
    """A config value that is legal but almost surely a mistake (says which and why)."""


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
            if isinstance(value, float):  # 5.0 is a float in TOML: say so rather than guess
                whole = math.isfinite(value) and value.is_integer()
                bad("an integer", str(int(value)) if whole else "1",
                    extra=(f"{source.fix(dotted, str(int(value)))} (no decimal point)" if whole
                           else "use a whole number"))
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
            if isinstance(x, bool) or not isinstance(x, int):
                example = _toml_value([int(v) if isinstance(v, float) and v.is_integer() else v
                                       for v in value])
                bad("a list of integers", example if "." not in example else "[64, 64, 10]")
        return list(value)
    if typ == "range [lo, hi]":
        if (isinstance(value, list) and len(value) == 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)):
            return [float(x) for x in value]
        bad("a pair of numbers [lo, hi]", "[-1.0, 1.0]")
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
    if dotted == "model.input_shape":
        if len(value) != 3:
            raise NoisysimError(f"model.input_shape must be [H, W, C], got "
                                f"{_toml_value(value)}; e.g. input_shape = [28, 28, 1]")
        for i, w in enumerate(value):
            check_number(f"model.input_shape[{i}]", w, 1, None, integer=True)
        return value
    if dotted == "decorrelation.positions":
        return check_number(dotted, value, 1, None, integer=True,
                            hint="1 = every patch row, s = every s-th")
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


def _check_flatten(name: str, value: Any) -> bool:
    check_bool(name, value)
    if not value:
        raise NoisysimError(f"{name} = false: the networks are dense and need one row per "
                            "example; remove the key (default true)")
    return True


def _check_opt_int(lo: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, float):
            raise NoisysimError(f"{name} must be an integer, got {value!r} (a float); write it "
                                "without a decimal point")
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
    "layout": lambda n, v: check_choice(n, v, _data.cifar.LAYOUTS),
    "validation": lambda n, v: check_number(n, v, 0.0, 1.0, hi_open=True,
                                            hint="the fraction of the training set split off"),
    "dtype": lambda n, v: check_choice(n, v, DTYPES),
    "seed": lambda n, v: check_number(n, v, 0, _MAX_SEED, integer=True),
    "n_train": _check_opt_int(1),
    "n_test": _check_opt_int(1),
    "download": check_bool,
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
