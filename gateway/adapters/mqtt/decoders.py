"""Payload decoders: wire bytes of one MQTT message → readings.

One decoder per subscription, built from its config at start. Formats:

- ``json``: an object, flat or nested (dotted paths); per-field metric, unit, scale.
- ``senml``: SenML JSON (RFC 8428): base name, base time, base unit, base value resolved.
- ``value``: a bare number or boolean (or text, when ``value_type: string``).
- ``zigbee2mqtt``: the JSON zigbee2mqtt publishes on ``zigbee2mqtt/<friendly name>``.

A payload that cannot be decoded raises :class:`DecodeError` with a short reason (used as
a metric label) and a message a person can act on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from gateway.adapters.mqtt.config import FieldSpec, SubscriptionConfig
from gateway.reading import Reading, Value
from gateway.payloads.units import Convert, UnknownUnit, normalize

#: device timestamps before 2001-09-09 (UNIX 1e9) are taken as an unset clock
_MIN_TS = 1e9
#: SenML: times below 2**28 are relative to now (RFC 8428 section 4.5.3)
_SENML_RELATIVE = 2**28
_MAX_ID = 128
_MAX_TEXT = 256
_SNAKE = re.compile(r"[^a-z0-9]+")
_MISSING: Any = object()
_TRUE = frozenset({"true", "on", "yes"})
_FALSE = frozenset({"false", "off", "no"})


class DecodeError(ValueError):
    """A payload the decoder cannot turn into readings."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _reject_constant(name: str) -> Any:
    raise DecodeError("bad_json", f"{name} is not a number JSON allows")


