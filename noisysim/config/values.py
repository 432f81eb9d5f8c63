"""Values in and out: TOML values parsed from ``--set`` text and written back as TOML, and
how a value is shown in an error message (``'1e-3' (a string)``)."""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from noisysim.errors import NoisysimError

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


def _copy_default(v: Any) -> Any:
    return json.loads(json.dumps(v)) if isinstance(v, (list, dict)) else v


def _short(v: Any) -> str:
    s = _toml_value(v) if _is_toml(v) and not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _parse_value(raw: str) -> Any:
    stripped = raw.strip()
    try:
        return tomllib.loads(f"v = {stripped}")["v"]
    except tomllib.TOMLDecodeError:
        return stripped


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
