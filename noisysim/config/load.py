"""The entry points: ``load_config`` (a TOML file and ``--set`` overrides) and
``config_from_dict``: read -> layer -> validate -> freeze."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterable

from noisysim.dotted import lookup
from noisysim.errors import NoisysimError

from .frozen import Config
from .layering import (
    _flatten,
    _override_entries,
    _read_toml,
    _string_for_fixed,
    merge,
    parse_override,
)
from .schema import DEFAULT_CONFIG, _default_config_resource
from .sources import _DEFAULT_LAYER, _Source
from .validate import _Resolver
from .values import _plain


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read, merge and validate one run's configuration.

    ``path``: a TOML file that states what it changes from the embedded default
    (``defaults/default.toml``), or None for that default alone. ``overrides``:
    ``"section.key=value"`` strings as given to ``--set`` (TOML values; text that is not
    valid TOML is a string). Raises ``NoisysimError`` at the first problem.
    """
    layers, source_name = _layers(path, overrides)
    return Config(_resolve(layers), source_name)


def explain_config(path: str | os.PathLike | None = None,
                   overrides: Iterable[str] = ()) -> tuple[Config, dict[str, str]]:
    """``load_config`` plus, for every resolved leaf (dotted key), where its value came from:
    ``"default (noisysim/defaults/default.toml:12)"``, ``"model file models/x.toml:3"``,
    ``"noise file noise.toml:4"``, ``"your file run.toml:7"``, ``"--set rule.sigma=1e-3"``,
    or ``"default (rule 'anp')"`` for a value the component fills in itself (``noisysim
    config show`` prints these). A leaf inside a table value (``noise.provenance.dt``) comes
    from where the table was set."""
    layers, source_name = _layers(path, overrides)
    resolver = _Resolver(*merge(layers))
    cfg = Config(resolver.resolve(), source_name)
    origins = {}
    for dotted in _leaves(cfg.to_dict()):
        e, key = resolver.entries.get(dotted), dotted
        while e is None and key.count(".") > 1:  # a leaf of a table value
            key = key.rsplit(".", 1)[0]
            e = resolver.entries.get(key)
        if dotted == "name" and e is None:
            origins[dotted] = "default (<rule>-<dataset>-<hash of the config>)"
        elif dotted == "model.input_shape" and e is None:
            origins[dotted] = f"default (data {lookup(cfg, 'data.name')!r}: its image shape)"
        elif e is None:
            section = dotted.split(".", 1)[0]
            owner = {"rule": "rule.name", "noise": "noise.model", "optimizer": "optimizer.name",
                     "data": "data.name", "model": "model.activation"}.get(section)
            what = f"{owner.split('.')[0]} {lookup(cfg, owner)!r}" if owner else "noisysim"
            origins[dotted] = f"default ({what})"
        else:
            origins[dotted] = e.source.origin(dotted)
    return cfg, origins


def _leaves(d: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out += _leaves(v, key + ".")
        else:
            out.append(key)
    return out


def _default_layer() -> dict:
    """The embedded default as the lowest file layer, under every config."""
    text = _default_config_resource().read_text(encoding="utf-8")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - a packaging bug
        raise NoisysimError(f"{DEFAULT_CONFIG}: not valid TOML ({exc}); reinstall noisysim") from None
    return _flatten(doc, _Source(DEFAULT_CONFIG, "file", _DEFAULT_LAYER, text, Path.cwd()))


def _layers(path, overrides) -> tuple[list[dict], str]:
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    sets = [parse_override(o) for o in overrides]  # syntax first: cheap and certain
    layers = [_default_layer()]
    source_name = DEFAULT_CONFIG
    if path is not None:
        p = Path(os.path.expanduser(os.fspath(path)))
        label = os.fspath(path)
        doc, text = _read_toml(p, label)
        src = _Source(label, "file", 2, text, Path(os.path.abspath(p)).parent)
        layers.append(_flatten(doc, src))
        source_name = label
    for i, ((key, value), raw) in enumerate(zip(sets, overrides)):
        s = _Source(f"--set {raw.strip()}", "set", 3 + i, None, Path.cwd())
        layers.append(_override_entries(key, _string_for_fixed(key, value, raw), s))
    return layers, source_name


def config_from_dict(d: Mapping[str, Any], *, source: str = "config dict") -> Config:
    """Validate a nested dict (the shape of a TOML file, or of ``Config.to_dict()``) over the
    embedded default, as ``load_config`` does a file. A top-level ``model = "path"`` include
    is relative to the working directory."""
    if not isinstance(d, Mapping):
        raise NoisysimError(f"a config must be a mapping of sections, got {type(d).__name__}")
    src = _Source(source, "dict", 2, None, Path.cwd())
    return Config(_resolve([_default_layer(), _flatten(_plain(d), src)]), None)


def _resolve(layers: list[dict]) -> dict:
    """Merge the layers, then validate: the fully resolved config as a plain dict."""
    return _Resolver(*merge(layers)).resolve()


#: The value of a dotted key (``"rule.name"``, ``"model.activation_params.slope"``) in a
#: ``Config`` (as plain data) or a dict; see ``noisysim.dotted.lookup``.
resolve_value = lookup