# one decoder for every message: json.loads(..., parse_constant=...) would build one per call
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _loads(payload: bytes) -> Any:
    try:
        text = payload.decode("utf-8").strip()
        obj, end = _JSON.raw_decode(text)  # decode() would run two regexes more
        if end != len(text):
            raise ValueError(f"extra data after the JSON value at char {end}")
        return obj
    except DecodeError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError("bad_json", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise DecodeError("bad_json", "JSON nested too deeply") from None


_snake_cache: dict[str, str] = {}


def snake(name: str) -> str:
    """A metric name from a field name or path: ``Env.Temp-C`` → ``env_temp_c``."""
    out = _snake_cache.get(name)
    if out is None:
        out = _SNAKE.sub("_", name.lower()).strip("_")
        if out and out[0].isdigit():
            out = "m_" + out
        if len(_snake_cache) < 10_000:
            _snake_cache[name] = out
    return out


def _sig(x: float) -> float:
    # conversions leave binary noise (1013.2 hPa * 100 = 101320.00000000001)
    return float(f"{x:.12g}")


def parse_timestamp(raw: Any, unit: str = "auto") -> float | None:
    """UNIX seconds from seconds, milliseconds or ISO 8601; None when implausible."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        try:
            ts = float(raw)
        except OverflowError:
            return None
        if unit == "ms" or (unit == "auto" and ts > 1e11):
            ts /= 1000.0
    elif isinstance(raw, str):
        try:
            ts = datetime.fromisoformat(raw.strip()).timestamp()
        except ValueError:
            try:
                return parse_timestamp(float(raw), unit)
            except ValueError:
                return None
    else:
        return None
    if not math.isfinite(ts) or ts < _MIN_TS:
        return None
    return ts


def _path(obj: Mapping[str, Any], path: str) -> Any:
    if "." not in path:
        return obj.get(path)
    cur: Any = obj
    for part in path.split("."):
        if type(cur) is not dict or part not in cur:
            return None
        cur = cur[part]
    return cur


def _native(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DecodeError("no_device", f"device id must be a string or integer, got {value!r:.40}")
    text = str(value).strip()
    if not text or len(text) > _MAX_ID or any(c.isspace() for c in text):
        raise DecodeError("no_device", f"unusable device id {text!r:.60}")
    return text


class Decoder:
    """Turns payloads of one subscription into readings; one instance per subscription."""

    def __init__(self, sub: SubscriptionConfig, prefix: str) -> None:
        self.sub = sub
        self.prefix = prefix
        self._units: dict[tuple[str | None, str], tuple[str | None, Convert | None]] = {}
        self._fields: list[tuple[str, str, FieldSpec]] = [
            (path, spec.metric or snake(path), spec) for path, spec in sub.fields.items()]
        self._include_unmapped = (sub.include_unmapped if sub.include_unmapped is not None
                                  else not sub.fields)
        self._skip = {p for p in (sub.timestamp, sub.device_field) if p}
        self._skip.update(sub.fields)
        self._leaf_cache: dict[str, tuple[str, str | None, Convert | None] | None] = {}
        decoders: dict[str, Callable[[dict[str, str], bytes, float], list[Reading]]] = {
            "json": self._json, "senml": self._senml, "value": self._value,
            "zigbee2mqtt": self._zigbee2mqtt,
        }
        self._decode = decoders[sub.format]

    def decode(self, slots: dict[str, str], payload: bytes, now: float) -> list[Reading]:
        """Readings of one payload; slots are the topic's placeholder values."""
        try:
            return self._decode(slots, payload, now)
        except (OverflowError, ArithmeticError):
            # JSON integers have no bound: 10**400 overflows any float conversion
            raise DecodeError("bad_value", "a number too large to use") from None

    # -- shared --------------------------------------------------------------------------

    def _unit(self, unit: str | None, metric: str) -> tuple[str | None, Convert | None]:
        key = (unit, metric)
        hit = self._units.get(key)
        if hit is None:
            if unit is None:
                hit = (None, None)
            else:
                try:
                    hit = normalize(unit, metric)
                except UnknownUnit as exc:
                    # a number whose unit nobody downstream can read is not a reading:
                    # refuse the payload loudly (counted, logged) rather than store it
                    raise DecodeError("unknown_unit", f"{metric}: {exc}") from None
            if len(self._units) < 4096:
                self._units[key] = hit
        return hit

    def _reading(self, device: str, metric: str, value: Any, unit: str | None, ts: float,
                 scale: float = 1.0, offset: float = 0.0) -> Reading | None:
        if isinstance(value, bool):
            return Reading(device, metric, value, None, ts)
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                return None
            senml, conv = self._unit(unit, metric)
            v: Value = value
            if scale != 1.0 or offset != 0.0:
                v = _sig(value * scale + offset)
            if conv is not None:
                v = _sig(conv(float(v)))
            return Reading(device, metric, v, senml, ts)
        if isinstance(value, str) and len(value) <= _MAX_TEXT:
            return Reading(device, metric, value, None, ts)
        return None

    def _ts(self, obj: Mapping[str, Any], now: float) -> float:
        if not self.sub.timestamp:
            return now
        raw = _path(obj, self.sub.timestamp)
        if raw is None:
            return now
        ts = parse_timestamp(raw, self.sub.timestamp_unit)
        # an unset device clock: keep the value, stamp it on receipt
        return now if ts is None else ts

    def _device(self, slots: dict[str, str], obj: Mapping[str, Any] | None = None) -> str:
        native = slots.get("device")
        if native is None:
            if obj is None or not self.sub.device_field:
                raise DecodeError("no_device", "no device id in the topic or payload")
            native = _native(_path(obj, self.sub.device_field))
        return f"{self.prefix}:{native}"

    # -- formats ---------------------------------------------------------------------------

    def _json(self, slots: dict[str, str], payload: bytes, now: float) -> list[Reading]:
        obj = _loads(payload)
        if not isinstance(obj, dict):
            raise DecodeError("not_object", f"expected a JSON object, got {type(obj).__name__}")
        device = self._device(slots, obj)
        ts = self._ts(obj, now)
        out: list[Reading] = []
        for path, metric, spec in self._fields:
            raw = _path(obj, path) if "." in path else obj.get(path)
            if raw is None:
                continue
            if isinstance(raw, str) and spec.unit is not None:
                raise DecodeError("bad_value", f"{path}: expected a number, got {raw!r:.40}")
            r = self._reading(device, metric, raw, spec.unit or self.sub.units.get(metric), ts,
                              spec.scale, spec.offset)
            if r is not None:
                out.append(r)
        if self._include_unmapped:
            self._flatten(obj, "", device, ts, out, 0)
        if not out:
            raise DecodeError("no_values", "no numeric or boolean fields in the object")
        return out

    def _leaf(self, path: str) -> tuple[str, str | None, Convert | None] | None:
        """Metric, unit and conversion of an unmapped leaf (None: not read), cached."""
        if path in self._leaf_cache:
            return self._leaf_cache[path]
        spec: tuple[str, str | None, Convert | None] | None = None
        if path not in self._skip:
            metric = snake(path)
            if metric:
                unit, conv = self._unit(self.sub.units.get(metric), metric)
                spec = (metric, unit, conv)
        if len(self._leaf_cache) < 4096:
            self._leaf_cache[path] = spec
        return spec

    def _flatten(self, obj: dict[str, Any], prefix: str, device: str, ts: float,
                 out: list[Reading], depth: int) -> None:
        # the hot path of the json format: plain type checks, per-path cache
        cache_get = self._leaf_cache.get
        for key, raw in obj.items():
            kind = type(raw)
            if kind is dict:
                if depth < 8:
                    self._flatten(raw, f"{prefix}{key}.", device, ts, out, depth + 1)
                continue
            # free-form text would fill the outbox with labels and versions: map it
            if kind is not float and kind is not int and kind is not bool:
                continue
            path = prefix + key if prefix else key
            spec = cache_get(path, _MISSING)
            if spec is _MISSING:
                spec = self._leaf(path)
            if spec is None:
                continue
            metric, unit, conv = spec
            if kind is bool:
                out.append(Reading(device, metric, raw, None, ts))
            elif kind is float and not math.isfinite(raw):
                continue
            elif conv is None:
                out.append(Reading(device, metric, raw, unit, ts))
            else:
                out.append(Reading(device, metric, _sig(conv(float(raw))), unit, ts))

    def _senml(self, slots: dict[str, str], payload: bytes, now: float) -> list[Reading]:
        pack = _loads(payload)
        if isinstance(pack, dict):
            pack = [pack]
        if not isinstance(pack, list) or not pack:
            raise DecodeError("bad_senml", "expected a SenML pack: a JSON array of records")
        topic_device = slots.get("device")
        bn, bt, bu, bv = "", 0.0, None, 0.0
        out: list[Reading] = []
        for i, rec in enumerate(pack):
            if not isinstance(rec, dict):
                raise DecodeError("bad_senml", f"record {i} is not an object")
            try:
                bn = rec.get("bn", bn)
                bt = float(rec.get("bt", bt))
                bu = rec.get("bu", bu)
                bv = float(rec.get("bv", bv))
                n = rec.get("n", "")
                if not isinstance(bn, str) or not isinstance(n, str):
                    raise TypeError("bn and n must be strings")
                t = bt + float(rec.get("t", 0.0))
                unit = rec.get("u", bu)
                if unit is not None and not isinstance(unit, str):
                    raise TypeError("u must be a string")
            except (TypeError, ValueError, OverflowError) as exc:
                raise DecodeError("bad_senml", f"record {i}: {exc}") from None
            if "v" in rec:
                v = rec["v"]
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise DecodeError("bad_senml", f"record {i}: v must be a number")
                value: Any = bv + v if bv else v
            elif "vb" in rec:
                value = rec["vb"]
                if not isinstance(value, bool):
                    raise DecodeError("bad_senml", f"record {i}: vb must be true or false")
            elif "vs" in rec:
                value = rec["vs"]
                if not isinstance(value, str):
                    raise DecodeError("bad_senml", f"record {i}: vs must be a string")
            else:
                continue  # base fields only, or a data/sum value we do not carry
            if topic_device is not None:
                device = topic_device
                name = n or bn.rstrip(":/._-").rsplit(":", 1)[-1].rsplit("/", 1)[-1]
            else:
                device = bn.rstrip(":/._-")
                name = n
                if not device:
                    raise DecodeError("no_device", f"record {i}: no base name (bn) to take "
                                      "the device from, and no {device} in the topic")
            metric = snake(name)
            if not metric:
                raise DecodeError("bad_senml", f"record {i}: no name (n) for the metric")
            ts = t if t >= _SENML_RELATIVE else now + t
            r = self._reading(f"{self.prefix}:{_native(device)}", metric, value, unit, ts)
            if r is not None:
                out.append(r)
        if not out:
            raise DecodeError("no_values", "the SenML pack has no values")
        return out

    def _value(self, slots: dict[str, str], payload: bytes, now: float) -> list[Reading]:
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DecodeError("bad_value", "payload is not UTF-8 text") from None
        if not text:
            raise DecodeError("bad_value", "empty payload")
        metric = snake(slots["metric"]) if "metric" in slots else self.sub.metric or ""
        if not metric:
            raise DecodeError("bad_value", "no metric name in the topic")
        kind = self.sub.value_type
        value: Value | None = None
        if kind in ("auto", "number"):
            try:
                value = int(text) if text.lstrip("-").isdigit() else float(text)
            except ValueError:
                value = None
            if isinstance(value, float) and not math.isfinite(value):
                value = None
        if value is None and kind in ("auto", "bool"):
            low = text.lower()
            value = True if low in _TRUE else False if low in _FALSE else None
        if value is None and kind == "string" and len(text) <= _MAX_TEXT:
            value = text
        if value is None:
            expected = {"auto": "a number or true/false", "number": "a number",
                        "bool": "true/false/on/off", "string": "text"}[kind]
            raise DecodeError("bad_value", f"expected {expected}, got {text!r:.40}")
        r = self._reading(self._device(slots), metric, value,
                          self.sub.unit or self.sub.units.get(metric), now)
        assert r is not None
        return [r]

    def _zigbee2mqtt(self, slots: dict[str, str], payload: bytes, now: float) -> list[Reading]:
        obj = _loads(payload)
        if not isinstance(obj, dict):
            raise DecodeError("not_object", f"expected a JSON object, got {type(obj).__name__}")
        device = self._device(slots)
        ts = now
        if self.sub.timestamp:
            ts = self._ts(obj, now)
        elif "last_seen" in obj:
            ts = parse_timestamp(obj["last_seen"]) or now
        units = self.sub.units
        out: list[Reading] = []
        for key, raw in obj.items():
            if key in Z2M_IGNORED:
                continue
            metric = snake(key)
            if isinstance(raw, dict):
                if key == "color":
                    for sub, v in raw.items():
                        if isinstance(v, (int, float)) and not isinstance(v, bool):
                            out.append(Reading(device, f"color_{snake(sub)}", v, None, ts))
                continue
            if isinstance(raw, str):
                if key == "state" or key.startswith("state_"):
                    up = raw.upper()
                    value: Any = True if up == "ON" else False if up == "OFF" else raw
                elif key in Z2M_TEXT:
                    value = raw
                else:
                    continue
            elif isinstance(raw, (int, float)):
                value = raw
            else:
                continue
            unit = units.get(metric) or Z2M_UNITS.get(key)
            r = self._reading(device, metric, value, unit, ts)
            if r is not None:
                out.append(r)
        if not out:
            raise DecodeError("no_values", "no values zigbee2mqtt would publish")
        return out


#: zigbee2mqtt keys and the units zigbee2mqtt reports them in (converted to SenML)
Z2M_UNITS: dict[str, str] = {
    "temperature": "Cel", "device_temperature": "Cel", "local_temperature": "Cel",
    "humidity": "%RH", "soil_moisture": "%", "pressure": "hPa", "battery": "%EL",
    "voltage": "mV", "current": "A", "power": "W", "energy": "kWh", "illuminance": "lx",
    "illuminance_lux": "lx", "co2": "ppm", "voc": "ppb", "pm25": "ug/m3", "pm10": "ug/m3",
}
#: text values worth keeping (events and modes); other text is configuration noise
Z2M_TEXT = frozenset({"action", "click", "lock_state", "system_mode", "running_state",
                      "alarm", "door_state", "motion_state"})
#: bookkeeping fields zigbee2mqtt adds, not measurements
Z2M_IGNORED = frozenset({"last_seen", "update", "update_available", "device", "elapsed",
                         "power_on_behavior", "color_mode", "color_temp_startup"})
