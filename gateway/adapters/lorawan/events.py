"""ChirpStack integration events as both uplink sources deliver them.

The gRPC stream sends ``LogItem`` s whose ``description`` is the event type and whose
``body`` is the event as JSON; the MQTT integration sends the event as protobuf or JSON
on ``.../event/<type>``. Either way the adapter gets a :class:`Delivery` holding the
``integration`` message (``UplinkEvent``, ``StatusEvent``...).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from chirpstack_api.integration import integration_pb2 as integration
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.message import DecodeError, Message

EVENT_TYPES: dict[str, type[Message]] = {
    "up": integration.UplinkEvent,
    "status": integration.StatusEvent,
    "ack": integration.AckEvent,
    "txack": integration.TxAckEvent,
    "join": integration.JoinEvent,
    "log": integration.LogEvent,
    "location": integration.LocationEvent,
}


class MalformedEvent(ValueError):
    """An event body that cannot be parsed; ``reason`` labels the metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class UnknownKind(MalformedEvent):
    """An event type this adapter does not use (a newer ChirpStack may add some): ignored."""

    def __init__(self, kind: str) -> None:
        super().__init__("unknown_kind", f"event type {kind!r} is not used; ignored")
        self.kind = kind


class Delivery(NamedTuple):
    """One event from a source. ``cursor`` is the LogItem id (gRPC source only)."""

    kind: str
    event: Message
    dev_eui: str
    cursor: str = ""


#: called for each delivery; True once handled durably (the source may then commit)
Handler = Callable[[Delivery], Awaitable[bool]]


def parse_json(kind: str, body: str | bytes) -> Message:
    """Parse a JSON event body (camelCase or proto names); unknown fields are ignored."""
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise UnknownKind(kind)
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            return cls(**_convert(cls.DESCRIPTOR, data))
    except RecursionError:
        raise MalformedEvent("bad_json", f"{kind} event: JSON nested too deeply") from None
    except (_Unusual, ValueError, TypeError, KeyError, binascii.Error):
        pass  # the reference parser below decides, and names the problem
    msg = cls()
    try:
        json_format.Parse(body, msg, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise MalformedEvent("bad_json", f"{kind} event: invalid JSON body: {exc}") from None
    return msg


# -- fast JSON → message ----------------------------------------------------------------------
#
# json_format.Parse walks descriptors in Python: ~700 µs for one uplink event. The generated
# constructors (upb, in C) take nested mappings, so mapping JSON names to field names and
# converting the few JSON-specific encodings (base64 bytes, RFC 3339 times, 64-bit integers
# as strings) is enough; anything unusual falls back to json_format.Parse.

_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"
_STRUCT = "google.protobuf.Struct"
_INTS = frozenset({FD.TYPE_INT32, FD.TYPE_INT64, FD.TYPE_UINT32, FD.TYPE_UINT64,
                   FD.TYPE_SINT32, FD.TYPE_SINT64, FD.TYPE_FIXED32, FD.TYPE_FIXED64,
                   FD.TYPE_SFIXED32, FD.TYPE_SFIXED64})
_FIELDS: dict[str, dict[str, FD]] = {}


class _Unusual(Exception):
    """A JSON value the fast path does not handle; json_format.Parse takes over."""


def _fields(desc: Descriptor) -> dict[str, FD]:
    found = _FIELDS.get(desc.full_name)
    if found is None:
        found = {}
        for f in desc.fields:
            found[f.name] = f
            found[f.json_name] = f
        _FIELDS[desc.full_name] = found
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


def parse_protobuf(kind: str, body: bytes) -> Message:
    """Parse a protobuf event body."""
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise UnknownKind(kind)
    msg = cls()
    try:
        msg.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise MalformedEvent("bad_protobuf", f"{kind} event: invalid protobuf: {exc}") from None
    return msg


def parse_payload(kind: str, body: bytes, encoding: str = "auto") -> Message:
    """Parse an MQTT integration payload: ``json``, ``protobuf`` or ``auto`` (sniffed)."""
    if encoding == "json" or (encoding == "auto" and body.lstrip()[:1] == b"{"):
        return parse_json(kind, body)
    return parse_protobuf(kind, body)


def dev_eui_of(event: Message) -> str:
    """The device an event is about (lowercase hex, as ChirpStack writes it)."""
    info = getattr(event, "device_info", None)
    eui = info.dev_eui if info is not None else ""
    return str(eui).lower()
