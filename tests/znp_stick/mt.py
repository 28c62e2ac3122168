"""The stick's side of the TI Monitor and Test (MT) serial framing.

A frame is SOF (0xFE), the payload length, cmd0/cmd1 (type, subsystem, command id), the
payload and an FCS (XOR of everything between SOF and FCS). Frames are parsed and built
with zigpy-znp's own ``TransportFrame``/``GeneralFrame``; what the host sends is turned
into zigpy-znp's command objects, so the stick and zigpy-znp cannot drift apart silently.
A byte stream that does not parse is resynchronised on the next SOF, as firmware does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zigpy_znp.commands as c
import zigpy_znp.types as t
from zigpy_znp.exceptions import InvalidFrame
from zigpy_znp.frames import GeneralFrame, TransportFrame

log = logging.getLogger("tests.znp_stick.mt")

SOF = 0xFE
#: CC2652 builds (Z-Stack 3.30 and later) pack MT structs with padding
ALIGN_STRUCTS = True


def to_bytes(command: t.CommandBase) -> bytes:
    """One command as the bytes that cross the serial line."""
    return TransportFrame(command.to_frame(align=ALIGN_STRUCTS)).serialize()


def parse(frame: GeneralFrame) -> t.CommandBase | None:
    """The zigpy-znp command a frame carries, or None when zigpy-znp does not know it."""
    cls = c.COMMANDS_BY_ID.get(frame.header)
    if cls is None:
        return None
    return cls.from_frame(frame, align=ALIGN_STRUCTS)


class MtLink(asyncio.Protocol):
    """One host connection: bytes in → frames → ``on_frame``; ``send`` writes commands."""

    def __init__(self, on_frame: Callable[[MtLink, GeneralFrame], None],
                 on_lost: Callable[[MtLink], None]) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._closed = asyncio.get_running_loop().create_future()
        #: frames that failed their FCS or length checks (resynchronised on the next SOF)
        self.bad_frames = 0

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            start = self._buffer.find(SOF)
            if start < 0:
                # Bootloader skip bytes (0xEF) and line noise: nothing to keep
                self._buffer.clear()
                return
            del self._buffer[:start]
            if len(self._buffer) < 5:
                return
            length = self._buffer[1]
            if length > 250:
                self.bad_frames += 1
                del self._buffer[:1]
                continue
            if len(self._buffer) < length + 5:
                return
            try:
                frame, rest = TransportFrame.deserialize(bytes(self._buffer[:length + 5]))
            except InvalidFrame as exc:
                log.warning("znp stick: bad frame dropped: %s", exc)
                self.bad_frames += 1
                del self._buffer[:1]
                continue
            del self._buffer[:length + 5]
            self._on_frame(self, frame.payload)
            if self._transport is None:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self._closed.done():
            self._closed.set_result(None)
        self._on_lost(self)

    # -- ours ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._transport is not None

    def send(self, command: t.CommandBase) -> None:
        if self._transport is None:
            log.debug("znp stick: link closed, %s not sent", type(command).__qualname__)
            return
        log.debug("znp stick → host: %s", command)
        self._transport.write(to_bytes(command))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        await self._closed
