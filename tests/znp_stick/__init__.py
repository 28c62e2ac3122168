"""A simulated TI Z-Stack (ZNP) stick on a TCP socket, for tests.

It stands in for a Texas Instruments Zigbee stick (Sonoff ZBDongle-P, SMLIGHT SLZB-06,
other CC2652/CC1352 coordinators running Z-Stack 3.x), which cannot be attached here. The
unmodified zigpy-znp stack reaches it through ``socket://127.0.0.1:PORT`` (serialx opens
such paths like a serial port, as for a network-attached SLZB-06), speaks MT framing to
it (:mod:`.mt`) and the Z-Stack MT API (:mod:`.zstack`); behind it sit the same virtual
devices as behind the simulated EZSP stick (:mod:`tests.ezsp_stick.device`), answering
ZDO and ZCL. Frames and command tables are zigpy-znp's and zigpy's own.

Beyond the happy path it can drop the link (a stick unplugged) and reboot on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import zigpy_znp.types as t
from zigpy_znp.frames import GeneralFrame

from tests.ezsp_stick.device import Endpoint, VirtualDevice, VirtualNode
from tests.socket_stick import SocketStick
from tests.znp_stick.mt import MtLink, parse
from tests.znp_stick.zstack import NvState, ZStack, preform

__all__ = ["Endpoint", "VirtualDevice", "VirtualNode", "ZnpStick"]

log = logging.getLogger("tests.znp_stick")


class ZnpStick(SocketStick[MtLink]):
    """A Z-Stack coordinator listening on a loopback TCP port; one host at a time.

    NVRAM (:attr:`nv`) survives resets and reconnects, as on a real stick, so a host that
    reconnects finds its network again.
    """

    KIND = "znp"

    def __init__(self, ieee: str = "00:12:4b:00:29:b1:c2:d3", host: str = "127.0.0.1",
                 port: int = 0) -> None:
        super().__init__(host, port)
        self.nv = NvState(t.EUI64.convert(ieee))
        self.devices: dict[int, VirtualDevice] = {}
        self.zstack = ZStack(self.nv, self.devices, self._emit)

    # -- life ---------------------------------------------------------------------------

    def _protocol(self) -> MtLink:
        link = self._attach(MtLink(self._frame, self._lost))
        # A network-attached stick keeps running across TCP connections; a USB one is
        # reset by the host through RTS/DTR. Either way zigpy-znp resets it soon after.
        self._notify()
        return link

    def _frame(self, link: MtLink, frame: GeneralFrame) -> None:
        if link is not self.link:
            return
        try:
            request = parse(frame)
        except ValueError as exc:
            log.warning("znp stick: cannot parse %s: %s", frame, exc)
            self.zstack.unknown[f"unparsable 0x{int(frame.header):04X}"] += 1
            return
        try:
            self.zstack.handle(request, frame.header)
        except Exception:  # a bug in the stick must show, not kill the link silently
            log.exception("znp stick: handling %s failed", request)
            self.zstack.unknown[f"failed {type(request).__qualname__}"] += 1
        self._notify()

    def _lost(self, link: MtLink) -> None:
        if self.link is link:
            self.link = None
        self._notify()

    def _emit(self, command: t.CommandBase) -> None:
        if self.link is None:
            log.warning("znp stick: no host connected, %s dropped", type(command).__qualname__)
            return
        self.link.send(command)

    def commands(self) -> Mapping[str, int]:
        return self.zstack.commands

    def preform(self, channel: int = 15, pan_id: int = 0x1A62,
                extended_pan_id: str = "dd:dd:dd:dd:dd:dd:dd:dd",
                network_key: bytes = bytes(range(16))) -> None:
        """Leave a network in NVRAM, as a stick formed on an earlier run carries one."""
        preform(self.nv, channel=channel, pan_id=pan_id, extended_pan_id=extended_pan_id,
                network_key=network_key)

    # -- faults ------------------------------------------------------------------------

    def unsolicited_reset(self) -> None:
        """Reboot on its own (a watchdog reset) and say so with SYS.ResetInd."""
        if self.link is None:
            raise RuntimeError("no host connected")
        log.info("znp stick: unsolicited reset")
        self.zstack.reset()
        self._emit(self.zstack.boot_indication(t.ResetReason.Watchdog))
        self._notify()

    # -- the radio side ----------------------------------------------------------------

    @property
    def network_up(self) -> bool:
        """Whether the host started (or formed) the network since the last reset."""
        return self.zstack.network_up

    @property
    def permit_joining(self) -> bool:
        return self.zstack.permit_joining

    @property
    def children(self) -> dict[t.EUI64, int]:
        """Joined devices as the stick's NVRAM lists them."""
        return self.nv.children()

    def join(self, device: VirtualDevice) -> None:
        """The device joins (joining must be open) and announces itself."""
        self.zstack.join(device)

    def report(self, device: VirtualDevice, endpoint: int, cluster: int,
               values: Mapping[int, Any]) -> None:
        """The device sends a ZCL attribute report to the coordinator."""
        self.zstack.deliver(device, device.report(endpoint, cluster, values))

    def send_command(self, device: VirtualDevice, endpoint: int, cluster: int,
                     command_id: int, **args: Any) -> None:
        """The device sends a cluster command to the coordinator."""
        self.zstack.deliver(device, device.command(endpoint, cluster, command_id, **args))

    def leave(self, device: VirtualDevice) -> None:
        """The device leaves the network on its own."""
        self.zstack.leave(device)
