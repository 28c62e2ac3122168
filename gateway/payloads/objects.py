"""JSON and CBOR objects, and bare values: the formats a device's own firmware speaks.

``json`` (and ``cbor``, the same in CBOR, CoAP Content-Format 60): one object, or a list
of objects (a batch), of field → value::

    {"temperature": 21.5, "env": {"humidity": 40}, "door": true,
     "power": {"v": 1.2, "u": "kW"}, "units": {"temperature": "Cel"}, "ts": 1790000000}

- Nested objects are paths (``env.humidity``); the metric is the path's metric name
  (:func:`~gateway.payloads.names.metric_name`: ``env_humidity``). Nesting is read to 8
  levels.
- Numbers and booleans become readings. Text becomes a reading only where ``fields:``
  maps the field (free-form text is mostly labels and versions) or in a value object.
- A value object ``{"v": value, "u": unit}`` (``u`` optional) is one value with its unit.
- ``units`` at the top, an object of field → unit, gives units the values do not carry;
  ``options.units`` (metric → unit) gives the rest. Units go through the unit table.
- ``options.timestamp`` is the path of the device's time (UNIX s, ms or ISO 8601); an
  unset device clock (before 2001) means "now". ``options.device_field`` names the device
  when the topic does not. ``options.fields`` maps paths to metric, unit, scale, offset;
  with fields, only those are read unless ``include_unmapped``.

``value``: the payload is one bare value, ``21.5``, ``true``/``on``, or text when
``value_type: string``; the metric is the topic's ``{metric}`` or ``options.metric``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from gateway.payloads.base import FieldSpec, Format, Options, Source
from gateway.payloads.errors import DecodeError
from gateway.payloads.names import metric_name
from gateway.payloads.units import Convert
from gateway.payloads.values import (
    MAX_TEXT,
    Units,
    is_number,
    load_cbor,
    load_json,
    native_id,
    parse_number,
    parse_timestamp,
    path_get,
    sig,
)
from gateway.reading import Reading, Value

#: objects nested deeper than this are not read
MAX_DEPTH = 8
#: objects in one list (a batch)
MAX_OBJECTS = 1000
#: the top-level key that maps fields to units
UNITS_KEY = "units"
_MISSING: Any = object()
_TRUE = frozenset({"true", "on", "yes"})
_FALSE = frozenset({"false", "off", "no"})

Leaf = tuple[str, str | None, Convert | None] | None


class JsonFormat(Format):
    """``format: json``: objects of field → value (see the module docstring)."""

    name: ClassVar[str] = "json"
    content_formats: ClassVar[tuple[int, ...]] = (50,)

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        o = self.options
        self._units = Units()
        self._fields: list[tuple[str, str, FieldSpec]] = [
            (path, spec.metric or metric_name(path), spec) for path, spec in o.fields.items()]
        self._include_unmapped = (o.include_unmapped if o.include_unmapped is not None
                                  else not o.fields)
        self._skip = {p for p in (o.timestamp, o.device_field) if p}
        self._skip.update(o.fields)
        self._leaf_cache: dict[str, Leaf] = {}

    @classmethod
    def check(cls, options: Options, topic_names: frozenset[str]) -> None:
        if "metric" in topic_names:
            raise ValueError("{metric} in the topic only works with format: value")
        has_device = "device" in topic_names
        if not has_device and not options.device_field:
            raise ValueError(f"format: {cls.name} needs {{device}} in the topic or a "
                             "device_field: key")
        if options.device_field and has_device:
            raise ValueError("device_field: and {device} in the topic: choose one")

    def load(self, payload: bytes) -> Any:
        return load_json(payload)

    def decode(self, payload: bytes, source: Source, now: float) -> list[Reading]:
        doc = self.load(payload)
        try:
            if doc.__class__ is dict:
                out: list[Reading] = []
                self._object(doc, source, now, out)
            elif isinstance(doc, list):
                out = self._batch(doc, source, now)
            else:
                raise DecodeError("bad_shape", "expected a JSON object of field → value, "
                                  f"got {type(doc).__name__}")
        except (OverflowError, ArithmeticError):
            # JSON integers have no bound: 10**400 overflows any float conversion
            raise DecodeError("bad_value", "a number too large to use") from None
        if not out:
            raise DecodeError("no_values", "no numeric or boolean fields in the payload")
        return out

    def _batch(self, doc: list[Any], source: Source, now: float) -> list[Reading]:
        if not doc:
            raise DecodeError("no_values", "the list is empty")
        if len(doc) > MAX_OBJECTS:
            raise DecodeError("bad_shape", f"{len(doc)} objects in one list; at most "
                              f"{MAX_OBJECTS}")
        out: list[Reading] = []
        for i, obj in enumerate(doc):
            if not isinstance(obj, dict):
                raise DecodeError("bad_shape", f"list item {i}: expected an object of field "
                                  "→ value")
            self._object(obj, source, now, out)
        return out

    def _object(self, obj: dict[Any, Any], source: Source, now: float,
                out: list[Reading]) -> None:
        device = self._device(obj, source)
        ts = self._ts(obj, now)
        units = obj.get(UNITS_KEY)
        if units is not None and units.__class__ is not dict:
            raise DecodeError("bad_unit", f"{UNITS_KEY!r} must be an object of field → unit")
        for path, metric, spec in self._fields:
            raw = path_get(obj, path)
            if raw is None:
                continue
            unit = spec.unit or self.options.units.get(metric)
            if raw.__class__ is dict:
                raw, unit = self._value_object(raw, path, unit)
            elif isinstance(raw, str) and spec.unit is not None:
                raise DecodeError("bad_value", f"{path}: expected a number, got {raw!r:.40}")
            if units and unit is None:
                unit = units.get(path)
            r = self._units.reading(device, metric, raw, unit, ts, spec.scale, spec.offset)
            if r is not None:
                out.append(r)
        if self._include_unmapped:
            self._flatten(obj, "", device, ts, out, 0, units)

    @staticmethod
    def _value_object(raw: dict[Any, Any], path: str, unit: Any) -> tuple[Any, Any]:
        if "v" not in raw:
            return None, unit
        return raw["v"], raw.get("u", unit)

    def _device(self, obj: Mapping[Any, Any], source: Source) -> str:
        if source.native is not None:
            return f"{source.prefix}:{source.native}"
        field = self.options.device_field
        if not field:
            raise DecodeError("no_device", "no device id in the topic or payload")
        return f"{source.prefix}:{native_id(path_get(obj, field))}"

    def _ts(self, obj: Mapping[Any, Any], now: float) -> float:
        path = self.options.timestamp
        if not path:
            return now
        raw = path_get(obj, path)
        if raw is None:
            return now
        if not (is_number(raw) or raw.__class__ is str):
            raise DecodeError("bad_time", f"{path}: a time is UNIX seconds or milliseconds, "
                              f"or ISO 8601 text, not {raw!r:.40}")
        ts = parse_timestamp(raw, self.options.timestamp_unit)
        # an unset device clock: keep the value, stamp it on receipt
        return now if ts is None else ts

    def _leaf(self, path: str) -> Leaf:
        """Metric, unit and conversion of an unmapped leaf (None: not read), cached."""
        if path in self._leaf_cache:
            return self._leaf_cache[path]
        spec: Leaf = None
        if path not in self._skip:
            metric = metric_name(path)
            if metric:
                unit, conv = self._units.get(self.options.units.get(metric), metric)
                spec = (metric, unit, conv)
        if len(self._leaf_cache) < 4096:
            self._leaf_cache[path] = spec
        return spec

    def _flatten(self, obj: dict[Any, Any], prefix: str, device: str, ts: float,
                 out: list[Reading], depth: int, units: dict[Any, Any] | None) -> None:
        # the hot path of the json format: plain type checks, per-path cache
        cache_get = self._leaf_cache.get
        for key, raw in obj.items():
            kind = raw.__class__
            if kind is dict:
                if depth == 0 and key == UNITS_KEY:
                    continue
                if "v" in raw:
                    self._explicit(prefix, key, raw, device, ts, out, units)
                elif depth < MAX_DEPTH:
                    if key.__class__ is not str:
                        raise DecodeError("bad_name", "field names must be text")
                    self._flatten(raw, f"{prefix}{key}.", device, ts, out, depth + 1, units)
                continue
            # free-form text would fill the outbox with labels and versions: map it
            if kind is not float and kind is not int and kind is not bool:
                continue
            if key.__class__ is not str:
                raise DecodeError("bad_name", f"field names must be text, not "
                                  f"{type(key).__name__}")
            path = prefix + key if prefix else key
            if units and path in units:
                self._explicit(prefix, key, {"v": raw, "u": units[path]}, device, ts, out, None)
                continue
            spec = cache_get(path, _MISSING)
            if spec is _MISSING:
                spec = self._leaf(path)
            if spec is None:
                continue
            metric, unit, conv = spec
            if kind is bool:
                out.append(Reading(device, metric, raw, None, ts))
            elif not is_number(raw):
                what = "an integer beyond 64 bits" if kind is int else "not a finite number"
                raise DecodeError("bad_value", f"{path[:64]}: {what}")
            elif conv is None:
                out.append(Reading(device, metric, raw, unit, ts))
            else:
                v = sig(conv(float(raw)))
                if math.isfinite(v):
                    out.append(Reading(device, metric, v, unit, ts))

    def _explicit(self, prefix: str, key: Any, raw: dict[Any, Any], device: str, ts: float,
                  out: list[Reading], units: dict[Any, Any] | None) -> None:
        """A value object ``{"v": value, "u": unit}``, or a value with a payload unit."""
        if key.__class__ is not str:
            raise DecodeError("bad_name", "field names must be text")
        path = prefix + key
        if path in self._skip:
            return
        metric = metric_name(path)
        if not metric:
            raise DecodeError("bad_name", f"{path[:40]!r} is not a usable metric name")
        unit = raw.get("u")
        if unit is None and units:
            unit = units.get(path)
        if unit is None:
            unit = self.options.units.get(metric)
        value = raw["v"]
        if value.__class__ is str and len(value) > MAX_TEXT:
            raise DecodeError("bad_value", f"{path[:64]}: text longer than {MAX_TEXT} "
                              "characters")
        r = self._units.reading(device, metric, value, unit, ts)
        if r is None:
            raise DecodeError("bad_value", f"{path[:64]}: expected a finite number, "
                              "true/false or text")
        out.append(r)


class CborFormat(JsonFormat):
    """``format: cbor``: the same objects as ``json``, in CBOR (RFC 8949)."""

    name: ClassVar[str] = "cbor"
    content_formats: ClassVar[tuple[int, ...]] = (60,)

    def load(self, payload: bytes) -> Any:
        return load_cbor(payload)


class ValueFormat(Format):
    """``format: value``: one bare value; its metric comes from the topic or the options."""

    name: ClassVar[str] = "value"
    content_formats: ClassVar[tuple[int, ...]] = (0,)
    _EXPECTED: ClassVar[dict[str, str]] = {
        "auto": "a number or true/false", "number": "a number", "bool": "true/false/on/off",
        "string": "text"}

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self._units = Units()
        self._parse: Callable[[str], Value | None] = self._parser(self.options.value_type)

    @classmethod
    def check(cls, options: Options, topic_names: frozenset[str]) -> None:
        if "device" not in topic_names:
            raise ValueError("format: value needs {device} in the topic")
        if "metric" not in topic_names and not options.metric:
            raise ValueError("format: value needs {metric} in the topic or a metric: key")
        if options.fields:
            raise ValueError("fields: only applies to format: json")

    @staticmethod
    def _parser(kind: str) -> Callable[[str], Value | None]:
        def number(text: str) -> Value | None:
            try:
                return parse_number(text)
            except DecodeError:
                return None

        def boolean(text: str) -> Value | None:
            low = text.lower()
            return True if low in _TRUE else False if low in _FALSE else None

        if kind == "number":
            return number
        if kind == "bool":
            return boolean
        if kind == "string":
            return lambda text: text if len(text) <= MAX_TEXT else None

        def auto(text: str) -> Value | None:
            value = number(text)
            return boolean(text) if value is None else value

        return auto

    def decode(self, payload: bytes, source: Source, now: float) -> list[Reading]:
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DecodeError("bad_text", "payload is not UTF-8 text") from None
        if not text:
            raise DecodeError("bad_text", "empty payload")
        slot = source.slots.get("metric")
        metric = metric_name(slot) if slot is not None else self.options.metric or ""
        if not metric:
            raise DecodeError("no_metric", "no metric name in the topic or the config")
        value = self._parse(text)
        if value is None:
            expected = self._EXPECTED[self.options.value_type]
            raise DecodeError("bad_text", f"expected {expected}, got {text[:40]!r}")
        device = source.device
        if device is None:
            raise DecodeError("no_device", "no device id in the topic or path")
        unit = self.options.unit or self.options.units.get(metric)
        r = self._units.reading(device, metric, value, unit, now)
        if r is None:
            raise DecodeError("bad_value", f"{text[:40]!r} is out of range once converted")
        return [r]
