"""User-facing errors and the validation helpers that raise them.

Every message is one line that says what was expected, what was found and how to fix it.
The command line prints ``NoisysimError`` without a traceback (unless ``--debug``).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np


class NoisysimError(ValueError):
    """A user mistake (bad parameter, bad file, bad config): printed as one line."""


def one_line(text: Any) -> str:
    """``text`` (an exception, a message) with every run of whitespace, newlines included,
    replaced by one space: what goes into a one-line error or a status message."""
    return " ".join(str(text).split())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape}"
    return repr(value)


def check_number(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
    hint: str = "",
) -> float | int:
    """Return ``value`` as a float (or int) after checking that it is finite and in range.

    The range is [lo, hi] with either end open when ``lo_open``/``hi_open``; ``None`` means
    unbounded on that side.
    """
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise NoisysimError(f"{name} must be {kind}, got {_fmt(value)}{_hint(hint)}")
    if integer and not float(value).is_integer():
        raise NoisysimError(f"{name} must be an integer, got {_fmt(value)}{_hint(hint)}")
    v = int(value) if integer else float(value)
    if not math.isfinite(v):
        raise NoisysimError(f"{name} must be finite, got {v!r}{_hint(hint)}")
    below = lo is not None and (v <= lo if lo_open else v < lo)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if below or above:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise NoisysimError(
            f"{name} must be in {left}{lo_s}, {hi_s}{right}, got {v!r}{_hint(hint)}"
        )
    return v


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise list the valid ones."""
    choices = list(choices)
    if value not in choices:
        import difflib

        close = difflib.get_close_matches(str(value), choices, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise NoisysimError(
            f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}{guess}"
        )
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` as a bool if it is one (numpy's included); TOML spells it true/false."""
    if not isinstance(value, (bool, np.bool_)):
        raise NoisysimError(f"{name} must be true or false, got {_fmt(value)}")
    return bool(value)


def check_finite_array(name: str, array: np.ndarray) -> None:
    """Refuse arrays holding NaN or inf, naming the first offending position."""
    if array.size and not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0]
        where = tuple(int(i) for i in bad)
        raise NoisysimError(
            f"{name} must be finite, found {float(array[where])!r} at index {where}; "
            "clean or impute the data before simulating"
        )


def _hint(hint: str) -> str:
    return f"; {hint}" if hint else ""
