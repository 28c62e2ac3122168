"""Everything that reaches into gmqtt 0.8's internals, in one place, for this version only.

gmqtt is the MQTT 5 client of both the device-side MQTT adapter and the cloud uplink.
Three of its behaviours do not fit a gateway, and its public API offers no way around:

- **PUBACK reason codes are dropped** (a TODO in ``MqttPackageHandler._handle_puback_packet``):
  a publish refused by the broker (0x87 not authorized, 0x97 quota exceeded) looks like
  a success. :func:`on_puback` reads the reason code first.
- **One task per QoS 1 message**: with ``optimistic_acknowledgement=False`` gmqtt runs an
  async ``on_message`` as a task per message, which costs more than the rest of the hot
  path. :func:`take_qos1` hands QoS 1 PUBLISHes to a plain function instead.
- **One write per PUBACK**: gmqtt writes each PUBACK on its own (a ``send()`` system call
  per message). :func:`batch_pubacks` queues the PUBACKs of one loop turn and writes them
  together (:class:`PubackBatcher`).

Besides: :func:`publish_qos1` returns the packet id gmqtt's ``publish`` does not,
:func:`receive_maximum` reads the broker's CONNACK property, :class:`MidRecorder`
remembers the packet id of the last publish through gmqtt's in-flight store, and
:class:`OwnReconnectClient` turns gmqtt's own reconnect and replay into an event.

Importing this module checks that the installed gmqtt is the version these patches were
written for, and that the internals they replace exist: any other version fails loudly
at import (``GmqttMismatch``), not quietly at the first message.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTCommands, MQTTv50
from gmqtt.mqtt.handler import MqttPackageHandler
from gmqtt.mqtt.package import CommandWithMidPacket
from gmqtt.storage import PersistentStorage

from gateway.core.tasks import Fanout

#: the gmqtt release the patches below were written for and tested with
GMQTT_VERSION = "0.8.0"
#: the handler internals they replace or read
_INTERNALS = ("_handle_puback_packet", "_handle_qos_1_publish_packet", "_send_puback")


class GmqttMismatch(ImportError):
    """The installed gmqtt is not the one :mod:`gateway.core.gmqtt_patch` was written for."""


def check_version(installed: str | None = None) -> None:
    """Raise :class:`GmqttMismatch` unless gmqtt is :data:`GMQTT_VERSION` with its internals."""
    if installed is None:
        try:
            installed = version("gmqtt")
        except PackageNotFoundError:
            installed = getattr(gmqtt, "__version__", "unknown")
    if installed != GMQTT_VERSION:
        raise GmqttMismatch(
            f"gmqtt {installed} is installed; gateway.core.gmqtt_patch replaces internals of "
            f"gmqtt {GMQTT_VERSION} only (PUBACK reason codes, QoS 1 dispatch, PUBACK "
            f"batching). Install gmqtt=={GMQTT_VERSION}, or re-check each patch against the "
            "new version and update GMQTT_VERSION")
    missing = [name for name in _INTERNALS if not hasattr(MqttPackageHandler, name)]
    if missing:
        raise GmqttMismatch(f"gmqtt {installed} has no MqttPackageHandler.{missing[0]}; "
                            "gateway.core.gmqtt_patch cannot work with it")


check_version()

#: what a PUBACK callback gets: (packet id, reason code; < 0x80 is a success)
PubackCallback = Callable[[int, int], None]
#: gmqtt's QoS 1 PUBLISH handler: (packet id, payload, topic, properties)
Qos1Handler = Callable[[int, bytes, str, Any], None]


def _handler(client: gmqtt.Client) -> Any:
    return client._package_handler


def parse_puback(packet: bytes) -> tuple[int, int]:
    """Packet id and reason code of a PUBACK's variable header (absent reason: success)."""
    (mid,) = struct.unpack("!H", packet[:2])
    return mid, packet[2] if len(packet) > 2 else 0  # MQTT 5 §3.4.2.1


