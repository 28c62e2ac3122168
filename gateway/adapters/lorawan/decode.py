"""Uplink payloads → readings: the codec's ``object``, Cayenne LPP, declarative byte layouts.

Decoders return ``(key, value, unit)`` candidates; :func:`apply_fields` then renames,
scales and filters them per the device profile's ``fields`` map. Everything here is pure
and synchronous: it runs on every uplink.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from gateway.adapters.lorawan.config import FieldMap, LayoutField, ProfileConfig
from gateway.reading import Value
from gateway.payloads.units import normalize

Candidate = tuple[str, Value, str | None]

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[^a-z0-9]+")


class DecodeError(ValueError):
    """A payload does not match what its decoder expects."""


def snake(key: str) -> str:
    """``TempC_SHT`` → ``temp_c_sht``; ``batV`` → ``bat_v``; metric names are snake_case."""
    s = _NON_WORD.sub("_", _CAMEL.sub("_", key).lower()).strip("_")
    if not s:
        return "value"
    return s if s[0].isalpha() else f"m_{s}"


# -- codec object ---------------------------------------------------------------------------


def struct_value(value: Any) -> Any:
    """A ``google.protobuf.Value`` as plain Python (about twice as fast as MessageToDict)."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: struct_value(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [struct_value(v) for v in value.list_value.values]
    return None


def struct_to_dict(struct: Any) -> dict[str, Any]:
    """A ``google.protobuf.Struct`` (the codec's decoded object) as a plain dict."""
    return {k: struct_value(v) for k, v in struct.fields.items()}


def flatten_object(obj: Mapping[str, Any], prefix: str = "") -> Iterator[Candidate]:
    """Flatten the codec's decoded object: nested keys joined by ``_``, lists by index."""
    for key, value in obj.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        yield from _flatten_value(name, value)


def _flatten_value(name: str, value: Any) -> Iterator[Candidate]:
    if value is None:
        return
    if isinstance(value, bool):
        yield name, value, None
    elif isinstance(value, float):
        # a protobuf Struct carries every number as a double: give integers back their type
        yield name, int(value) if value.is_integer() and abs(value) < 2**53 else value, None
    elif isinstance(value, (int, str)):
        yield name, value, None
    elif isinstance(value, Mapping):
        yield from flatten_object(value, name)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _flatten_value(f"{name}_{i}", item)


# -- Cayenne LPP ----------------------------------------------------------------------------

# type → (name, size, signed, factor, unit); factor converts to the SenML unit
_LPP: dict[int, tuple[str, int, bool, float, str | None]] = {
    0: ("digital_input", 1, False, 1, None),
    1: ("digital_output", 1, False, 1, None),
    2: ("analog_input", 2, True, 0.01, None),
    3: ("analog_output", 2, True, 0.01, None),
    100: ("generic", 4, False, 1, None),
    101: ("illuminance", 2, False, 1, "lx"),
    102: ("presence", 1, False, 1, None),
    103: ("temperature", 2, True, 0.1, "Cel"),
    104: ("humidity", 1, False, 0.5, "%RH"),
    115: ("pressure", 2, False, 10.0, "Pa"),  # 0.1 hPa = 10 Pa
    116: ("voltage", 2, False, 0.01, "V"),
    117: ("current", 2, False, 0.001, "A"),
    118: ("frequency", 4, False, 1, "Hz"),
    120: ("percentage", 1, False, 1, "%"),
    121: ("altitude", 2, True, 1, "m"),
    125: ("concentration", 2, False, 1, "ppm"),
    128: ("power", 2, False, 1, "W"),
    130: ("distance", 4, False, 0.001, "m"),
    131: ("energy", 4, False, 1, "Wh"),  # 0.001 kWh = 1 Wh
    132: ("direction", 2, False, 1, "deg"),
    133: ("unix_time", 4, False, 1, "s"),
    142: ("switch", 1, False, 1, None),
}
_G = 9.80665
_DEG_TO_RAD = 0.017453292519943295


def _round(value: float, factor: float) -> float | int:
    if factor == 1:
        return int(value)
    # keep the resolution the sensor sent, not binary noise (0.1 * 213 = 21.3000...04)
    digits = max(0, -int(f"{factor:e}".split("e")[1]))
    return round(value, digits) if digits else int(round(value))


