"""Human durations (``500ms``, ``30s``, ``10m``, ``1h30m``, ``2d``) to seconds and back."""

from __future__ import annotations

import math
import re
from typing import Final

from homeops.core.errors import quote_input

_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE: Final = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_HINT: Final = "(use e.g. 500ms, 30s, 10m, 1h30m)"


def parse_duration(value: str | float) -> float:
    """Seconds in ``value``; a bare number is seconds. Raises ValueError with a hint."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _finite(float(value), value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {quote_input(value)} {_HINT}")  # noqa: TRY004
    text = value.strip().lower()
    if not text.isascii():
        # float() and \d both take other scripts' digits ("٣s" read as 3 s): not a duration
        # anybody types on purpose.
        raise ValueError(f"invalid duration {quote_input(value)} {_HINT}")
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return _finite(number, value)
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"invalid duration {quote_input(value)} {_HINT}")
    return _finite(sum(float(num) * _UNITS[unit] for num, unit in _PART.findall(text)), value)


def _finite(seconds: float, original: object) -> float:
    # "nan", "inf" and "1e400" parse as floats; none is a usable interval or timeout.
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {quote_input(original)}: not a number")
    if seconds < 0:
        raise ValueError(f"invalid duration {quote_input(original)} (must be a non-negative time)")
    return seconds


def format_duration(seconds: float) -> str:
    """Shortest exact human form: 0.5 -> ``500ms``, 90 -> ``1m30s``, 3600 -> ``1h``."""
    if seconds < 1 and seconds != 0:
        ms = seconds * 1000
        return f"{ms:g}ms"
    whole = int(seconds)
    frac = seconds - whole
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    rest = whole + frac
    if rest or not parts:
        parts.append(f"{rest:g}s")
    return "".join(parts)
