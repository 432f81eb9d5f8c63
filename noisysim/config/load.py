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
from .sources import _Source
from .validate import _Resolver
from .values import _plain


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


def _resolve(layers: list[dict]) -> dict:
    """Merge the layers, then validate: the fully resolved config as a plain dict."""
    return _Resolver(*merge(layers)).resolve()


#: The value of a dotted key (``"rule.name"``, ``"model.activation_params.slope"``) in a
#: ``Config`` (as plain data) or a dict; see ``noisysim.dotted.lookup``.
resolve_value = lookup
