"""ChirpStack integration events as both uplink sources deliver them.

The gRPC stream sends ``LogItem`` s whose ``description`` is the event type and whose
``body`` is the event as JSON; the MQTT integration sends the event as protobuf or JSON
on ``.../event/<type>``. Either way the adapter gets a :class:`Delivery` holding the
``integration`` message (``UplinkEvent``, ``StatusEvent``...).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

from chirpstack_api.integration import integration_pb2 as integration
from google.protobuf import json_format
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
    msg = cls()
    try:
        json_format.Parse(body, msg, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise MalformedEvent("bad_json", f"{kind} event: invalid JSON body: {exc}") from None
    return msg


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
