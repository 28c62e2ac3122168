"""Payload decoding: the body of one CoAP request or notification → readings.

Content formats (CoAP Content-Format numbers):

- 0 ``text/plain``: one bare number, ``true``/``false`` (only where the metric is known).
- 50 ``application/json`` and 60 ``application/cbor``: an object of metric → value, or a
  list of such objects. ``ts`` is the device time (UNIX seconds, or milliseconds when
  larger than 1e11); ``units`` maps metric → unit. A value may also be ``{"v": .., "u": ..}``.
- 110 ``application/senml+json`` and 112 ``application/senml+cbor`` (integer labels):
  a SenML pack (RFC 8428) with base name, base time, base unit and base value resolved.

Units go through the shared unit table (aliases such as °C or hPa become SenML names).
A payload that cannot be decoded raises :class:`PayloadError` with a short ``reason``
(a metric label, one of :data:`REASONS`) and a message the device's owner can act on;
nothing else escapes, whatever the bytes (CBOR bignums, nesting thousands deep, tags).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import cbor2

from gateway.adapters.coap.config import NATIVE_ID
from gateway.reading import Reading, Value
from gateway.payloads.units import UnknownUnit, normalize

TEXT, JSON, CBOR, SENML_JSON, SENML_CBOR = 0, 50, 60, 110, 112
#: content formats devices may post readings in
READING_FORMATS = (JSON, CBOR, SENML_JSON, SENML_CBOR)
#: formats whose records can name their devices (base name)
SENML_FORMATS = (SENML_JSON, SENML_CBOR)
FORMAT_NUMBERS = {"text": TEXT, "json": JSON, "cbor": CBOR, "senml+json": SENML_JSON,
                  "senml+cbor": SENML_CBOR}

#: device timestamps before 2001-09-09 (UNIX 1e9) are taken as an unset clock
_MIN_TS = 1e9
#: larger timestamps are milliseconds
_MS_TS = 1e11
#: SenML: times below 2**28 are relative to now (RFC 8428 section 4.5.3)
_SENML_RELATIVE = 2**28
_MAX_TEXT = 256
_MAX_METRIC = 64
_SNAKE = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

#: SenML CBOR integer labels (RFC 8428 table 4) → JSON labels
SENML_LABELS: dict[int, str] = {
    -1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
    0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd",
}
_RESERVED = frozenset({"ts", "units"})
#: integers beyond 64 bits: no store or consumer keeps them, and float() overflows on them
_INT_MAX = 2**63 - 1
#: every reason :class:`PayloadError` carries (a bounded set of metric labels)
REASONS = frozenset({"bad_json", "bad_cbor", "bad_senml", "bad_shape", "bad_name", "bad_value",
                     "bad_unit", "bad_time", "bad_text", "bad_format", "no_values", "no_metric",
                     "no_device"})


class PayloadError(ValueError):
    """A payload that cannot be turned into readings."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_snake_cache: dict[str, str] = {}


def snake(name: str) -> str:
    """``Temperature``, ``tempC``, ``co2-ppm`` → ``temperature``, ``temp_c``, ``co2_ppm``."""
    hit = _snake_cache.get(name)
    if hit is None:
        hit = _SNAKE.sub("_", _CAMEL.sub("_", name).lower()).strip("_")[:_MAX_METRIC]
        if len(_snake_cache) < 4096:  # bounded: names come from devices
            _snake_cache[name] = hit
    return hit


def _unit(unit: Any, metric: str, where: str) -> tuple[str | None, Any]:
    if unit is None:
        return None, None
    if not isinstance(unit, str):
        raise PayloadError("bad_unit", f"{where}: unit must be a string")
    try:
        return normalize(unit, metric)
    except UnknownUnit as exc:
        raise PayloadError("bad_unit", f"{where}: {str(exc)[:200]}") from None


def _value(v: Any, where: str) -> Value:
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        if not -_INT_MAX <= v <= _INT_MAX:
            raise PayloadError("bad_value", f"{where}: integer out of the 64-bit range")
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise PayloadError("bad_value", f"{where}: {v} is not a finite number")
        return v
    if isinstance(v, str):
        if len(v) > _MAX_TEXT:
            raise PayloadError("bad_value", f"{where}: text longer than {_MAX_TEXT} characters")
        return v
    raise PayloadError("bad_value", f"{where}: expected a number, true/false or text, "
                       f"not {type(v).__name__}")


