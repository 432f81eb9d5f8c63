"""Layers of a config, lowest first: the defaults, an included model file, the config
file (or dict), then each ``--set`` in order; reading TOML files and ``--set`` text, the
model-file include, and merging the layers into one entry per dotted key.

An included file sits just below the layer that names it (``_include``): the including
file overrides its keys, and ``--set model=models/x.toml`` overrides the files under it.
``merge`` also returns, per component name key (``rule.name``, ...), the value each layer
gave it, so that validation can drop the options of a component a later layer replaced.
"""

from __future__ import annotations

import difflib
import importlib.resources
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from noisysim.errors import NoisysimError
from noisysim.hardware import WEIGHT_DEVICE_KEYS

from .schema import _FIXED, _GROUPS, _INCLUDE_KEYS, _KEY_RE, _TOP_KEYS, SCHEMA, SECTIONS
from .sources import _candidates, _Entry, _label, _locate_path, _Source
from .values import _parse_value, _plain, _show


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
        clash = _include_clash(text)
        if clash is not None:
            line, value = clash
            raise NoisysimError(
                f"{label}:{line}: model = {value} (a model file) and a [model] table cannot "
                f"both stand in one file; write the include inside the table: [model] "
                f"file = {value}, then the keys that override it"
            ) from None
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


def _include_clash(text: str) -> tuple[int, str] | None:
    """(line, value) of a top-level ``model = "..."`` in a text that also has a ``[model]``
    table (TOML allows only one of them)."""
    top, include = True, None
    for i, line in enumerate(text.splitlines(), 1):
        stripped = line.split("#", 1)[0].strip()
        if stripped.startswith("["):
            if re.fullmatch(r"\[\s*model\s*\]", stripped) and include is not None:
                return include
            top = False
            continue
        m = re.match(r"model\s*=\s*(\S.*)$", stripped)
        if top and m:
            include = (i, m.group(1))
    return None


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


#: what a model file (the hardware: network, device noise, read-out, weight device) may hold
MODEL_FILE_SECTIONS = ("model", "noise", "measurement", "optimizer")


def _flatten(doc: Mapping, source: _Source, *, include_file: bool = False) -> dict[str, _Entry]:
    """A parsed TOML document -> {dotted key: entry}, refusing unknown sections."""
    out: dict[str, _Entry] = {}
    allowed = MODEL_FILE_SECTIONS if include_file else SECTIONS
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
                    f"{source.where(key)}: a model file may hold only [model], [noise], "
                    f"[measurement] and the weight device under [optimizer], found [{key}]; "
                    "move it to the config file that includes this one"
                )
            if not isinstance(value, dict):
                extra = " or the path of a model file (a string)" if key == "model" else ""
                raise NoisysimError(
                    f"{source.where(key)}: {key} must be a table ([{key}] with keys under "
                    f"it){extra}, got {_show(value)}"
                )
            for k, v in value.items():
                dotted = f"{key}.{k}"
                if include_file and key == "optimizer" and k not in WEIGHT_DEVICE_KEYS:
                    raise NoisysimError(
                        f"{source.where(dotted)}: a model file may set only the weight device "
                        f"under [optimizer] ({', '.join(WEIGHT_DEVICE_KEYS)}), found {dotted}; "
                        "move it to the config file that includes this one")
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
    valid = list(MODEL_FILE_SECTIONS) if include_file else list(_TOP_KEYS) + list(SECTIONS)
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
    if table_key in ("model.activation_params", "noise.variability") and len(parts) == 3:
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
        shipped = _shipped_model(e.value)
        if shipped is None:
            looked = [str(p) for p in _candidates(e.value, e.source)]
            raise NoisysimError(
                f"{e.source.where(key)}: {key} = {e.value!r}: model file not found (looked for "
                f"{' and '.join(dict.fromkeys(looked))}); give a path relative to the config "
                f"file or the working directory, or the name of a shipped model: "
                f"{', '.join(shipped_models())}"
            )
        path = shipped
        label = f"noisysim/models/{path.name}"  # shipped: where it lives in the package
    else:
        label = _label(path)
    doc, text = _read_toml(path, label)
    # Just below the layer that names it: the naming file overrides it, and a --set include
    # overrides the files under it.
    src = _Source(label, "file", e.source.layer - 0.5, text, path.parent, role="model file")
    inc = _flatten(doc, src, include_file=True)
    return inc, src


def shipped_models() -> list[str]:
    """Names of the model files shipped in ``noisysim/models/`` (``model = "cifar_mlp"``)."""
    folder = Path(str(importlib.resources.files("noisysim").joinpath("models")))
    return sorted(p.stem for p in folder.glob("*.toml"))


def _shipped_model(value: str) -> Path | None:
    """The shipped model file a bare name (``cifar_mlp`` or ``cifar_mlp.toml``) stands for."""
    name = value.strip()
    name = name[:-5] if name.endswith(".toml") else name
    if name not in shipped_models():
        return None
    return Path(str(importlib.resources.files("noisysim").joinpath("models", f"{name}.toml")))


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
    src = _Source(label, "file", e.source.layer - 0.25, text, path.parent, role="noise file")
    return _flatten(doc, src, include_file=True)


def merge(layers: list[dict[str, _Entry]]) -> tuple[dict[str, _Entry], dict[str, list]]:
    """Merge the layers (lowest first) over the included model file.

    Returns the entries (one per dotted key, the highest layer's) and the history of the
    component name keys: name key -> [(layer, value), ...] in layer order.
    """
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
    return final, history
