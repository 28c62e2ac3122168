"""The NCP side of ASH (EZSP over UART), on one TCP connection.

Frames, CRC, byte stuffing and data randomisation come from ``bellows.ash``: the stick
builds and parses exactly the bytes bellows does, only from the other end. What lives
here is the NCP's half of the state machine: answer RST with RSTACK, acknowledge the
host's DATA frames in sequence, and send its own DATA frames one at a time (window of
one, as ``bellows.ash.TX_K``), retransmitting when the host does not acknowledge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import bellows.types as bt
from bellows.ash import (
    AckFrame,
    AshFrame,
    AshProtocol,
    DataFrame,
    NakFrame,
    ParsingError,
    Reserved,
    RStackFrame,
    RstFrame,
    parse_frame,
)

log = logging.getLogger("tests.ezsp_stick.ash")

#: the NCP retransmits an unacknowledged DATA frame after this long (ASH's t_rx_ack)
ACK_TIMEOUT = 0.4
#: after this many retransmissions the NCP gives up on the frame
MAX_RETRIES = 5
#: version byte of RSTACK and ERROR frames, the only one bellows accepts
ASH_VERSION = 0x02
#: frames larger than this are garbage: resynchronise on the next flag
MAX_FRAME = 512


class AshNcp(asyncio.Protocol):
    """One host connection, seen from the stick.

    ``on_reset`` runs when the host resets the NCP (before RSTACK goes out);
    ``on_frame`` gets every in-sequence EZSP frame and returns the EZSP frames to send
    back (the response, then any callbacks). ``on_lost`` runs once the connection is gone.
    """

    def __init__(self, on_reset: Callable[[], None], on_frame: Callable[[bytes], list[bytes]],
                 on_lost: Callable[[AshNcp], None],
                 announce_after: float | None = None) -> None:
        self._on_reset = on_reset
        self._announce_after = announce_after
        self._on_frame = on_frame
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._rx_seq = 0  # next frame number expected from the host
        self._tx_seq = 0  # number of our next DATA frame
        self._acked = asyncio.Event()
        self._unacked: int | None = None
        self._outgoing: asyncio.Queue[bytes] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._reset_done = False
        self.frames_in = 0
        self.frames_out = 0

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        loop = asyncio.get_running_loop()
        self._sender = loop.create_task(self._send_loop(), name="ezsp-stick-ash-tx")
        if self._announce_after is not None:
            loop.call_later(self._announce_after, self._announce_boot)

    def _announce_boot(self) -> None:
        # A network-attached NCP (zigbeed, serial-over-TCP bridges) boots when a host
        # connects and says so with RSTACK; bellows waits for that on socket:// paths
        # and skips its own reset when it comes
        if self.transport is None or self._reset_done:
            return
        log.debug("ash: announcing boot (RSTACK) to the new host")
        self._reset_done = True
        self._on_reset()
        self._write(RStackFrame(version=ASH_VERSION, reset_code=bt.NcpResetCode.RESET_POWER_ON))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._sender is not None:
            self._sender.cancel()
        self._on_lost(self)

    def data_received(self, data: bytes) -> None:
        self._buffer.extend(data)
        while True:
            # A CANCEL byte voids everything before it (bellows sends 32 before RST)
            cancel = self._buffer.find(bytes([Reserved.CANCEL]))
            flag = self._buffer.find(bytes([Reserved.FLAG]))
            if cancel != -1 and (flag == -1 or cancel < flag):
                del self._buffer[:cancel + 1]
                continue
            if flag == -1:
                if len(self._buffer) > MAX_FRAME:
                    self._buffer.clear()
                return
            raw = bytes(self._buffer[:flag])
            del self._buffer[:flag + 1]
            raw = bytes(b for b in raw if b not in (Reserved.XON, Reserved.XOFF))
            if raw:
                self._frame_bytes_received(raw)

    # -- receiving -------------------------------------------------------------------------

    def _frame_bytes_received(self, raw: bytes) -> None:
        try:
            frame = parse_frame(AshProtocol._unstuff_bytes(raw))
        except (ParsingError, ValueError, IndexError) as exc:
            log.warning("ash: unparseable frame %s from host (%s): sending NAK", raw.hex(), exc)
            self._write(NakFrame(res=0, ncp_ready=False, ack_num=self._rx_seq))
            return
        if isinstance(frame, RstFrame):
            self._host_reset()
        elif isinstance(frame, DataFrame):
            self._handle_ack_num(frame.ack_num)
            self._data_received(frame)
        elif isinstance(frame, AckFrame):
            self._handle_ack_num(frame.ack_num)
        elif isinstance(frame, NakFrame):
            # The host rejected our frame: resend it at once instead of waiting
            self._handle_ack_num(frame.ack_num)
            self._acked.set()
        else:
            log.warning("ash: host sent an unexpected %r", frame)

    def _host_reset(self) -> None:
        log.debug("ash: RST from host")
        self._rx_seq = 0
        self._tx_seq = 0
        self._unacked = None
        self._acked.set()
        while not self._outgoing.empty():
            self._outgoing.get_nowait()
        self._reset_done = True
        self._on_reset()
        self._write(RStackFrame(version=ASH_VERSION, reset_code=bt.NcpResetCode.RESET_SOFTWARE))

    def _handle_ack_num(self, ack_num: int) -> None:
        if self._unacked is not None and ack_num == (self._unacked + 1) % 8:
            self._unacked = None
            self._acked.set()

    def _data_received(self, frame: DataFrame) -> None:
        if not self._reset_done:
            log.warning("ash: DATA before RST, ignored (a real NCP would send ERROR)")
            return
        if frame.frm_num != self._rx_seq:
            # A retransmission of what we already have: acknowledge it again, do not rerun
            self._write(AckFrame(res=0, ncp_ready=False, ack_num=self._rx_seq))
            if not frame.re_tx:
                log.debug("ash: out-of-sequence frame %d (expected %d)", frame.frm_num,
                          self._rx_seq)
            return
        self._rx_seq = (self._rx_seq + 1) % 8
        self.frames_in += 1
        self._write(AckFrame(res=0, ncp_ready=False, ack_num=self._rx_seq))
        for reply in self._on_frame(frame.ezsp_frame):
            self.send(reply)

    # -- sending ---------------------------------------------------------------------------

    def send(self, ezsp_frame: bytes) -> None:
        """Queue one EZSP frame (a response or a callback) for the host."""
        self._outgoing.put_nowait(ezsp_frame)

    async def _send_loop(self) -> None:
        while self.transport is not None:
            payload = await self._outgoing.get()
            frm_num = self._tx_seq
            self._tx_seq = (self._tx_seq + 1) % 8
            self._unacked = frm_num
            for attempt in range(MAX_RETRIES + 1):
                if self._unacked != frm_num or self.transport is None:
                    break  # a host reset dropped it, or the link is gone
                self._acked.clear()
                self._write(DataFrame(frm_num=frm_num, re_tx=attempt > 0,
                                      ack_num=self._rx_seq, ezsp_frame=payload))
                self.frames_out += 1
                try:
                    # asyncio.timeout, unlike wait_for on 3.11, never swallows a cancel
                    async with asyncio.timeout(ACK_TIMEOUT):
                        await self._acked.wait()
                except TimeoutError:
                    log.debug("ash: no ACK for frame %d (attempt %d)", frm_num, attempt + 1)
                    continue
                if self._unacked is None:
                    break
            else:
                log.warning("ash: host never acknowledged frame %d, dropped", frm_num)
                self._unacked = None

    def _write(self, frame: AshFrame) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(AshProtocol._stuff_bytes(frame.to_bytes()) + bytes([Reserved.FLAG]))

    def send_rstack(self, code: bt.NcpResetCode = bt.NcpResetCode.RESET_SOFTWARE) -> None:
        """Announce a reset the host did not ask for (a crash or a watchdog reboot)."""
        self._rx_seq = 0
        self._tx_seq = 0
        self._unacked = None
        self._acked.set()
        while not self._outgoing.empty():
            self._outgoing.get_nowait()
        self._write(RStackFrame(version=ASH_VERSION, reset_code=code))

    def close(self) -> None:
        """Drop the link (the stick was unplugged)."""
        if self.transport is not None:
            self.transport.close()
        if self._sender is not None:
            self._sender.cancel()

    async def wait_closed(self) -> None:
        """Return once the sending task has ended."""
        if self._sender is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
