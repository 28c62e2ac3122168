"""What every format shares: strict JSON and CBOR loading, timestamps, numbers, readings.

Each helper raises :class:`~gateway.payloads.errors.DecodeError` and nothing else,
whatever the bytes (integers of 10,000 digits, nesting thousands deep, CBOR tags).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gateway.payloads.errors import DecodeError
from gateway.payloads.units import Convert, UnknownUnit, normalize
from gateway.reading import Reading, Value

#: device timestamps before 2001-09-09 (UNIX 1e9) are taken as an unset clock
MIN_TS = 1e9
#: larger numeric timestamps are milliseconds (``timestamp_unit: auto``)
MS_TS = 1e11
#: longest text value kept as a reading
MAX_TEXT = 256
#: longest native device id taken from a payload
MAX_ID = 128
#: integers beyond 64 bits: no store or consumer keeps them, and float() overflows on them
INT_MAX = 2**63 - 1


def _reject_constant(name: str) -> Any:
    raise DecodeError("bad_json", f"{name} is not a number JSON allows")


# one decoder for every payload: json.loads(..., parse_constant=...) would build one per call
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def load_json(payload: bytes | str) -> Any:
    """The JSON value of ``payload`` (UTF-8); NaN, Infinity and trailing data refused."""
    try:
        text = payload.decode("utf-8") if isinstance(payload, (bytes, bytearray)) else payload
        text = text.strip()
        obj, end = _JSON.raw_decode(text)  # decode() would run two regexes more
        if end != len(text):
            raise ValueError(f"extra data after the JSON value at char {end}")
        return obj
    except DecodeError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError("bad_json", f"not valid JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise DecodeError("bad_json", "JSON nested too deeply") from None


def load_cbor(payload: bytes) -> Any:
    """The CBOR data item of ``payload``."""
    import cbor2

    try:
        return cbor2.loads(payload)
    except RecursionError:
        raise DecodeError("bad_cbor", "CBOR nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - tag decoders (regex, MIME, decimal...) raise anything
        raise DecodeError("bad_cbor", f"not valid CBOR: {str(exc)[:200]}") from None


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool) that every store keeps."""
    cls = v.__class__
    if cls is float:
        return math.isfinite(v)
    if cls is int:
        return bool(-INT_MAX <= v <= INT_MAX)
    if cls is bool:
        return False
    if isinstance(v, int):  # IntEnum and other subclasses
        return -INT_MAX <= int(v) <= INT_MAX
    return isinstance(v, float) and math.isfinite(v)


def parse_number(text: str) -> int | float:
    """A number written as text (``37.71``, ``-3``, ``1e3``): bare values, Shelly, ESPHome.

    Python's float() also reads ``1_000``, ``inf``, ``nan`` and non-ASCII digits: refused.
    """
    if not text or not text.isascii() or "_" in text:
        raise DecodeError("bad_value", f"expected a number, got {text!r:.40}")
    try:
        if text.lstrip("+-").isdigit():
            value: int | float = int(text)
        else:
            value = float(text)
    except ValueError:
        raise DecodeError("bad_value", f"expected a number, got {text!r:.40}") from None
    if not is_number(value):
        raise DecodeError("bad_value", f"{text!r:.40} is not a finite number")
    return value


def sig(x: float) -> float:
    """``x`` to 12 significant digits: conversions leave binary noise (1013.2 × 100)."""
    return float(f"{x:.12g}")


def parse_timestamp(raw: Any, unit: str = "auto") -> float | None:
    """UNIX seconds from seconds, milliseconds or ISO 8601; None when implausible.

    ``unit`` is ``s``, ``ms`` or ``auto`` (numbers above 1e11 are milliseconds). A time
    before 2001 means the device's clock was never set: None, and the caller stamps the
    reading on receipt.
    """
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        try:
            ts = float(raw)
        except OverflowError:
            return None
        if unit == "ms" or (unit == "auto" and ts > MS_TS):
            ts /= 1000.0
    elif isinstance(raw, str):
        text = raw.strip()
        if len(text) > 64:
            return None
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z")
                                        else text)
            ts = dt.timestamp()
        except (ValueError, OverflowError, OSError):
            try:
                return parse_timestamp(float(text), unit)
            except ValueError:
                return None
    else:
        return None
    if not math.isfinite(ts) or ts < MIN_TS:
        return None
    return ts


def path_get(obj: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path of nested objects, or None."""
    if "." not in path:
        return obj.get(path)
    cur: Any = obj
    for part in path.split("."):
        if type(cur) is not dict or part not in cur:
            return None
        cur = cur[part]
    return cur


def native_id(value: Any) -> str:
    """A device's native id taken from a payload: text or an integer, no spaces."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DecodeError("no_device", f"device id must be a string or integer, got {value!r:.40}")
    text = str(value).strip()
    if not text or len(text) > MAX_ID or any(c.isspace() or c in "/+#" for c in text):
        raise DecodeError("no_device", f"unusable device id {text!r:.60}")
    return text


class Units:
    """The unit table, cached per (unit, metric): each format instance holds one."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[tuple[str | None, str], tuple[str | None, Convert | None]] = {}

    def get(self, unit: Any, metric: str) -> tuple[str | None, Convert | None]:
        """SenML unit and conversion of ``unit`` for ``metric``; ``bad_unit`` if unknown."""
        key = (unit, metric)
        try:
            hit = self._cache.get(key)
        except TypeError:  # an unhashable "unit" from a payload
            raise DecodeError("bad_unit", f"{metric}: unit must be text") from None
        if hit is None:
            if unit is None:
                hit = (None, None)
            elif not isinstance(unit, str):
                raise DecodeError("bad_unit", f"{metric}: unit must be text")
            else:
                try:
                    hit = normalize(unit, metric)
                except UnknownUnit as exc:
                    # a number whose unit nobody downstream can read is not a reading:
                    # refuse the payload loudly (counted, logged) rather than store it
                    raise DecodeError("bad_unit", f"{metric}: {str(exc)[:200]}") from None
            if len(self._cache) < 4096:
                self._cache[key] = hit
        return hit

    def reading(self, device: str, metric: str, value: Any, unit: Any, ts: float,
                scale: float = 1.0, offset: float = 0.0) -> Reading | None:
        """A reading in SenML units, or None for a value no reading carries.

        Numbers are scaled, then converted to the SenML unit; booleans and text carry no
        unit; NaN, infinities, text longer than :data:`MAX_TEXT` and anything else: None.
        """
        cls = value.__class__
        if cls is bool:
            return Reading(device, metric, value, None, ts)
        if cls is int or cls is float:
            if not is_number(value):
                return None
            senml, conv = self.get(unit, metric)
            v: Value = value
            if scale != 1.0 or offset != 0.0:
                v = sig(value * scale + offset)
            if conv is not None:
                v = sig(conv(float(v)))
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return Reading(device, metric, v, senml, ts)
        if cls is str and len(value) <= MAX_TEXT:
            return Reading(device, metric, value, None, ts)
        return None
