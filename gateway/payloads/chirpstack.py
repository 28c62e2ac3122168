"""ChirpStack v4 integration events: the uplink's decoded object and radio data, device status.

``format: chirpstack`` reads the events ChirpStack's MQTT integration publishes on
``application/<application id>/device/<DevEUI>/event/<type>`` (JSON, the protobuf JSON
mapping; or protobuf when ChirpStack's ``json = false``); the event type is the topic's
last segment. The LoRaWAN adapter builds its readings with the same functions, from the
events its gRPC stream or MQTT source parsed, so one event gives the same readings
through either path.

What becomes readings (event definitions: ChirpStack's ``api/proto/integration/
integration.proto``, https://github.com/chirpstack/chirpstack; JSON examples:
https://www.chirpstack.io/docs/chirpstack/integrations/events.html):

- ``up`` (``UplinkEvent``): every value of the codec's decoded ``object``, nested keys
  joined by ``_`` and list items by index, the metric named by
  :func:`~gateway.payloads.names.metric_name` (``TempC`` → ``temp_c``); then ``rssi``
  (dBm) and ``snr`` (dB), the best over the gateways that heard it, ``frame_counter``
  (``fCnt``) and ``data_rate`` (``dr``). The frame's raw ``data`` is not decoded here
  (the LoRaWAN adapter's profiles decode Cayenne LPP or byte layouts).
- ``status`` (``StatusEvent``, the device's answer to DevStatusReq): ``link_margin`` (dB),
  ``external_power``, and ``battery`` (%EL) unless ``externalPowerSource`` or
  ``batteryLevelUnavailable`` say the level means nothing; a level that is not a number
  from 0 to 100 (NaN from a binary or ``"NaN"`` JSON body) is left out.
- ``location`` (``LocationEvent``): ``latitude``, ``longitude``, ``altitude`` and
  ``location_accuracy`` when given.

``deviceInfo.devEui`` names the device (lower-case hex, as ChirpStack writes it): an
event without one is refused (``no_device``). Readings carry the event's ``time`` (the
network server's receive time), or the gateway's receive time when it has none. Other
event types (``join``, ``ack``, ``txack``, ``log``) carry no readings: subscribe to
``event/up`` and ``event/status`` (and ``event/location``) only.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

from chirpstack_api.integration import integration_pb2 as integration
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from gateway.payloads.base import Format, Options, Source
from gateway.payloads.errors import DecodeError
from gateway.payloads.names import metric_name
from gateway.payloads.values import MAX_TEXT, MIN_TS, is_number, load_json
from gateway.reading import Reading, Value

Candidate = tuple[str, Value, str | None]

#: the integration event types, by the name ChirpStack gives them (topic segment, LogItem)
EVENT_TYPES: dict[str, type[Message]] = {
    "up": integration.UplinkEvent,
    "status": integration.StatusEvent,
    "ack": integration.AckEvent,
    "txack": integration.TxAckEvent,
    "join": integration.JoinEvent,
    "log": integration.LogEvent,
    "location": integration.LocationEvent,
}
#: the event types that carry readings
READING_TYPES = frozenset({"up", "status", "location"})
#: largest event body read (bytes): an uplink of 242 bytes heard by many gateways is ~10 kB
MAX_EVENT = 256 * 1024
#: values of one decoded object, and its nesting, that are read
MAX_VALUES = 1000
MAX_DEPTH = 8

_EUI = re.compile(r"[0-9a-f]{16}")


# -- event bodies ---------------------------------------------------------------------------


def parse_json(kind: str, body: str | bytes) -> Message:
    """The event of a JSON body (camelCase or proto names; unknown fields are ignored).

    Raises :class:`DecodeError`: ``bad_format`` for an event type ChirpStack does not
    define, ``bad_json`` for a body that is not the event in protobuf's JSON mapping.
    """
    cls = _event_class(kind)
    data = load_json(body)
    if not isinstance(data, dict):
        raise DecodeError("bad_json", f"{kind} event: expected a JSON object, "
                          f"got {type(data).__name__}")
    try:
        return cls(**_convert(cls.DESCRIPTOR, data))
    except RecursionError:
        raise DecodeError("bad_json", f"{kind} event: JSON nested too deeply") from None
    except (_Unusual, ValueError, TypeError, KeyError, OverflowError, binascii.Error):
        pass  # the reference parser below decides, and names the problem
    msg = cls()
    try:
        json_format.ParseDict(data, msg, ignore_unknown_fields=True)
    except RecursionError:
        raise DecodeError("bad_json", f"{kind} event: JSON nested too deeply") from None
    except (json_format.ParseError, ValueError, TypeError, OverflowError) as exc:
        raise DecodeError("bad_json", f"{kind} event: not a ChirpStack event: "
                          f"{str(exc)[:200]}") from None
    return msg


def parse_protobuf(kind: str, body: bytes) -> Message:
    """The event of a protobuf body (``bad_format`` / ``bad_shape`` as DecodeError)."""
    msg = _event_class(kind)()
    try:
        msg.ParseFromString(body)
    except (ProtobufDecodeError, ValueError, RecursionError) as exc:
        raise DecodeError("bad_shape", f"{kind} event: invalid protobuf: "
                          f"{str(exc)[:200]}") from None
    return msg


def parse_event(kind: str, body: bytes, encoding: str = "auto") -> Message:
    """The event of an MQTT integration payload: ``json``, ``protobuf`` or ``auto`` (sniffed)."""
    if len(body) > MAX_EVENT:
        raise DecodeError("bad_shape", f"{kind} event of {len(body)} bytes; at most {MAX_EVENT}")
    if encoding == "json" or (encoding == "auto" and body.lstrip()[:1] in (b"{", b"[")):
        return parse_json(kind, body)
    return parse_protobuf(kind, body)


def _event_class(kind: str) -> type[Message]:
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise DecodeError("bad_format", f"{kind[:40]!r} is not a ChirpStack event type "
                          f"({', '.join(EVENT_TYPES)})")
    return cls


# json_format.ParseDict walks descriptors in Python: ~700 µs for one uplink event. The
# generated constructors (upb, in C) take nested mappings, so mapping JSON names to field
# names and converting the few JSON-specific encodings (base64 bytes, RFC 3339 times, 64-bit
# integers as strings) is enough; anything unusual falls back to json_format.ParseDict.

_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"
_STRUCT = "google.protobuf.Struct"
_INTS = frozenset({FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64,
                   FD.TYPE_SINT32, FD.TYPE_SINT64, FD.TYPE_FIXED32, FD.TYPE_FIXED64,
                   FD.TYPE_SFIXED32, FD.TYPE_SFIXED64})
_FIELDS: dict[str, dict[str, FD]] = {}


class _Unusual(Exception):
    """A JSON value the fast path does not handle; json_format.ParseDict takes over."""


def _fields(desc: Descriptor) -> dict[str, FD]:
    found = _FIELDS.get(desc.full_name)
    if found is None:
        found = {}
        for f in desc.fields:
            found[f.name] = f
            found[f.json_name] = f
        _FIELDS[desc.full_name] = found  # one per message type of integration.proto
    return found


def _convert(desc: Descriptor, obj: dict[str, Any]) -> dict[str, Any]:
    fields = _fields(desc)
    out: dict[str, Any] = {}
    for key, value in obj.items():
        f = fields.get(key)
        if f is None or value is None:
            continue  # unknown fields are ignored; null means the default
        mt = f.message_type
        if mt is not None and mt.GetOptions().map_entry:
            if not isinstance(value, dict):
                raise _Unusual(key)
            vf = mt.fields_by_name["value"]
            if mt.fields_by_name["key"].type != FD.TYPE_STRING:
                raise _Unusual(key)
            out[f.name] = {k: _single(vf, v) for k, v in value.items()}
        elif f.is_repeated:
            if not isinstance(value, list):
                raise _Unusual(key)
            out[f.name] = [_single(f, v) for v in value]
        else:
            out[f.name] = _single(f, value)
    return out


def _single(f: FD, v: Any) -> Any:
    t = f.type
    if t == FD.TYPE_MESSAGE:
        name = f.message_type.full_name
        if name == _TIMESTAMP:
            ts = timestamp_pb2.Timestamp()
            ts.FromJsonString(v)
            return ts
        if name == _DURATION:
            d = duration_pb2.Duration()
            d.FromJsonString(v)
            return d
        if name == _STRUCT and isinstance(v, dict):
            return v
        if name.startswith("google.protobuf.") or not isinstance(v, dict):
            raise _Unusual(f.name)
        return _convert(f.message_type, v)
    if t == FD.TYPE_STRING:
        if not isinstance(v, str):
            raise _Unusual(f.name)
        return v
    if t in _INTS:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise _Unusual(f.name)
        return int(v)
    if t == FD.TYPE_BOOL:
        if not isinstance(v, bool):
            raise _Unusual(f.name)
        return v
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Unusual(f.name)  # "NaN", "Infinity"
        return float(v)
    if t == FD.TYPE_BYTES:
        if not isinstance(v, str):
            raise _Unusual(f.name)
        return base64.b64decode(v + "=" * (-len(v) % 4), validate=True)
    if t == FD.TYPE_ENUM:
        if isinstance(v, str) and v in f.enum_type.values_by_name:
            return v
        raise _Unusual(f.name)
    raise _Unusual(f.name)


# -- the device and the time ----------------------------------------------------------------


def dev_eui_of(event: Message) -> str:
    """The DevEUI an event names (lower-case, as ChirpStack writes it), or ``""``."""
    info = getattr(event, "device_info", None)
    eui = info.dev_eui if info is not None else ""
    return str(eui).strip().lower()


def device_of(event: Message) -> str:
    """The native id of the event's device: its DevEUI; ``no_device`` when it has none."""
    eui = dev_eui_of(event)
    if not _EUI.fullmatch(eui):
        raise DecodeError("no_device", f"event without a usable deviceInfo.devEui "
                          f"({eui[:40]!r}; expected 16 hex digits)")
    return eui


