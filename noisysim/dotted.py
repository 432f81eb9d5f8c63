"""Dotted keys into plain nested configs (the JSON a trajectory stores, ``Config.to_dict()``).

    lookup(config, "rule.name")               -> "danp"
    lookup(config, "model.layers.0")          -> 64 (list items by index)
    lookup(config, "rule.sigmaa")             NoisysimError: ... did you mean 'rule.sigma'?
    lookup(config, "rule.sigmaa", None)       -> None
    first_difference(a, b)                    -> "rule.sigma", or None when equal

One home for both, used by the config API (``resolve_value``), the analysis
(``get_config_value``), resuming a trajectory and the sweep's and experiments' checks that a
file on disk holds the planned run. No dependency beyond the error class, so that reading
trajectories never imports the simulator.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

from noisysim.errors import NoisysimError

_MISSING = object()


def lookup(config: Any, key: str, default: Any = _MISSING) -> Any:
    """The value at dotted ``key`` in ``config`` (a mapping, or anything with ``to_dict()``
    such as a ``Config``, read as that plain dict); list items by index ("layers.0").

    Without ``default`` a missing key raises ``NoisysimError`` naming the closest key and
    what the table holds instead.
    """
    node: Any = config.to_dict() if hasattr(config, "to_dict") else config
    done: list[str] = []
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif (
            isinstance(node, (list, tuple))
            and part.lstrip("-").isdigit()
            and -len(node) <= int(part) < len(node)
        ):
            node = node[int(part)]
        else:
            if default is not _MISSING:
                return default
            prefix = "".join(f"{p}." for p in done)
            siblings = list(node) if isinstance(node, Mapping) else []
            close = difflib.get_close_matches(key, [f"{prefix}{s}" for s in siblings], n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            where = f"[{'.'.join(done)}]" if done else "the top level"
            have = (", ".join(map(str, siblings)) or "nothing") if isinstance(node, Mapping) \
                else f"a {type(node).__name__}"
            raise NoisysimError(f"the config has no key {key!r}{guess}; {where} holds {have}")
        done.append(part)
    return node


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """Dotted key of the first place where two JSON-like values differ (None if equal).

    Tables are compared key by key (keys of ``a`` first, then those only in ``b``), lists of
    equal length item by item ("layers.1"); NaN equals NaN, because a config stored as JSON
    and read back holds a NaN where it held one before (``a != a`` tests for NaN).
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                return f"{prefix}{key}"
            diff = first_difference(a[key], b[key], f"{prefix}{key}.")
            if diff is not None:
                return diff
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff = first_difference(x, y, f"{prefix}{i}.")
            if diff is not None:
                return diff
        return None
    if a == b or (a != a and b != b):
        return None
    return prefix.rstrip(".") or "(root)"
