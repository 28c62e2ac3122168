"""Config value types shared by every section: durations, sizes, strict models."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)?\s*$")
_DURATION_UNITS = {
    None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0,
    "d": 86400.0, "w": 604800.0,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?[bB]?|[bB])?\s*$")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4,
}


#: the longest duration any option takes (ten years), unless the field says less
MAX_DURATION = 3650 * 86400.0
#: the largest size any option takes (1 TiB)
MAX_SIZE = 1024**4

_DURATION_HELP = "expected a duration such as 30s, 10m, 2h or 7d"
_SIZE_HELP = "expected a size such as 64MiB or 1GB"


def _bounded(seconds: float) -> float:
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DURATION:
        raise ValueError(f"{_DURATION_HELP}, from 0 to 3650d")
    return seconds


def parse_duration(value: Any) -> Any:
    """``30``, ``"30s"``, ``"500ms"``, ``"10m"``, ``"2h"``, ``"7d"`` → seconds (float)."""
    if isinstance(value, bool):
        raise ValueError(_DURATION_HELP)
    try:
        if isinstance(value, (int, float)):
            return _bounded(float(value))
        if isinstance(value, str):
            m = _DURATION.match(value)
            if m:
                return _bounded(float(m.group(1)) * _DURATION_UNITS[m.group(2)])
    except OverflowError:
        pass  # an integer too large for a float: out of range like any other
    else:
        raise ValueError(_DURATION_HELP)
    raise ValueError(f"{_DURATION_HELP}, from 0 to 3650d")


def parse_size(value: Any) -> Any:
    """``1048576``, ``"512KiB"``, ``"256MB"``, ``"1GiB"`` → bytes (int)."""
    if isinstance(value, bool):
        raise ValueError(_SIZE_HELP)
    size: float | int | None = None
    try:
        if isinstance(value, int):
            size = value
        elif isinstance(value, str):
            m = _SIZE.match(value)
            if m:
                size = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]
    except OverflowError:
        size = math.inf
    if size is None:
        raise ValueError(_SIZE_HELP)
    if not 0 <= size <= MAX_SIZE:  # inf and nan fail here too
        raise ValueError(f"{_SIZE_HELP}, from 0 to 1TiB")
    return int(size)


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds; YAML may say 30, "30s", "10m", "2h", "7d"."""

ByteSize = Annotated[int, BeforeValidator(parse_size)]
"""Bytes; YAML may say 1048576, "512KiB", "256MB", "1GiB"."""


class Section(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    # inf and nan are never a sensible setting; a float field that says 1e400 is inf
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
