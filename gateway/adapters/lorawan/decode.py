"""Uplink payloads → readings: the codec's ``object``, Cayenne LPP, declarative byte layouts.

Decoders return ``(key, value, unit)`` candidates; :func:`apply_fields` then renames,
scales and filters them per the device profile's ``fields`` map. Everything here is pure
and synchronous: it runs on every uplink. Cayenne LPP and the codec's object are read by
the payloads package (:mod:`gateway.payloads.lpp`, :mod:`gateway.payloads.chirpstack`),
the same code ``format: cayenne_lpp`` and ``format: chirpstack`` use; metric names come
from :func:`gateway.payloads.names.metric_name`, as in every other adapter.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from gateway.adapters.lorawan.config import FieldMap, LayoutField, ProfileConfig
from gateway.payloads.chirpstack import Candidate, flatten_object, struct_to_dict, struct_value
from gateway.payloads.errors import DecodeError
from gateway.payloads.lpp import decode_lpp
from gateway.payloads.names import metric_name
from gateway.payloads.units import normalize
from gateway.reading import Value

__all__ = ["Candidate", "DecodeError", "apply_fields", "decode_layout", "decode_lpp",
           "flatten_object", "struct_to_dict", "struct_value"]


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
            raise DecodeError("bad_frame", f"layout: field {f.name!r} needs bytes "
                              f"{start}..{end - 1}, payload has {len(data)}")
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
                out.append((metric_name(key), value, unit))
            continue
        if fm.drop:
            continue
        metric = fm.metric or metric_name(key)
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