def _number(v: Any) -> bool:
    """Whether ``v`` is a finite int or float that converts to float (not a bool)."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return -_INT_MAX <= v <= _INT_MAX
    return isinstance(v, float) and math.isfinite(v)


def _reading(device: str, metric: str, value: Value, unit: Any, ts: float,
             where: str) -> Reading:
    senml, convert = _unit(unit, metric, where)
    if convert is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        converted = convert(float(value))
        if not math.isfinite(converted):
            raise PayloadError("bad_value", f"{where}: out of range once converted to {senml}")
        value = converted
    return Reading(device, metric, value, senml, ts)


def _reject_constant(name: str) -> Any:
    raise PayloadError("bad_json", f"{name} is not a number JSON allows")


#: one decoder for every payload: json.loads with options builds a new one per call
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _load_json(payload: bytes) -> Any:
    try:
        return _JSON.decode(payload.decode("utf-8"))
    except PayloadError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError("bad_json", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise PayloadError("bad_json", "JSON nested too deeply") from None


def _load_cbor(payload: bytes) -> Any:
    try:
        return cbor2.loads(payload)
    except Exception as exc:  # noqa: BLE001 - tag decoders (regex, MIME, decimal...) raise anything
        raise PayloadError("bad_cbor", f"not valid CBOR: {str(exc)[:200]}") from None


def _device_ts(raw: Any, now: float, where: str) -> float:
    if raw is None:
        return now
    if not _number(raw):
        raise PayloadError("bad_time", f"{where}: ts must be a number (UNIX seconds)")
    ts = float(raw)
    if ts > _MS_TS:
        ts /= 1000.0
    return ts if ts >= _MIN_TS else now


def _objects(doc: Any, device: str, now: float) -> list[Reading]:
    objs = doc if isinstance(doc, list) else [doc]
    if not objs:
        raise PayloadError("no_values", "the list is empty")
    out: list[Reading] = []
    for i, obj in enumerate(objs):
        where = f"object {i}" if isinstance(doc, list) else "payload"
        if not isinstance(obj, dict):
            raise PayloadError("bad_shape", f"{where}: expected an object of metric → value")
        ts = _device_ts(obj.get("ts"), now, where)
        units = obj.get("units") or {}
        if not isinstance(units, dict):
            raise PayloadError("bad_unit", f"{where}: units must map metric → unit")
        for key, raw in obj.items():
            if not isinstance(key, str):
                raise PayloadError("bad_shape", f"{where}: keys must be text, not "
                                   f"{type(key).__name__}")
            if key in _RESERVED:
                continue
            metric = snake(key)
            if not metric:
                raise PayloadError("bad_name", f"{where}: {key[:40]!r} is not a usable metric "
                                   "name")
            unit = units.get(key)
            if isinstance(raw, dict):
                if "v" not in raw:
                    raise PayloadError("bad_shape", f"{where}.{key:.64}: expected a value or "
                                       '{"v": value, "u": unit}')
                unit = raw.get("u", unit)
                raw = raw["v"]
            at = f"{where}.{key:.64}"
            value = _value(raw, at)
            out.append(_reading(device, metric, value, unit, ts, at))
    if not out:
        raise PayloadError("no_values", "no values in the payload")
    return out


def _senml(pack: Any, device: str | None, now: float, cbor: bool,
           prefix: str = "") -> list[Reading]:
    """Readings of a SenML pack: of ``device``, or (None) of the device each ``bn`` names."""
    if isinstance(pack, dict):
        pack = [pack]
    if not isinstance(pack, list) or not pack:
        raise PayloadError("bad_senml", "expected a SenML pack: an array of records")
    bn, bt, bu, bv, bs = "", 0.0, None, 0.0, 0.0
    out: list[Reading] = []
    for i, rec in enumerate(pack):
        where = f"record {i}"
        if not isinstance(rec, dict):
            raise PayloadError("bad_senml", f"{where} is not a map")
        if cbor:
            try:
                rec = {SENML_LABELS.get(k, k) if isinstance(k, int) else k: v
                       for k, v in rec.items()}
            except TypeError:
                raise PayloadError("bad_senml", f"{where}: unusable label") from None
        mandatory = [k for k in rec
                     if isinstance(k, str) and k.endswith("_") and k not in _SENML_KEYS]
        if mandatory:
            # RFC 8428 section 4.4: labels ending in "_" must be understood
            raise PayloadError("bad_senml", f"{where}: mandatory label {mandatory[0][:40]!r} "
                               "is not supported")
        try:
            bn = rec.get("bn", bn)
            bt = _num(rec.get("bt", bt), "bt")
            bu = rec.get("bu", bu)
            bv = _num(rec.get("bv", bv), "bv")
            bs = _num(rec.get("bs", bs), "bs")
            n = rec.get("n", "")
            if not isinstance(bn, str) or not isinstance(n, str):
                raise TypeError("bn and n must be text")
            t = bt + _num(rec.get("t", 0.0), "t")
        except (TypeError, ValueError) as exc:
            raise PayloadError("bad_senml", f"{where}: {exc}") from None
        unit = rec.get("u", bu)
        value: Value
        if "v" in rec:
            v = rec["v"]
            if not _number(v):
                raise PayloadError("bad_senml", f"{where}: v must be a finite number")
            value = bv + v if bv else v
        elif "vb" in rec:
            if not isinstance(rec["vb"], bool):
                raise PayloadError("bad_senml", f"{where}: vb must be true or false")
            value = rec["vb"]
        elif "vs" in rec:
            if not isinstance(rec["vs"], str):
                raise PayloadError("bad_senml", f"{where}: vs must be text")
            value = _value(rec["vs"], where)
        elif "s" in rec:
            s = rec["s"]
            if not _number(s):
                raise PayloadError("bad_senml", f"{where}: s must be a finite number")
            value = bs + s if bs else s
        else:
            continue  # base fields only, or a data value (vd) readings do not carry
        if device is None:
            native = bn.rstrip(":/._-")
            if not NATIVE_ID.match(native):
                raise PayloadError("no_device", f"{where}: the base name (bn) must name the "
                                   "device (letters, digits, '_', '.', ':' or '-'), or post to "
                                   "/<path>/<device id>")
            name = n
            dev = f"{prefix}:{native}"
        else:
            name = n or bn.rstrip(":/._-").rsplit(":", 1)[-1].rsplit("/", 1)[-1]
            dev = device
        metric = snake(name)
        if not metric:
            raise PayloadError("bad_senml", f"{where}: no name (n) for the metric")
        ts = t if t >= _SENML_RELATIVE else now + t
        out.append(_reading(dev, metric, value, unit, ts, where))
    if not out:
        raise PayloadError("no_values", "the SenML pack has no values")
    return out


_SENML_KEYS = frozenset(SENML_LABELS.values())


def _num(v: Any, label: str) -> float:
    if not _number(v):
        raise ValueError(f"{label} must be a finite number")
    return float(v)


def decode(content_format: int, payload: bytes, device: str, now: float,
           metric: str | None = None, unit: str | None = None) -> list[Reading]:
    """Readings of ``device`` in ``payload``; ``metric``/``unit`` name a text/plain value."""
    if content_format == JSON:
        return _objects(_load_json(payload), device, now)
    if content_format == CBOR:
        return _objects(_load_cbor(payload), device, now)
    if content_format == SENML_JSON:
        return _senml(_load_json(payload), device, now, cbor=False)
    if content_format == SENML_CBOR:
        return _senml(_load_cbor(payload), device, now, cbor=True)
    if content_format == TEXT:
        if metric is None:
            raise PayloadError("no_metric", "a text/plain value needs the resource's metric "
                               "configured")
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise PayloadError("bad_text", "text/plain payload is not UTF-8") from None
        value: Value
        if text.lower() in ("true", "on"):
            value = True
        elif text.lower() in ("false", "off"):
            value = False
        else:
            try:
                value = int(text) if re.fullmatch(r"[-+]?\d{1,18}", text) else float(text)
            except ValueError:
                raise PayloadError("bad_text", f"{text[:40]!r} is not a number") from None
            if isinstance(value, float) and not math.isfinite(value):
                raise PayloadError("bad_text", f"{text[:40]!r} is not a finite number")
        return [_reading(device, metric, value, unit, now, "payload")]
    raise PayloadError("bad_format", f"content format {content_format} is not supported")


def decode_pack(content_format: int, payload: bytes, prefix: str, now: float) -> list[Reading]:
    """Readings of a SenML pack whose base names name the devices (``<prefix>:<bn>``)."""
    if content_format == SENML_JSON:
        return _senml(_load_json(payload), None, now, cbor=False, prefix=prefix)
    if content_format == SENML_CBOR:
        return _senml(_load_cbor(payload), None, now, cbor=True, prefix=prefix)
    raise PayloadError("bad_format", "only SenML packs name their devices")


def encode(fmt: str, params: Mapping[str, Any]) -> tuple[int, bytes]:
    """A command's params as a request body: (content format, payload)."""
    if fmt == "cbor":
        return CBOR, cbor2.dumps(dict(params))
    if fmt == "json":
        return JSON, json.dumps(dict(params), separators=(",", ":")).encode()
    if fmt == "text":
        if len(params) != 1:
            raise ValueError("a text command takes exactly one param (its value)")
        (value,) = params.values()
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return TEXT, text.encode()
    raise ValueError(f"commands cannot be sent as {fmt}; use json, cbor or text")
