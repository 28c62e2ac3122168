"""The EZSP responder of the simulated stick: an NCP at protocol version 13.

Command ids and the layout of every request and response come from bellows' own
tables (``bellows.ezsp.v13.commands``), so a frame is built exactly as bellows parses
it. Each command the stick understands is one ``_cmd_<name>`` method returning the
response fields; a command without one is answered with ``invalidCommand`` (what
firmware does with an id it lacks) and logged as a warning naming the command, so a
gap is easy to find when bellows grows a new step.

State is split like a real stick's: :class:`NvState` is the NVRAM (network, keys,
joined children) and survives resets and reconnects; everything else (negotiated
version, configuration values, endpoints, policies, network up) is lost on reset.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bellows.types as bt
import zigpy.types as zt
import zigpy.zdo.types as zdo_t
from bellows.ezsp.v13 import EZSPv13

from tests.ezsp_stick.device import (
    DEFAULT_LQI,
    DEFAULT_RSSI,
    ZDO_PROFILE,
    Endpoint,
    Message,
    VirtualDevice,
    VirtualNode,
)

log = logging.getLogger("tests.ezsp_stick.ezsp")

COMMANDS: dict[str, tuple[int, Any, Any]] = EZSPv13.COMMANDS
COMMANDS_BY_ID: dict[int, tuple[str, Any, Any]] = {
    cmd_id: (name, tx, rx) for name, (cmd_id, tx, rx) in COMMANDS.items()}

PROTOCOL_VERSION = 13
STACK_TYPE = 2  # mesh stack
STACK_VERSION = 0x7410  # EmberZNet 7.4.1, which speaks EZSP 13
VERSION_INFO = (0, 7, 4, 1, 0)  # build, major, minor, patch, special

# EZSP frame control, low byte: response bit, and "asynchronous callback" for callbacks
FC_RESPONSE = 0x80
FC_CALLBACK = 0x90
FC_HIGH = 0x01  # frame format version 1 (EZSP 8 and later)

LQI = DEFAULT_LQI
RSSI = DEFAULT_RSSI
#: the strongest signal heard on a channel nobody uses (dBm): the receiver's noise floor
NOISE_FLOOR = -95


@dataclass
class NvState:
    """What a stick keeps in flash: it survives resets, reconnects and unplugging."""

    eui64: zt.EUI64
    formed: bool = False
    params: bt.EmberNetworkParameters | None = None
    network_key: bt.KeyData = field(default_factory=lambda: bt.KeyData(bytes(16)))
    network_key_seq: int = 0
    nwk_frame_counter: int = 0
    tc_link_key: bt.KeyData = field(default_factory=lambda: bt.KeyData(b"ZigBeeAlliance09"))
    hashed_tclk: bool = False
    children: dict[zt.EUI64, int] = field(default_factory=dict)  # joined devices: eui64 -> nwk

    def forget_network(self) -> None:
        self.formed = False
        self.params = None
        self.children.clear()
        self.nwk_frame_counter = 0


class Ncp:
    """EZSP request → response, plus callbacks, over one shared NVRAM.

    ``emit`` sends an EZSP frame to the host outside any command (a device reporting,
    a join); ``devices`` is every virtual device in radio range, by NWK address.
    """

    def __init__(self, nv: NvState, devices: dict[int, VirtualDevice],
                 emit: Callable[[bytes], None]) -> None:
        self.nv = nv
        self.devices = devices
        self.emit = emit
        self.commands: Counter[str] = Counter()
        self.unknown: Counter[str] = Counter()
        self._pending: list[bytes] | None = None
        self._last_seq = 0xFF
        #: strongest signal per channel (dBm) an energy scan hears; unset: NOISE_FLOOR
        self.energy: dict[int, int] = {}
        #: energy scans the host asked for: (channels, duration exponent)
        self.energy_scans: list[tuple[list[int], int]] = []
        self.reset()

    # -- state lost on reset ---------------------------------------------------------------

    def reset(self) -> None:
        """What an NCP reboot forgets."""
        self.network_up = False
        self.version_set = False
        self.config: dict[bt.EzspConfigId, int] = {
            bt.EzspConfigId.CONFIG_SECURITY_LEVEL: 5,
            bt.EzspConfigId.CONFIG_KEY_TABLE_SIZE: 4,
            bt.EzspConfigId.CONFIG_ADDRESS_TABLE_SIZE: 8,
            bt.EzspConfigId.CONFIG_MULTICAST_TABLE_SIZE: 8,
        }
        self.values: dict[bt.EzspValueId, bytes] = {}
        self.policies: dict[bt.EzspPolicyId, int] = {}
        self.multicast: dict[int, bt.EmberMulticastTableEntry] = {}
        self.address_table: dict[int, tuple[int, zt.EUI64, bool]] = {}
        self.coordinator = VirtualNode(self.nv.eui64, 0x0000,
                                       logical_type=zdo_t.LogicalType.Coordinator,
                                       mains_powered=True, manufacturer_code=0x1049)
        self.coordinator.topology = self
        self.permit_until = 0.0
        self.radio_power = 8
        self._last_seq = 0xFF

    @property
    def permit_joining(self) -> bool:
        """Whether the network is open for joining right now."""
        return self.network_up and time.monotonic() < self.permit_until

    # -- framing -----------------------------------------------------------------------------

    def handle(self, frame: bytes) -> list[bytes]:
        """One EZSP command frame in; its response and any callbacks it caused out."""
        if len(frame) == 4 and frame[2] == 0x00:
            # The first `version` after a reset always uses the legacy (EZSP 4) frame
            seq, cmd_id, data, legacy = frame[0], 0x0000, frame[3:], True
        elif len(frame) >= 5:
            if frame[2] != FC_HIGH:
                log.warning("ezsp: frame with unknown format byte 0x%02X: %s", frame[2],
                            frame.hex())
            seq, legacy = frame[0], False
            cmd_id, data = zt.uint16_t.deserialize(frame[3:])
        else:
            log.warning("ezsp: short frame %s ignored", frame.hex())
            return []
        self._last_seq = seq
        self._pending = []
        try:
            response = self._dispatch(seq, cmd_id, data, legacy)
            return [response, *self._pending]
        finally:
            self._pending = None

    def _frame(self, seq: int, fc: int, cmd_id: int, body: bytes, legacy: bool = False) -> bytes:
        if legacy:
            return bytes([seq, fc, cmd_id]) + body
        return bytes([seq, fc, FC_HIGH]) + zt.uint16_t(cmd_id).serialize() + body

    @staticmethod
    def _serialize(schema: Any, values: Any) -> bytes:
        if isinstance(schema, dict):
            if not isinstance(values, dict):
                raise TypeError(f"expected a dict of {list(schema)}, got {values!r}")
            missing = set(schema) - set(values)
            if missing:
                raise KeyError(f"response lacks {sorted(missing)}")
            return b"".join(typ(values[k]).serialize() for k, typ in schema.items())
        return bytes(values.serialize()) if values is not None else b""

    def _dispatch(self, seq: int, cmd_id: int, data: bytes, legacy: bool) -> bytes:
        entry = COMMANDS_BY_ID.get(cmd_id)
        if entry is None:
            self.unknown[f"0x{cmd_id:04X}"] += 1
            log.warning("ezsp: unknown frame id 0x%04X (not in bellows' EZSP v13 table): "
                        "answered invalidCommand", cmd_id)
            return self._invalid(seq, bt.EzspStatus.ERROR_INVALID_FRAME_ID, legacy)
        name, tx_schema, rx_schema = entry
        if isinstance(tx_schema, dict):
            params, rest = bt.deserialize_dict(data, tx_schema)
        else:
            params, rest = {}, data
        if rest:
            log.debug("ezsp: %s: %d trailing bytes", name, len(rest))
        self.commands[name] += 1
        if not self.version_set and name != "version":
            # After a reset the NCP takes nothing until the host has negotiated a version
            log.info("ezsp: %s before version after a reset: refused", name)
            return self._invalid(seq, bt.EzspStatus.ERROR_VERSION_NOT_SET, legacy)
        handler = getattr(self, f"_cmd_{name}", None)
        if handler is None:
            self.unknown[name] += 1
            log.warning("ezsp: no handler for command %s (0x%04X) %s: answered "
                        "invalidCommand; add Ncp._cmd_%s to support it", name, cmd_id,
                        params, name)
            return self._invalid(seq, bt.EzspStatus.ERROR_INVALID_FRAME_ID, legacy)
        log.debug("ezsp: <- %s %s", name, params)
        result = handler(**params)
        log.debug("ezsp: -> %s %s", name, result)
        return self._frame(seq, FC_RESPONSE, cmd_id, self._serialize(rx_schema, result), legacy)

    def _invalid(self, seq: int, status: bt.EzspStatus, legacy: bool) -> bytes:
        cmd_id, _, rx = COMMANDS["invalidCommand"]
        return self._frame(seq, FC_RESPONSE, cmd_id, self._serialize(rx, {"status": status}),
                           legacy)

    def callback(self, name: str, **values: Any) -> None:
        """Send a callback frame: after the current response, or right away."""
        cmd_id, _, rx = COMMANDS[name]
        # Callbacks reuse the sequence number of a command already answered, so bellows
        # never mistakes one for the response it is waiting for
        frame = self._frame(self._last_seq, FC_CALLBACK, cmd_id, self._serialize(rx, values))
        log.debug("ezsp: callback %s %s", name, values)
        if self._pending is not None:
            self._pending.append(frame)
        else:
            self.emit(frame)

    # -- radio traffic -----------------------------------------------------------------------

    def deliver(self, sender: int, message: Message,
                kind: bt.EmberIncomingMessageType = bt.EmberIncomingMessageType.INCOMING_UNICAST
                ) -> None:
        """A frame from a node in the network arrives at the coordinator."""
        aps, payload = message
        node = self.devices.get(sender)
        lqi, rssi = (node.lqi, node.rssi) if node is not None else (LQI, RSSI)
        self.callback("incomingMessageHandler", type=kind, apsFrame=aps, lastHopLqi=lqi,
                      lastHopRssi=rssi, sender=sender, bindingIndex=0xFF, addressIndex=0xFF,
                      messageContents=payload)

    # -- topology: what routers' neighbour and routing tables hold --------------------------

    def _members(self) -> list[VirtualNode]:
        """The coordinator and every joined device."""
        return [self.coordinator, *(d for d in self.devices.values()
                                    if d.ieee in self.nv.children)]

    def _path_up(self, node: VirtualNode) -> list[VirtualNode]:
        """``node``, its parent, ... up to the coordinator."""
        by_nwk = {m.nwk: m for m in self._members()}
        path = [node]
        while path[-1] is not self.coordinator and len(path) < 16:
            parent = by_nwk.get(path[-1].parent, self.coordinator)
            path.append(parent)
        return path

    def neighbors_of(self, node: VirtualNode) -> list[zdo_t.Neighbor]:
        """Children, parent and other routers in range, as Mgmt_Lqi_rsp lists them."""
        N = zdo_t.Neighbor
        epid = self.nv.params.extendedPanId if self.nv.params is not None else zt.EUI64(bytes(8))
        table: list[zdo_t.Neighbor] = []
        for other in self._members():
            if other is node:
                continue
            if other is not self.coordinator and other.parent == node.nwk:
                relationship, lqi = N.Relationship.Child, other.lqi
            elif node is not self.coordinator and node.parent == other.nwk:
                relationship, lqi = N.Relationship.Parent, node.lqi
            elif other.is_router and node.is_router:
                relationship, lqi = N.Relationship.Sibling, min(node.lqi, other.lqi)
            else:
                continue
            kind = (N.DeviceType.Coordinator if other is self.coordinator else
                    N.DeviceType.Router if other.is_router else N.DeviceType.EndDevice)
            table.append(N(extended_pan_id=epid, ieee=other.ieee, nwk=other.nwk,
                           device_type=kind,
                           rx_on_when_idle=(N.RxOnWhenIdle.On if other.mains_powered
                                            else N.RxOnWhenIdle.Off),
                           relationship=relationship, reserved1=0,
                           permit_joining=N.PermitJoins.NotAccepting, reserved2=0,
                           depth=len(self._path_up(other)) - 1, lqi=lqi))
        return table

    def routes_of(self, node: VirtualNode) -> list[zdo_t.Route]:
        """A route to every node more than one hop below ``node``, through its child."""
        routes: list[zdo_t.Route] = []
        for other in self._members():
            path = self._path_up(other)
            if node not in path or path.index(node) < 2:
                continue
            routes.append(zdo_t.Route(DstNWK=other.nwk, RouteStatus=zdo_t.RouteStatus.Active,
                                      MemoryConstrained=0, ManyToOne=0, RouteRecordRequired=0,
                                      Reserved=0, NextHop=path[path.index(node) - 1].nwk))
        return routes

    def _node(self, nwk: int) -> VirtualNode | None:
        if nwk == self.coordinator.nwk and self.nv.formed:
            return self.coordinator
        device = self.devices.get(nwk)
        if device is not None and device.ieee in self.nv.children:
            return device
        return None

    def _transmit(self, msg_type: bt.EmberOutgoingMessageType, dest: int,
                  aps: bt.EmberApsFrame, tag: int, payload: bytes,
                  targets: list[VirtualNode]) -> None:
        if not self.network_up:
            status = bt.EmberStatus.NETWORK_DOWN
        elif msg_type == bt.EmberOutgoingMessageType.OUTGOING_DIRECT and not targets:
            status = bt.EmberStatus.DELIVERY_FAILED
        else:
            status = bt.EmberStatus.SUCCESS
        self.callback("messageSentHandler", type=msg_type, indexOrDestination=dest,
                      apsFrame=aps, messageTag=tag, status=status, messageContents=payload)
        if status != bt.EmberStatus.SUCCESS:
            return
        for node in targets:
            for reply in node.handle(aps, payload):
                self.deliver(node.nwk, reply)
            if node.leaving and isinstance(node, VirtualDevice):
                self.leave(node)

    def leave(self, device: VirtualDevice) -> None:
        """The device left the network: the stick forgets it and tells the host."""
        device.leaving = False
        if self.nv.children.pop(device.ieee, None) is None:
            return
        self.callback("childJoinHandler", index=0, joining=False, childId=device.nwk,
                      childEui64=device.ieee, childType=bt.EmberNodeType.SLEEPY_END_DEVICE)
        self.callback("trustCenterJoinHandler", newNodeId=device.nwk, newNodeEui64=device.ieee,
                      status=bt.EmberDeviceUpdate.DEVICE_LEFT,
                      policyDecision=bt.EmberJoinDecision.NO_ACTION, parentOfNewNodeId=0x0000)

    # -- commands: version and identity --------------------------------------------------------

    def _cmd_version(self, desiredProtocolVersion: int) -> dict[str, Any]:
        self.version_set = True
        return {"protocolVersion": PROTOCOL_VERSION, "stackType": STACK_TYPE,
                "stackVersion": STACK_VERSION}

    def _cmd_customFrame(self, payload: bytes) -> dict[str, Any]:
        # No XNCP extensions in this firmware: bellows then uses plain EZSP for everything
        return {"status": bt.EmberStatus.INVALID_CALL, "reply": b""}

    def _cmd_getEui64(self) -> dict[str, Any]:
        return {"eui64": self.nv.eui64}

    def _cmd_getNodeId(self) -> dict[str, Any]:
        return {"nodeId": 0x0000 if self.nv.formed else 0xFFFE}

    def _cmd_getMfgToken(self, tokenId: bt.EzspMfgTokenId) -> dict[str, Any]:
        token: bytes = {
            bt.EzspMfgTokenId.MFG_STRING: b"Simulated".ljust(16, b"\xff"),
            bt.EzspMfgTokenId.MFG_BOARD_NAME: b"ezsp-stick".ljust(16, b"\xff"),
            bt.EzspMfgTokenId.MFG_CUSTOM_EUI_64: b"\xff" * 8,
        }.get(tokenId, b"\xff" * 8)
        return {"tokenData": token}

    def _cmd_getTokenData(self, token: int, index: int) -> Any:
        # No NV3 token access: bellows then skips its NVRAM repairs and tweaks
        rsp_type = COMMANDS["getTokenData"][2]
        return rsp_type(status=bt.EmberStatus.NOT_FOUND, value=b"")

    def _cmd_setTokenData(self, token: int, index: int, token_data: bytes) -> dict[str, Any]:
        return {"status": bt.EmberStatus.NOT_FOUND}

    def _cmd_nop(self) -> dict[str, Any]:
        return {}

    # -- commands: configuration ---------------------------------------------------------------

    def _cmd_getValue(self, valueId: bt.EzspValueId) -> dict[str, Any]:
        if valueId == bt.EzspValueId.VALUE_VERSION_INFO:
            build, major, minor, patch, special = VERSION_INFO
            value = zt.uint16_t(build).serialize() + bytes([major, minor, patch, special])
            return {"status": bt.EzspStatus.SUCCESS, "value": value}
        if valueId == bt.EzspValueId.VALUE_FREE_BUFFERS:
            return {"status": bt.EzspStatus.SUCCESS, "value": bytes([200])}
        if valueId in self.values:
            return {"status": bt.EzspStatus.SUCCESS, "value": self.values[valueId]}
        return {"status": bt.EzspStatus.ERROR_INVALID_ID, "value": b""}

    def _cmd_setValue(self, valueId: bt.EzspValueId, value: bytes) -> dict[str, Any]:
        self.values[valueId] = bytes(value)
        return {"status": bt.EzspStatus.SUCCESS}

    def _cmd_getConfigurationValue(self, configId: bt.EzspConfigId) -> dict[str, Any]:
        return {"status": bt.EzspStatus.SUCCESS, "value": self.config.get(configId, 0)}

    def _cmd_setConfigurationValue(self, configId: bt.EzspConfigId,
                                   value: int) -> dict[str, Any]:
        if self.network_up:
            # Firmware refuses configuration once the stack runs
            return {"status": bt.EzspStatus.ERROR_INVALID_CALL}
        self.config[configId] = value
        return {"status": bt.EzspStatus.SUCCESS}

    def _cmd_setPolicy(self, policyId: bt.EzspPolicyId, decisionId: int) -> dict[str, Any]:
        self.policies[policyId] = decisionId
        return {"status": bt.EzspStatus.SUCCESS}

    def _cmd_addEndpoint(self, endpoint: int, profileId: int, deviceId: int,
                         deviceVersion: int, inputClusterCount: int, outputClusterCount: int,
                         inputClusterList: list[int],
                         outputClusterList: list[int]) -> dict[str, Any]:
        if endpoint in self.coordinator.endpoints or self.network_up:
            return {"status": bt.EzspStatus.ERROR_INVALID_CALL}
        self.coordinator.endpoints[endpoint] = Endpoint(
            endpoint, profileId, deviceId, deviceVersion, list(inputClusterList),
            list(outputClusterList))
        return {"status": bt.EzspStatus.SUCCESS}

    def _cmd_setConcentrator(self, **_: Any) -> dict[str, Any]:
        return {"status": bt.EmberStatus.SUCCESS}

    def _cmd_setSourceRouteDiscoveryMode(self, mode: int) -> dict[str, Any]:
        return {"remainingTime": 0}

    def _cmd_setRadioPower(self, power: int) -> dict[str, Any]:
        self.radio_power = power
        return {"status": bt.EmberStatus.SUCCESS}

    def _cmd_setManufacturerCode(self, code: int) -> dict[str, Any]:
        return {}

    def _cmd_readCounters(self) -> dict[str, Any]:
        return {"values": [0] * len(bt.EmberCounterType)}

    def _cmd_readAndClearCounters(self) -> dict[str, Any]:
        return {"values": [0] * len(bt.EmberCounterType)}

    # -- commands: network -----------------------------------------------------------------------

    def _cmd_networkState(self) -> dict[str, Any]:
        status = (bt.EmberNetworkStatus.JOINED_NETWORK if self.network_up
                  else bt.EmberNetworkStatus.NO_NETWORK)
        return {"status": status}

    def _cmd_networkInit(self, networkInitBitmask: int) -> dict[str, Any]:
        if not self.nv.formed:
            return {"status": bt.EmberStatus.NOT_JOINED}
        if self.network_up:
            return {"status": bt.EmberStatus.INVALID_CALL}
        self.network_up = True
        self.callback("stackStatusHandler", status=bt.EmberStatus.NETWORK_UP)
        return {"status": bt.EmberStatus.SUCCESS}

    def _cmd_formNetwork(self, parameters: bt.EmberNetworkParameters) -> dict[str, Any]:
        if self.network_up:
            return {"status": bt.EmberStatus.INVALID_CALL}
        self.nv.formed = True
        self.nv.params = parameters.replace(nwkManagerId=0x0000)
        self.network_up = True
        self.callback("stackStatusHandler", status=bt.EmberStatus.NETWORK_UP)
        return {"status": bt.EmberStatus.SUCCESS}

    def _cmd_leaveNetwork(self) -> dict[str, Any]:
        if not self.network_up:
            return {"status": bt.EmberStatus.INVALID_CALL}
        self.network_up = False
        self.nv.forget_network()
        self.callback("stackStatusHandler", status=bt.EmberStatus.NETWORK_DOWN)
        return {"status": bt.EmberStatus.SUCCESS}

    def _cmd_getNetworkParameters(self) -> dict[str, Any]:
        if not self.nv.formed or self.nv.params is None:
            return {"status": bt.EmberStatus.NOT_JOINED,
                    "nodeType": bt.EmberNodeType.UNKNOWN_DEVICE,
                    "parameters": bt.EmberNetworkParameters(
                        extendedPanId=zt.EUI64(bytes(8)), panId=0xFFFF, radioTxPower=0,
                        radioChannel=0, joinMethod=0, nwkManagerId=0, nwkUpdateId=0,
                        channels=0)}
        params = self.nv.params.replace(radioTxPower=self.radio_power)
        return {"status": bt.EmberStatus.SUCCESS, "nodeType": bt.EmberNodeType.COORDINATOR,
                "parameters": params}

    def _cmd_startScan(self, scanType: bt.EzspNetworkScanType, channelMask: zt.Channels,
                       duration: int) -> dict[str, Any]:
        """Energy scans report the loudest signal per channel; active scans find nothing."""
        channels = list(channelMask)
        if scanType == bt.EzspNetworkScanType.ENERGY_SCAN:
            self.energy_scans.append((channels, duration))
            for channel in channels:
                self.callback("energyScanResultHandler", channel=channel,
                              maxRssiValue=self.energy.get(channel, NOISE_FLOOR))
        self.callback("scanCompleteHandler", channel=0xFF, status=bt.EmberStatus.SUCCESS)
        return {"status": bt.EmberStatus.SUCCESS}

    def _cmd_permitJoining(self, duration: int) -> dict[str, Any]:
        if not self.network_up:
            return {"status": bt.EmberStatus.NETWORK_DOWN}
        self.permit_until = time.monotonic() + duration if duration else 0.0
        return {"status": bt.EmberStatus.SUCCESS}

    def _cmd_tokenFactoryReset(self, excludeOutgoingFC: bool,
                               excludeBootCounter: bool) -> dict[str, Any]:
        self.nv.forget_network()
        return {}

    def _cmd_clearKeyTable(self) -> dict[str, Any]:
        return {"status": bt.EmberStatus.SUCCESS}

    def _cmd_gpSinkTableClearAll(self) -> dict[str, Any]:
        return {}

    def _cmd_getChildData(self, index: int) -> dict[str, Any]:
        children = list(self.nv.children.items())
        if index >= len(children):
            return {"status": bt.EmberStatus.NOT_JOINED,
                    "child_data": bt.EmberChildDataV10(
                        eui64=zt.EUI64(bytes(8)), type=bt.EmberNodeType.UNKNOWN_DEVICE,
                        id=0xFFFF, phy=0, power=0, timeout=0, timeout_remaining=0)}
        eui64, nwk = children[index]
        return {"status": bt.EmberStatus.SUCCESS,
                "child_data": bt.EmberChildDataV10(
                    eui64=eui64, type=bt.EmberNodeType.SLEEPY_END_DEVICE, id=nwk, phy=0,
                    power=0, timeout=8, timeout_remaining=0)}

    def _cmd_getMulticastTableEntry(self, index: int) -> dict[str, Any]:
        entry = self.multicast.get(index) or bt.EmberMulticastTableEntry(
            multicastId=0, endpoint=0, networkIndex=0)
        return {"status": bt.EmberStatus.SUCCESS, "value": entry}

    def _cmd_setMulticastTableEntry(self, index: int,
                                    value: bt.EmberMulticastTableEntry) -> dict[str, Any]:
        self.multicast[index] = value
        return {"status": bt.EmberStatus.SUCCESS}

    # -- commands: security ------------------------------------------------------------------------

    def _cmd_setInitialSecurityState(self, state: bt.EmberInitialSecurityState
                                     ) -> dict[str, Any]:
        if self.network_up:
            return {"status": bt.EmberStatus.INVALID_CALL}
        self.nv.network_key = state.networkKey
        self.nv.network_key_seq = state.networkKeySequenceNumber
        self.nv.tc_link_key = state.preconfiguredKey
        self.nv.hashed_tclk = (bt.EmberInitialSecurityBitmask.TRUST_CENTER_USES_HASHED_LINK_KEY
                               in state.bitmask)
        return {"status": bt.EmberStatus.SUCCESS}

    def _cmd_getCurrentSecurityState(self) -> dict[str, Any]:
        bitmask = (bt.EmberCurrentSecurityBitmask.GLOBAL_LINK_KEY
                   | bt.EmberCurrentSecurityBitmask.HAVE_TRUST_CENTER_LINK_KEY)
        if self.nv.hashed_tclk:
            bitmask |= bt.EmberCurrentSecurityBitmask.TRUST_CENTER_USES_HASHED_LINK_KEY
        return {"status": bt.EmberStatus.SUCCESS,
                "state": bt.EmberCurrentSecurityState(bitmask=bitmask,
                                                      trustCenterLongAddress=self.nv.eui64)}

    def _cmd_exportKey(self, context: bt.SecurityManagerContextV13) -> dict[str, Any]:
        if context.core_key_type == bt.SecurityManagerKeyType.NETWORK:
            return {"key": self.nv.network_key, "status": bt.sl_Status.OK}
        if context.core_key_type == bt.SecurityManagerKeyType.TC_LINK:
            return {"key": self.nv.tc_link_key, "status": bt.sl_Status.OK}
        return {"key": bt.KeyData(bytes(16)), "status": bt.sl_Status.NOT_FOUND}

    def _cmd_getNetworkKeyInfo(self) -> dict[str, Any]:
        return {"status": bt.sl_Status.OK,
                "network_key_info": bt.SecurityManagerNetworkKeyInfo(
                    network_key_set=self.nv.formed, alternate_network_key_set=False,
                    network_key_sequence_number=self.nv.network_key_seq,
                    alt_network_key_sequence_number=0,
                    network_key_frame_counter=self.nv.nwk_frame_counter)}

    def _cmd_exportLinkKeyByIndex(self, index: int) -> dict[str, Any]:
        return {"eui64": zt.EUI64(bytes(8)), "plaintext_key": bt.KeyData(bytes(16)),
                "key_data": bt.SecurityManagerAPSKeyMetadata(
                    bitmask=0, outgoing_frame_counter=0, incoming_frame_counter=0,
                    ttl_in_seconds=0),
                "status": bt.sl_Status.NOT_FOUND}

    def _cmd_importLinkKey(self, index: int, address: zt.EUI64,
                           key: bt.KeyData) -> dict[str, Any]:
        return {"status": bt.sl_Status.OK}

    def _cmd_importTransientKey(self, **_: Any) -> dict[str, Any]:
        return {"status": bt.sl_Status.OK}

    def _cmd_findKeyTableEntry(self, address: zt.EUI64, linkKey: bool) -> dict[str, Any]:
        return {"index": 0xFF}

    def _cmd_eraseKeyTableEntry(self, index: int) -> dict[str, Any]:
        return {"status": bt.EmberStatus.SUCCESS}

    # -- commands: addresses ---------------------------------------------------------------------

    def _cmd_lookupNodeIdByEui64(self, eui64: zt.EUI64) -> dict[str, Any]:
        return {"nodeId": self.nv.children.get(eui64, 0xFFFF)}

    def _cmd_lookupEui64ByNodeId(self, nodeId: int) -> dict[str, Any]:
        for eui64, nwk in self.nv.children.items():
            if nwk == nodeId:
                return {"status": bt.EmberStatus.SUCCESS, "eui64": eui64}
        return {"status": bt.EmberStatus.ERR_FATAL, "eui64": zt.EUI64(bytes(8))}

    def _cmd_getExtendedTimeout(self, remoteEui64: zt.EUI64) -> dict[str, Any]:
        return {"extendedTimeout": False}

    def _cmd_setExtendedTimeout(self, remoteEui64: zt.EUI64,
                                extendedTimeout: bool) -> dict[str, Any]:
        return {}

    def _cmd_replaceAddressTableEntry(self, addressTableIndex: int, newEui64: zt.EUI64,
                                      newId: int, newExtendedTimeout: bool) -> dict[str, Any]:
        old = self.address_table.get(addressTableIndex, (0xFFFF, zt.EUI64(bytes(8)), False))
        self.address_table[addressTableIndex] = (newId, newEui64, newExtendedTimeout)
        return {"status": bt.EmberStatus.SUCCESS, "oldEui64": old[1], "oldId": old[0],
                "oldExtendedTimeout": old[2]}

    def _cmd_getAddressTableRemoteNodeId(self, addressTableIndex: int) -> dict[str, Any]:
        # 0xFFFF marks an unused entry (EmberDistinguishedNodeId.TABLE_ENTRY_UNUSED)
        entry = self.address_table.get(addressTableIndex)
        return {"nodeId": entry[0] if entry else 0xFFFF}

    def _cmd_getAddressTableRemoteEui64(self, addressTableIndex: int) -> dict[str, Any]:
        entry = self.address_table.get(addressTableIndex)
        return {"eui64": entry[1] if entry else zt.EUI64(bytes(8))}

    def _cmd_setSourceRoute(self, destination: int, relayList: list[int]) -> dict[str, Any]:
        return {"status": bt.EmberStatus.SUCCESS}

    # -- commands: messaging -----------------------------------------------------------------------

    def _cmd_sendUnicast(self, type: bt.EmberOutgoingMessageType, indexOrDestination: int,
                         apsFrame: bt.EmberApsFrame, messageTag: int,
                         messageContents: bytes) -> dict[str, Any]:
        node = self._node(indexOrDestination)
        self._transmit(type, indexOrDestination, apsFrame, messageTag, messageContents,
                       [node] if node is not None else [])
        return {"status": bt.EmberStatus.SUCCESS, "sequence": apsFrame.sequence}

    def _cmd_sendBroadcast(self, destination: int, apsFrame: bt.EmberApsFrame, radius: int,
                           messageTag: int, messageContents: bytes) -> dict[str, Any]:
        if (apsFrame.profileId == ZDO_PROFILE
                and apsFrame.clusterId == zdo_t.ZDOCmd.Mgmt_Permit_Joining_req
                and len(messageContents) >= 2 and self.network_up):
            # The coordinator is a router too: a network-wide permit opens it as well
            duration = messageContents[1]
            self.permit_until = time.monotonic() + duration if duration else 0.0
        targets: list[VirtualNode] = [d for d in self.devices.values()
                                      if d.ieee in self.nv.children]
        self._transmit(bt.EmberOutgoingMessageType.OUTGOING_BROADCAST, destination, apsFrame,
                       messageTag, messageContents, targets)
        return {"status": bt.EmberStatus.SUCCESS, "sequence": apsFrame.sequence}

    def _cmd_sendMulticast(self, apsFrame: bt.EmberApsFrame, hops: int, nonmemberRadius: int,
                           messageTag: int, messageContents: bytes) -> dict[str, Any]:
        self._transmit(bt.EmberOutgoingMessageType.OUTGOING_MULTICAST, apsFrame.groupId,
                       apsFrame, messageTag, messageContents, [])
        return {"status": bt.EmberStatus.SUCCESS, "sequence": apsFrame.sequence}
