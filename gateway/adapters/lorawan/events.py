"""ChirpStack integration events as both uplink sources deliver them.

The gRPC stream sends ``LogItem`` s whose ``description`` is the event type and whose
``body`` is the event as JSON; the MQTT integration sends the event as protobuf or JSON
on ``.../event/<type>``. Either way the adapter gets a :class:`Delivery` holding the
``integration`` message (``UplinkEvent``, ``StatusEvent``...). The parsing itself is
:mod:`gateway.payloads.chirpstack`'s, which ``format: chirpstack`` uses too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

from google.protobuf.message import Message

from gateway.payloads import chirpstack
from gateway.payloads.chirpstack import EVENT_TYPES, dev_eui_of
from gateway.payloads.errors import DecodeError

__all__ = ["EVENT_TYPES", "Delivery", "Handler", "MalformedEvent", "UnknownKind", "dev_eui_of",
           "parse_json", "parse_payload", "parse_protobuf"]


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
    if kind not in EVENT_TYPES:
        raise UnknownKind(kind)
    try:
        return chirpstack.parse_json(kind, body)
    except DecodeError as exc:
        raise MalformedEvent("bad_json", str(exc)) from None


def parse_protobuf(kind: str, body: bytes) -> Message:
    """Parse a protobuf event body."""
    if kind not in EVENT_TYPES:
        raise UnknownKind(kind)
    try:
        return chirpstack.parse_protobuf(kind, body)
    except DecodeError as exc:
        raise MalformedEvent("bad_protobuf", str(exc)) from None


def parse_payload(kind: str, body: bytes, encoding: str = "auto") -> Message:
    """Parse an MQTT integration payload: ``json``, ``protobuf`` or ``auto`` (sniffed)."""
    if encoding == "json" or (encoding == "auto" and body.lstrip()[:1] in (b"{", b"[")):
        return parse_json(kind, body)
    return parse_protobuf(kind, body)
