"""A simulated Silicon Labs EZSP stick on a TCP socket, for tests.

It stands in for a Silicon Labs Zigbee stick (Sonoff ZBDongle-E, SkyConnect...), which
cannot be attached here. The unmodified bellows stack reaches it through
``socket://127.0.0.1:PORT`` (serialx opens such paths like a serial port), speaks ASH
framing to it (:mod:`.ash`) and EZSP version 13 (:mod:`.ezsp`); behind it sit virtual
devices that answer ZDO and ZCL (:mod:`.device`). Frames and command tables are
bellows' and zigpy's own, so the stick and the host cannot drift apart silently.

Beyond the happy path it can drop the link (a stick unplugged) and announce a reset the
host did not ask for (a firmware crash), which is how the reconnect path is proved.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import bellows.types as bt
import zigpy.types as zt

from tests.ezsp_stick.ash import AshNcp
from tests.ezsp_stick.device import Endpoint, VirtualDevice, VirtualNode
from tests.ezsp_stick.ezsp import Ncp, NvState
from tests.socket_stick import SocketStick

__all__ = ["EzspStick", "Endpoint", "VirtualDevice", "VirtualNode"]

log = logging.getLogger("tests.ezsp_stick")


class EzspStick(SocketStick[AshNcp]):
    """An EZSP NCP listening on a loopback TCP port; one host connection at a time.

    NVRAM (:attr:`nv`: formed network, keys, joined devices) survives resets and
    reconnects, as on a real stick, so a host that reconnects finds its network again.
    """

    KIND = "ezsp"

    def __init__(self, eui64: str = "00:12:4b:00:1c:a1:b2:c3", host: str = "127.0.0.1",
                 port: int = 0, announce_boot: float | None = 0.2) -> None:
        super().__init__(host, port)
        #: seconds after a connection before the stick announces its boot (RSTACK), as a
        #: network-attached stick does; None: stay silent until the host resets it, as a
        #: USB stick does (bellows then waits 2 s for an announcement before resetting)
        self.announce_boot = announce_boot
        self.nv = NvState(eui64=zt.EUI64.convert(eui64))
        self.devices: dict[int, VirtualDevice] = {}
        self.ncp = Ncp(self.nv, self.devices, self._emit)
        self.resets = 0

    # -- life ---------------------------------------------------------------------------------

    def _protocol(self) -> AshNcp:
        link = self._attach(AshNcp(self._host_reset, self._frame, self._lost,
                                   self.announce_boot))
        # A fresh connection meets a stick whose stack is not running yet
        self.ncp.reset()
        self._notify()
        return link

    def _host_reset(self) -> None:
        self.resets += 1
        self.ncp.reset()
        self._notify()

    def _frame(self, frame: bytes) -> list[bytes]:
        frames = self.ncp.handle(frame)
        self._notify()
        return frames

    def _lost(self, link: AshNcp) -> None:
        if self.link is link:
            self.link = None
            self.ncp.reset()
        self._notify()

    def _emit(self, frame: bytes) -> None:
        if self.link is None:
            log.warning("ezsp stick: no host connected, callback dropped")
            return
        self.link.send(frame)

    def commands(self) -> Mapping[str, int]:
        return self.ncp.commands

    def preform(self, channel: int = 15, pan_id: int = 0x1A62,
                extended_pan_id: str = "dd:dd:dd:dd:dd:dd:dd:dd",
                network_key: bytes = bytes(range(16))) -> None:
        """Leave a network in NVRAM, as a stick formed on an earlier run carries one.

        Starting against it skips formation (and bellows' resets around it), which keeps
        tests that are not about formation quick.
        """
        self.nv.formed = True
        self.nv.params = bt.EmberNetworkParameters(
            extendedPanId=zt.EUI64.convert(extended_pan_id), panId=pan_id, radioTxPower=8,
            radioChannel=channel, joinMethod=bt.EmberJoinMethod.USE_MAC_ASSOCIATION,
            nwkManagerId=0x0000, nwkUpdateId=0, channels=zt.Channels.from_channel_list([channel]))
        self.nv.network_key = bt.KeyData(network_key)
        self.nv.network_key_seq = 0
        self.nv.tc_link_key = bt.KeyData(bytes(range(0x10, 0x20)))
        self.nv.hashed_tclk = True

    # -- faults ------------------------------------------------------------------------------

    def unsolicited_reset(self, code: bt.NcpResetCode = bt.NcpResetCode.RESET_SOFTWARE) -> None:
        """Reboot the NCP on its own and say so with RSTACK, as after a crash."""
        if self.link is None:
            raise RuntimeError("no host connected")
        log.info("ezsp stick: unsolicited reset (%s)", code.name)
        self.ncp.reset()
        self.link.send_rstack(code)

    # -- the radio side ------------------------------------------------------------------------

    @property
    def network_up(self) -> bool:
        """Whether the host started (or formed) the network on the current link."""
        return self.ncp.network_up

    @property
    def permit_joining(self) -> bool:
        """Whether joining is open right now."""
        return self.ncp.permit_joining

    def add_device(self, device: VirtualDevice) -> VirtualDevice:
        """Put a device in radio range; it is not part of the network until :meth:`join`."""
        self.devices[device.nwk] = device
        device.topology = self.ncp  # routers answer neighbour/routing table requests
        return device

    def noise(self, levels: Mapping[int, int]) -> None:
        """The strongest signal (dBm) an energy scan hears per channel (others: -95)."""
        self.ncp.energy.update(levels)

    def join(self, device: VirtualDevice) -> None:
        """The device joins (joining must be open) and announces itself."""
        if not self.ncp.permit_joining:
            raise RuntimeError("joining is not permitted: the host must call permit first")
        self.add_device(device)
        self.nv.children[device.ieee] = device.nwk
        self.ncp.callback("childJoinHandler", index=len(self.nv.children) - 1, joining=True,
                          childId=device.nwk, childEui64=device.ieee,
                          childType=bt.EmberNodeType.SLEEPY_END_DEVICE)
        self.ncp.callback("trustCenterJoinHandler", newNodeId=device.nwk,
                          newNodeEui64=device.ieee,
                          status=bt.EmberDeviceUpdate.STANDARD_SECURITY_UNSECURED_JOIN,
                          policyDecision=bt.EmberJoinDecision.USE_PRECONFIGURED_KEY,
                          parentOfNewNodeId=device.parent)
        self.ncp.deliver(device.nwk, device.announce(),
                         kind=bt.EmberIncomingMessageType.INCOMING_BROADCAST)

    def send_command(self, device: VirtualDevice, endpoint: int, cluster: int,
                     command_id: int, **args: Any) -> None:
        """The device sends a cluster command to the coordinator (IAS zone status...)."""
        if device.ieee not in self.nv.children:
            raise RuntimeError(f"{device.ieee} has not joined")
        self.ncp.deliver(device.nwk, device.command(endpoint, cluster, command_id, **args))

    def leave(self, device: VirtualDevice) -> None:
        """The device leaves the network on its own (reset button, battery pulled out)."""
        self.ncp.leave(device)

    def report(self, device: VirtualDevice, endpoint: int, cluster: int,
               values: Mapping[int, Any]) -> None:
        """The device sends a ZCL attribute report to the coordinator."""
        if device.ieee not in self.nv.children:
            raise RuntimeError(f"{device.ieee} has not joined")
        if not self.ncp.network_up:
            raise RuntimeError("the network is not up: nothing can be received")
        self.ncp.deliver(device.nwk, device.report(endpoint, cluster, values))
