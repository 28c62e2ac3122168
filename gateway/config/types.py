"""Config value types shared by every section: durations, sizes, strict models."""

from __future__ import annotations

import math
import re
import ssl
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
_DURATION = re.compile(r"^\s*" + _NUMBER + r"\s*(ms|s|m|min|h|d|w)?\s*$")
_DURATION_UNITS = {
    None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0,
    "d": 86400.0, "w": 604800.0,
}
_SIZE = re.compile(r"^\s*" + _NUMBER + r"\s*([kKmMgGtT]i?[bB]?|[bB])?\s*$")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4,
}

#: the longest duration an option takes (ten years), unless its field says less
MAX_DURATION = 3650 * 86400.0
#: the longest for the few options that say so (MQTT's session expiry: 2^32-1 s, "never")
MAX_LONG_DURATION = float(0xFFFFFFFF)
#: the largest size an option takes (1 TiB), unless its field says less
MAX_SIZE = 1024**4

_DURATION_HELP = "expected a duration such as 30s, 10m, 2h or 7d"
_SIZE_HELP = "expected a size such as 64MiB or 1GB"


def format_seconds(seconds: float) -> str:
    """``600`` → ``"10m"``, ``86400`` → ``"1d"``, ``0.02`` → ``"0.02s"``: as a config says it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0 and seconds / size < 1e6:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s" if seconds < 1e6 else f"{seconds:.0f}s"


def parse_duration(value: Any, maximum: float = MAX_DURATION) -> float:
    """``30``, ``"30s"``, ``"500ms"``, ``"10m"``, ``"2h"``, ``"7d"`` → seconds (float).

    ValueError unless the result is a finite number of seconds from 0 to ``maximum``.
    """
    seconds: float
    if isinstance(value, bool):
        raise ValueError(_DURATION_HELP)
    if isinstance(value, int):
        # compared as an integer first: float() of a huge one would overflow
        seconds = float(value) if 0 <= value <= maximum else math.nan
    elif isinstance(value, float):
        seconds = value
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]  # "1e999" is inf
    else:
        raise ValueError(_DURATION_HELP)
    if not (math.isfinite(seconds) and 0 <= seconds <= maximum):
        raise ValueError(f"expected a duration from 0 to {format_seconds(maximum)}")
    return seconds


def parse_long_duration(value: Any) -> float:
    """:func:`parse_duration` up to :data:`MAX_LONG_DURATION`."""
    return parse_duration(value, MAX_LONG_DURATION)


def parse_size(value: Any) -> int:
    """``1048576``, ``"512KiB"``, ``"256MB"``, ``"1GiB"`` → bytes (int).

    ValueError unless the result is from 0 to :data:`MAX_SIZE`.
    """
    size: float | int
    if isinstance(value, bool):
        raise ValueError(_SIZE_HELP)
    if isinstance(value, (int, float)):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]  # "1e999" is inf
    else:
        raise ValueError(_SIZE_HELP)
    if not 0 <= size <= MAX_SIZE:  # inf and nan fail here too
        raise ValueError("expected a size from 0 to 1TiB")
    return int(size)


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, from 0 to 3650d; YAML may say 30, "30s", "10m", "2h", "7d"."""

LongDuration = Annotated[float, BeforeValidator(parse_long_duration)]
"""A :data:`Duration` that may reach :data:`MAX_LONG_DURATION` (the field bounds it)."""

ByteSize = Annotated[int, BeforeValidator(parse_size)]
"""Bytes, from 0 to 1TiB; YAML may say 1048576, "512KiB", "256MB", "1GiB"."""


class Section(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    # inf and nan are never a sensible setting; a float field that says 1e400 is inf
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TlsConfig(Section):
    """TLS to an MQTT broker (the cloud's or the local one); ``enabled: false`` keeps the
    block but connects in the clear."""

    enabled: bool = True
    ca_file: str | None = Field(default=None, description="default: the system CA store")
    cert_file: str | None = None
    key_file: str | None = None
    verify_hostname: bool = True

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self

    @staticmethod
    def context(tls: TlsConfig | None) -> ssl.SSLContext | bool:
        """What gmqtt's ``connect(ssl=...)`` takes: a client context, or False for none."""
        if tls is None or not tls.enabled:
            return False
        ctx = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file and tls.key_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        ctx.check_hostname = tls.verify_hostname
        return ctx
