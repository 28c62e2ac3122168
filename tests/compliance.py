"""Parts of the adapter compliance suite: a sink that can hold or refuse, a PUBACK tap.

``GateSink`` stands in for the core's sink so a test can hold a batch open (as a slow
group commit does) or refuse it (as a full outbox does) at the moment it needs to; it
can pass what it accepts on to a real pipeline. ``MqttTap`` is a loopback TCP relay
between an MQTT client and mosquitto that reads, without changing a byte, the PUBLISH
packets the broker sends and the PUBACKs the client answers with.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.reading import Reading
from tests import waiting
from tests.brokers import free_port

#: SenML unit names: RFC 8428's registry (section 12.1), the units RFC 8798 added, and
#: the secondary units RFC 8798 registers; written out here so the suite does not check
#: the adapters against their own table
SENML_UNITS = frozenset({
    # RFC 8428
    "m", "kg", "g", "s", "A", "K", "cd", "mol", "Hz", "rad", "sr", "N", "Pa", "J", "W", "C",
    "V", "F", "Ohm", "S", "Wb", "T", "H", "Cel", "lm", "lx", "Bq", "Gy", "Sv", "kat", "m2",
    "m3", "l", "m/s", "m/s2", "m3/s", "l/s", "W/m2", "cd/m2", "bit", "bit/s", "lat", "lon",
    "pH", "dB", "dBW", "Bspl", "count", "/", "%", "%RH", "%EL", "EL", "1/s", "1/min",
    "beat/min", "beats", "S/m",
    # RFC 8798 primary additions
    "B", "VA", "VAs", "var", "vars", "J/m", "kg/m3", "deg",
    # RFC 8798 secondary units
    "ms", "min", "h", "MHz", "kW", "kVA", "kvar", "Ah", "Wh", "kWh", "varh", "kvarh", "kVAh",
    "Wh/km", "KiB", "GB", "Mbit/s", "B/s", "MB/s", "mV", "mA", "dBm", "ug/m3", "mm/h", "m/h",
    "ppm", "/100", "/1000", "hPa", "mm", "cm", "km", "km/h", "ppb", "ppt", "mg/l", "mg/m3",
})


class GateSink:
    """Records every ``accept`` call; holds calls while ``gate`` is clear, refuses while
    ``refusing`` is set, and otherwise accepts (through ``inner`` when given)."""

    def __init__(self, inner: Callable[[Sequence[Reading]], Awaitable[bool]] | None = None
                 ) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.refusing = False
        self.calls: list[list[Reading]] = []
        self.accepted: list[Reading] = []
        self.refused = 0
        #: monotonic time at which each accepted batch's ``accept`` returned True
        self.accepted_at: list[float] = []

    async def accept(self, readings: Sequence[Reading]) -> bool:
        batch = list(readings)
        self.calls.append(batch)
        await self.gate.wait()
        if self.refusing:
            self.refused += 1
            return False
        if self.inner is not None and not await self.inner(batch):
            self.refused += 1
            return False
        self.accepted.extend(batch)
        self.accepted_at.append(time.monotonic())
        return True

    def offered(self) -> list[Reading]:
        """Every reading handed to ``accept``, accepted or not, retries included."""
        return [r for call in self.calls for r in call]


async def eventually(cond: Callable[[], bool], within: float = 5.0,
                     what: str = "condition") -> None:
    """:func:`tests.waiting.eventually` with the compliance suite's default of 5 s (the
    name the suite imports from here)."""
    await waiting.eventually(cond, within, what)


# -- MQTT on the wire --------------------------------------------------------------------------

CONNECT, PUBLISH, PUBACK = 1, 3, 4


def _varint(data: bytes, i: int) -> tuple[int, int]:
    """An MQTT variable byte integer at ``data[i:]``: its value and the index after it."""
    value, mult = 0, 1
    for _ in range(4):
        byte = data[i]
        i += 1
        value += (byte & 0x7F) * mult
        mult *= 128
        if not byte & 0x80:
            break
    return value, i


@dataclass
class Puback:
    """A PUBACK the client sent: packet id, reason code, the topic and payload of the
    PUBLISH it answers, and when it passed the tap."""

    mid: int
    code: int
    topic: str | None
    payload: bytes | None
    at: float


def _packets(buf: bytearray) -> list[tuple[int, int, bytes]]:
    """Cut complete MQTT packets (type, flags, body) off the front of ``buf``."""
    out = []
    while len(buf) >= 2:
        length, mult, i = 0, 1, 1
        while True:
            if i >= len(buf):
                return out
            byte = buf[i]
            length += (byte & 0x7F) * mult
            mult *= 128
            i += 1
            if not byte & 0x80:
                break
            if i > 4:
                raise ValueError("malformed MQTT remaining length")
        if len(buf) < i + length:
            return out
        out.append((buf[0] >> 4, buf[0] & 0x0F, bytes(buf[i:i + length])))
        del buf[:i + length]
    return out


class MqttTap:
    """A TCP relay client ↔ mosquitto on loopback that records PUBLISH topics per packet id
    (broker → client) and PUBACKs with their reason codes (client → broker)."""

    def __init__(self, broker_host: str, broker_port: int) -> None:
        self.broker = (broker_host, broker_port)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.pubacks: list[Puback] = []
        #: packet id → (topic, payload) of the latest QoS 1 PUBLISH the broker sent with it
        self.publishes: dict[int, tuple[str, bytes]] = {}
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> MqttTap:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        for task in list(self._pumps):
            task.cancel()
        for task in list(self._pumps):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def acks_for(self, topic: str) -> list[int]:
        """Reason codes of the PUBACKs answering PUBLISHes on ``topic``."""
        return [p.code for p in self.pubacks if p.topic == topic]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.broker)
        self._writers += [writer, up_writer]
        version = [4]  # the protocol level the client's CONNECT asks for (5 = MQTT 5)

        def from_client(buf: bytearray) -> None:
            self._from_client(buf, version)

        def from_broker(buf: bytearray) -> None:
            self._from_broker(buf, version[0])

        for task in (self._pump(reader, up_writer, from_client),
                     self._pump(up_reader, writer, from_broker)):
            t = asyncio.get_running_loop().create_task(task)
            self._pumps.add(t)
            t.add_done_callback(self._pumps.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    inspect: Callable[[bytearray], None]) -> None:
        buf = bytearray()
        try:
            while data := await reader.read(65536):
                buf += data
                inspect(buf)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _from_client(self, buf: bytearray, version: list[int]) -> None:
        for kind, _flags, body in _packets(buf):
            if kind == CONNECT and len(body) >= 7:
                n = int.from_bytes(body[:2], "big")
                version[0] = body[2 + n]
            elif kind == PUBACK and len(body) >= 2:
                code = body[2] if len(body) > 2 else 0
                mid = int.from_bytes(body[:2], "big")
                topic, payload = self.publishes.get(mid, (None, None))
                self.pubacks.append(Puback(mid, code, topic, payload, time.monotonic()))

    def _from_broker(self, buf: bytearray, version: int) -> None:
        for kind, flags, body in _packets(buf):
            if kind == PUBLISH and (flags >> 1) & 0x03:
                n = int.from_bytes(body[:2], "big")
                topic = body[2:2 + n].decode("utf-8", "replace")
                mid = int.from_bytes(body[2 + n:4 + n], "big")
                start = 4 + n
                if version >= 5:
                    props, start = _varint(body, start)
                    start += props
                self.publishes[mid] = (topic, body[start:])
