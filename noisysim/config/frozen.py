"""The frozen config: ``Config`` and its read-only tables (``Section``)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from .values import _to_toml

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
