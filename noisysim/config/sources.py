"""Where every value came from: a source (a file, a ``--set``, a dict, the defaults) and
its entries, for error messages that name the file and line, and for paths that are
relative to the file that holds them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class _Source:
    label: str                 # "run.toml", "--set rule.sigma=1", "config dict", "defaults"
    kind: str                  # "file" | "set" | "dict" | "default"
    layer: float               # 0 built-in defaults, 1 the embedded default file, 2 file
                               # or dict, 3... each --set; an included file: 0.5 below
                               # the layer naming it
    text: str | None = None    # file text, for line numbers
    base: Path | None = None   # folder that relative paths start from
    role: str = "your file"    # what config show calls a file above the default: "your
                               # file", or the included "model file" / "noise file"

    def where(self, dotted: str | None = None) -> str:
        if self.kind == "file" and dotted and self.text is not None:
            line = _find_line(self.text, dotted)
            if line:
                return f"{self.label}:{line}"
        return self.label

    def origin(self, dotted: str) -> str:
        """Where a value came from, as ``config show`` names it."""
        if self.layer <= _DEFAULT_LAYER:
            return f"default ({self.where(dotted)})" if self.kind == "file" else "default"
        if self.kind == "file":
            return f"{self.role} {self.where(dotted)}"
        return self.label

    def fix(self, dotted: str, value_text: str) -> str:
        """How to write ``dotted`` = value in this kind of source."""
        if self.kind == "set":
            return f"write --set {dotted}={value_text}"
        if self.kind == "dict":
            return f"give {dotted} = {value_text}"
        leaf = dotted.rsplit(".", 1)[-1]
        return f"write {leaf} = {value_text}"


#: The layer of ``noisysim/defaults/default.toml``, under every file, dict and ``--set``.
_DEFAULT_LAYER = 1

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