def event_time(event: Message, now: float) -> float:
    """The event's time (UNIX s), or ``now`` when it has none or an unset clock's."""
    if event.HasField("time"):
        ts: float = event.time.ToMicroseconds() / 1e6
        if ts >= MIN_TS and math.isfinite(ts):
            return ts
    return now


# -- the codec's object ---------------------------------------------------------------------


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
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [struct_value(v) for v in value.list_value.values]
    return None


def struct_to_dict(struct: Any) -> dict[str, Any]:
    """A ``google.protobuf.Struct`` (the codec's decoded object) as a plain dict.

    Keys in sorted order: a Struct is a map, whose order protobuf does not keep, and the
    readings of one event come out in the same order however it was encoded.
    """
    fields = struct.fields
    return {k: struct_value(fields[k]) for k in sorted(fields)}


def flatten_object(obj: Mapping[str, Any], prefix: str = "") -> Iterator[Candidate]:
    """The values of a decoded object: nested keys joined by ``_``, list items by index.

    Reads :data:`MAX_DEPTH` levels; more than :data:`MAX_VALUES` values is ``bad_shape``.
    Keys are as the codec wrote them (``fields:`` maps of the LoRaWAN adapter match them).
    """
    count = 0
    for item in _flatten(obj, prefix, 0):
        count += 1
        if count > MAX_VALUES:
            raise DecodeError("bad_shape", f"the decoded object has more than {MAX_VALUES} "
                              "values")
        yield item