def on_puback(client: gmqtt.Client, callback: PubackCallback, *, replace: bool = False) -> None:
    """Call ``callback(mid, reason)`` for every PUBACK the client receives.

    By default gmqtt's own handling (freeing the id, its in-flight store) runs first;
    ``replace=True`` skips it and only frees the packet id: for a client whose resends
    are its owner's business (the uplink resends from the outbox).
    """
    handler = _handler(client)
    original = handler._handle_puback_packet

    def handle(cmd: int, packet: bytes) -> None:
        mid, reason = parse_puback(packet)
        if replace:
            handler.id_generator.free_id(mid)
        else:
            original(cmd, packet)
        callback(mid, reason)

    handler._handle_puback_packet = handle


def take_qos1(client: gmqtt.Client, handle: Qos1Handler) -> Qos1Handler:
    """Give QoS 1 PUBLISHes to ``handle`` (a plain function); returns gmqtt's own handler.

    ``handle`` must answer each message (see :class:`PubackBatcher`); it may pass a
    message on to the returned handler, gmqtt's task-per-message path.
    """
    handler = _handler(client)
    original: Qos1Handler = handler._handle_qos_1_publish_packet
    handler._handle_qos_1_publish_packet = handle
    return original


def build_puback(mid: int, reason: int = 0) -> bytes:
    """An MQTT 5 PUBACK packet."""
    return bytes(CommandWithMidPacket.build_package(
        MQTTCommands.PUBACK, mid, False, reason_code=reason, proto_ver=MQTTv50))


def write_raw(client: gmqtt.Client | None, data: bytes) -> bool:
    """Write ready-made packets on the client's connection; False if it has none."""
    connection = client._connection if client is not None else None
    if connection is None or not data:
        return False
    connection._protocol.write_data(data)
    return True


class PubackBatcher:
    """PUBACKs of one loop turn, written in one system call."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queued: list[bytes] = []
        self.client: gmqtt.Client | None = None
        #: writes done (each carrying one or more PUBACKs)
        self.writes = 0

    def __len__(self) -> int:
        """PUBACKs queued and not yet written."""
        return len(self._queued)

    def queue(self, mid: int, reason_code: int = 0) -> None:
        """Send a PUBACK with this loop turn's others (gmqtt's ``_send_puback`` signature)."""
        if not self._queued:
            self._loop.call_soon(self.flush)
        self._queued.append(build_puback(mid, reason_code))

    def flush(self) -> None:
        data = b"".join(self._queued)
        self._queued.clear()
        # stopped or disconnected: the broker sends what we did not acknowledge again
        if write_raw(self.client, data):
            self.writes += 1


def batch_pubacks(client: gmqtt.Client, batcher: PubackBatcher) -> None:
    """Route the client's PUBACKs (ours to the broker) through ``batcher``."""
    batcher.client = client
    _handler(client)._send_puback = batcher.queue


def publish_qos1(client: gmqtt.Client, topic: str, payload: bytes, retain: bool = False) -> int:
    """Send a QoS 1 PUBLISH and return its packet id (not kept for gmqtt's replay)."""
    mid, _ = client._connection.publish(gmqtt.Message(topic, payload, qos=1, retain=retain))
    return int(mid)


def receive_maximum(client: gmqtt.Client) -> int:
    """The broker's Receive Maximum from its CONNACK (65,535 when it sent none)."""
    props = getattr(_handler(client), "_connack_properties", {}) or {}
    value = props.get("receive_maximum")
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if value else 65535


class MidRecorder(PersistentStorage):  # type: ignore[misc]
    """gmqtt's in-flight store, remembering the packet id of the last publish.

    ``Client.publish`` does not return the packet id; a caller matching PUBACKs needs it.
    """

    last_mid = 0

    def push_message(self, mid: int, raw_package: bytes) -> None:
        self.last_mid = mid
        super().push_message(mid, raw_package)


class OwnReconnectClient(gmqtt.Client):  # type: ignore[misc]
    """gmqtt client whose reconnects are its owner's business.

    gmqtt would reconnect (and replay its in-flight store) on its own after a lost
    connection; here a lost connection or a disconnect only sets :attr:`lost`, and the
    owner connects again with its own backoff and its own idea of what to resend.
    """

    def __init__(self, client_id: str, **kwargs: Any) -> None:
        super().__init__(client_id, **kwargs)
        #: set once the connection is gone; link an owner's wake-up event to it
        self.lost = Fanout()
        self.on_disconnect = lambda *a: self.lost.set()

    async def reconnect(self, delay: bool = False) -> None:
        self.lost.set()
