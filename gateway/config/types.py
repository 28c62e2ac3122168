"""Config value types shared by every section: durations, sizes, strict models."""

from __future__ import annotations

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


def parse_duration(value: Any) -> Any:
    """``30``, ``"30s"``, ``"500ms"``, ``"10m"``, ``"2h"``, ``"7d"`` → seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m, 2h or 7d")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError("expected a duration such as 30s, 10m, 2h or 7d")


def parse_size(value: Any) -> Any:
    """``1048576``, ``"512KiB"``, ``"256MB"``, ``"1GiB"`` → bytes (int)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64MiB or 1GB")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])
    raise ValueError("expected a size such as 64MiB or 1GB")


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds; YAML may say 30, "30s", "10m", "2h", "7d"."""

ByteSize = Annotated[int, BeforeValidator(parse_size)]
"""Bytes; YAML may say 1048576, "512KiB", "256MB", "1GiB"."""


class Section(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