def cayenne_lpp(data: bytes) -> list[Candidate]:
    """Decode Cayenne LPP (channel, type, value)*; keys are ``<type name>_<channel>``."""
    out: list[Candidate] = []
    i, n = 0, len(data)
    while i < n:
        if i + 2 > n:
            raise DecodeError(f"Cayenne LPP: truncated header at byte {i}")
        channel, kind = data[i], data[i + 1]
        i += 2
        if kind == 113 or kind == 134:  # accelerometer (0.001 G), gyrometer (0.01 °/s)
            if i + 6 > n:
                what = "accelerometer" if kind == 113 else "gyrometer"
                raise DecodeError(f"Cayenne LPP: truncated {what} at byte {i}")
            x, y, z = struct.unpack_from(">hhh", data, i)
            i += 6
            if kind == 113:
                name, f, unit = "acceleration", 0.001 * _G, "m/s2"
            else:
                name, f, unit = "angular_rate", 0.01 * _DEG_TO_RAD, "rad/s"
            for axis, v in (("x", x), ("y", y), ("z", z)):
                out.append((f"{name}_{axis}_{channel}", round(v * f, 5), unit))
            continue
        if kind == 136:  # GPS: lat, lon 0.0001°, altitude 0.01 m, 3 bytes each, signed
            if i + 9 > n:
                raise DecodeError(f"Cayenne LPP: truncated GPS at byte {i}")
            lat, lon, alt = (int.from_bytes(data[i + k:i + k + 3], "big", signed=True)
                             for k in (0, 3, 6))
            i += 9
            out.append((f"latitude_{channel}", round(lat * 0.0001, 4), "lat"))
            out.append((f"longitude_{channel}", round(lon * 0.0001, 4), "lon"))
            out.append((f"altitude_{channel}", round(alt * 0.01, 2), "m"))
            continue
        spec = _LPP.get(kind)
        if spec is None:
            raise DecodeError(f"Cayenne LPP: unknown type {kind} on channel {channel}")
        name, size, signed, factor, lpp_unit = spec
        if i + size > n:
            raise DecodeError(f"Cayenne LPP: truncated {name} at byte {i}")
        raw = int.from_bytes(data[i:i + size], "big", signed=signed)
        i += size
        value: Value = _round(raw * factor, factor)
        if kind in (102, 142):
            value = bool(raw)
        out.append((f"{name}_{channel}", value, lpp_unit))
    return out


# -- declarative byte layout ----------------------------------------------------------------

_SIZES = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int24": 3, "uint24": 3,
          "int32": 4, "uint32": 4, "float32": 4, "float64": 8, "bool": 1}


def decode_layout(data: bytes, layout: Iterable[LayoutField]) -> list[Candidate]:
    """Read fields at fixed offsets (each defaults to right after the previous one)."""
    out: list[Candidate] = []
    pos = 0
    for f in layout:
        start = pos if f.offset is None else f.offset
        size = _SIZES[f.type]
        if f.type == "bool" and f.bit is not None:
            size = max(1, f.bit // 8 + 1)
        end = start + size
        if end > len(data):
            raise DecodeError(f"layout: field {f.name!r} needs bytes {start}..{end - 1}, "
                              f"payload has {len(data)}")
        chunk = data[start:end]
        pos = end
        value: Value
        if f.type == "bool":
            raw = int.from_bytes(chunk, f.endian)
            value = bool((raw >> f.bit) & 1) if f.bit is not None else raw != 0
            out.append((f.name, value, f.unit))
            continue
        if f.type.startswith("float"):
            fmt = ("<" if f.endian == "little" else ">") + ("f" if f.type == "float32" else "d")
            number: float = struct.unpack(fmt, chunk)[0]
        else:
            number = int.from_bytes(chunk, f.endian, signed=not f.type.startswith("u"))
        if f.scale != 1 or f.add != 0:
            number = number * f.scale + f.add
        unit = f.unit
        if unit is not None:
            unit, convert = normalize(unit, f.name)
            if convert is not None:
                number = convert(number)
        if f.decimals is not None:
            number = round(number, f.decimals)
        elif isinstance(number, float):
            number = round(number, 9)  # drop binary noise from scale factors and conversions
        value = number
        out.append((f.name, value, unit))
    return out


# -- field mapping --------------------------------------------------------------------------


def apply_fields(candidates: Iterable[Candidate], profile: ProfileConfig
                 ) -> list[tuple[str, Value, str | None]]:
    """Rename, rescale and filter decoded values per the profile's ``fields`` map."""
    out: list[tuple[str, Value, str | None]] = []
    fields = profile.fields
    keep = profile.unmapped == "keep"
    for key, value, unit in candidates:
        fm: FieldMap | None = fields.get(key)
        if fm is None:
            if keep:
                out.append((snake(key), value, unit))
            continue
        if fm.drop:
            continue
        metric = fm.metric or snake(key)
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if (fm.scale != 1 or fm.offset != 0) and numeric:
            value = round(value * fm.scale + fm.offset, 9)  # type: ignore[operator]
        if fm.unit is not None:
            # the shared unit table turns aliases into SenML names: °C → Cel, hPa → Pa (×100)
            unit, convert = normalize(fm.unit, metric)
            if convert is not None and numeric:
                value = round(convert(float(value)), 9)
        out.append((metric, value, unit))
    return out