def _flatten(obj: Mapping[str, Any], prefix: str, depth: int) -> Iterator[Candidate]:
    for key, value in obj.items():
        yield from _flatten_value(f"{prefix}_{key}" if prefix else str(key), value, depth)


def _flatten_value(name: str, value: Any, depth: int) -> Iterator[Candidate]:
    if value is None:
        return
    if isinstance(value, bool):
        yield name, value, None
    elif isinstance(value, float):
        # a protobuf Struct carries every number as a double: give integers back their type
        yield name, int(value) if value.is_integer() and abs(value) < 2**53 else value, None
    elif isinstance(value, (int, str)):
        yield name, value, None
    elif depth + 1 >= MAX_DEPTH:
        return
    elif isinstance(value, Mapping):
        yield from _flatten(value, name, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _flatten_value(f"{name}_{i}", item, depth + 1)


def object_candidates(event: integration.UplinkEvent) -> list[Candidate]:
    """The flattened values of an uplink's decoded ``object`` (none without one)."""
    if not event.HasField("object"):
        return []
    return list(flatten_object(struct_to_dict(event.object)))


def named(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates with their keys turned into metric names (what ``unmapped: keep`` does)."""
    return [(metric_name(key), value, unit) for key, value, unit in candidates]


# -- readings -------------------------------------------------------------------------------


def value_readings(values: Iterable[Candidate], device: str, ts: float) -> list[Reading]:
    """Readings of ``(metric, value, unit)``; a value no reading carries is left out.

    Left out: an empty metric name (a key of only punctuation), NaN and infinities,
    integers beyond 64 bits, text longer than :data:`~gateway.payloads.values.MAX_TEXT`.
    """
    out: list[Reading] = []
    for metric, value, unit in values:
        if not metric:
            continue
        if (isinstance(value, bool) or (isinstance(value, str) and len(value) <= MAX_TEXT)
                or is_number(value)):
            out.append(Reading(device, metric, value, unit, ts))
    return out


def radio_readings(event: integration.UplinkEvent, device: str, ts: float) -> list[Reading]:
    """``rssi`` and ``snr`` (best gateway), ``frame_counter`` and ``data_rate`` of an uplink."""
    out: list[Reading] = []
    rx = event.rx_info
    if rx:
        out.append(Reading(device, "rssi", max(r.rssi for r in rx), "dBm", ts))
        snrs = [r.snr for r in rx if math.isfinite(r.snr)]
        if snrs:
            out.append(Reading(device, "snr", round(max(snrs), 2), "dB", ts))
    out.append(Reading(device, "frame_counter", event.f_cnt, None, ts))
    out.append(Reading(device, "data_rate", event.dr, None, ts))
    return out


def status_readings(event: integration.StatusEvent, device: str, ts: float) -> list[Reading]:
    """``link_margin``, ``external_power`` and (when it means something) ``battery``."""
    out = [Reading(device, "link_margin", event.margin, "dB", ts),
           Reading(device, "external_power", event.external_power_source, None, ts)]
    level = event.battery_level
    if (not event.battery_level_unavailable and not event.external_power_source
            and math.isfinite(level) and 0.0 <= level <= 100.0):
        out.append(Reading(device, "battery", round(level, 1), "%EL", ts))
    return out


def location_readings(event: integration.LocationEvent, device: str,
                      ts: float) -> list[Reading]:
    """A geolocation result as ``latitude``, ``longitude``, ``altitude`` (and accuracy)."""
    if not event.HasField("location"):
        return []
    loc = event.location
    out: list[Reading] = []
    if math.isfinite(loc.latitude) and math.isfinite(loc.longitude):
        out.append(Reading(device, "latitude", loc.latitude, "lat", ts))
        out.append(Reading(device, "longitude", loc.longitude, "lon", ts))
        if math.isfinite(loc.altitude):
            out.append(Reading(device, "altitude", loc.altitude, "m", ts))
    if loc.accuracy and math.isfinite(loc.accuracy):
        out.append(Reading(device, "location_accuracy", loc.accuracy, "m", ts))
    return out


def uplink_readings(event: integration.UplinkEvent, device: str, ts: float,
                    values: Iterable[Candidate] | None = None,
                    radio: bool = True) -> list[Reading]:
    """The readings of an uplink: its values, then (with ``radio``) its radio data.

    ``values`` are ``(metric, value, unit)``; by default the decoded object's, named by
    :func:`named` (the LoRaWAN adapter passes its profile's decoding and field map).
    """
    if values is None:
        values = named(object_candidates(event))
    out = value_readings(values, device, ts)
    if radio:
        out.extend(radio_readings(event, device, ts))
    return out


def event_readings(kind: str, event: Message, device: str, now: float) -> list[Reading]:
    """The readings of a ``kind`` event with the default naming (no readings: ``[]``)."""
    ts = event_time(event, now)
    if isinstance(event, integration.UplinkEvent):
        return uplink_readings(event, device, ts)
    if isinstance(event, integration.StatusEvent):
        return status_readings(event, device, ts)
    if isinstance(event, integration.LocationEvent):
        return location_readings(event, device, ts)
    return []


class ChirpstackEvent(Format):
    """``format: chirpstack``: ChirpStack's MQTT integration events (see the module docstring).

    Subscribe to ``application/+/device/+/event/up`` (and ``.../event/status``); the
    device is the event's ``deviceInfo.devEui``.
    """

    name: ClassVar[str] = "chirpstack"
    names_devices: ClassVar[bool] = True

    @classmethod
    def check(cls, options: Options, topic_names: frozenset[str]) -> None:
        if options.fields:
            raise ValueError("fields: does not apply to format: chirpstack (ChirpStack's "
                             "device-profile codec names the values)")
        if "metric" in topic_names:
            raise ValueError("{metric} in the topic only works with format: value")

    def decode(self, payload: bytes, source: Source, now: float) -> list[Reading]:
        kind = source.topic.rsplit("/", 1)[-1]
        event = parse_event(kind, payload)
        if kind not in READING_TYPES:
            raise DecodeError("no_values", f"ChirpStack {kind} events carry no readings: "
                              "subscribe to .../event/up and .../event/status")
        device = f"{source.prefix}:{device_of(event)}"
        try:
            out = event_readings(kind, event, device, now)
        except RecursionError:
            raise DecodeError("bad_shape", "the decoded object is nested too deeply") from None
        if not out:
            raise DecodeError("no_values", f"nothing in the {kind} event becomes a reading")
        return out
