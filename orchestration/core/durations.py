"""Durations as operators write them: ``30d``, ``12h``, ``90m``, ``45s`` or seconds."""

from __future__ import annotations

import math
import re
from typing import Final

_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
OFF: Final = frozenset({"off", "none", "never", "forever"})


def parse_duration(value: object, what: str) -> float | None:
    """Seconds (> 0) from ``30d``/``12h``/``90m``/``45s``/a number; None for ``off``.

    Raises ValueError naming ``what`` for anything else (0, negative, unknown unit).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in OFF):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a duration such as 30d, 12h or 3600, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.lower())):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"{what} must be a duration such as 30d, 12h, 90m, 45s or seconds "
                         f"(or 'off'), got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{what} must be more than 0 seconds (or 'off'), got {value!r}")
    return seconds
