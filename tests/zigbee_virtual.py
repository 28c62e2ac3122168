"""A virtual Zigbee radio: stands in for a coordinator stick, which cannot run here.

``VirtualRadio`` is a real zigpy ``ControllerApplication`` subclass. Only the radio is
simulated (what a radio library does below zigpy: keep network settings, send packets,
hand received packets to ``packet_received``); everything above it is real zigpy code:
joins, the interview, the database, ZCL parsing, attribute report events, binding and
reporting requests, commands and their responses.

Virtual devices (``VirtualDevice``) live on a ``VirtualNetwork`` (the air, plus the
stick's non-volatile memory), which outlives radio instances so a restarted adapter finds
its network and devices again. They answer ZDO (node/active-endpoint/simple descriptors,
bind, leave) and ZCL (read/write attributes, configure reporting, cluster commands with
default responses) from their attribute tables, and can send reports, IAS zone status
changes and enroll requests on their own. A device can be put to sleep (packets are
accepted but never answered, as for a sleepy end device) or made unreachable.

Address a network with the device path ``virtual://<name>`` and the radio type
``tests.zigbee_virtual:VirtualRadio``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import zigpy.application
import zigpy.exceptions
import zigpy.state
import zigpy.types as t
import zigpy.zcl
import zigpy.zdo.types as zdo_t
from zigpy.endpoint import Endpoint
from zigpy.endpoint import Status as EndpointStatus
from zigpy.zcl import foundation

RADIO_TYPE = "tests.zigbee_virtual:VirtualRadio"
HA_PROFILE = 0x0104

#: every network by name: the stick's memory survives the radio objects using it
NETWORKS: dict[str, VirtualNetwork] = {}


def network(name: str) -> VirtualNetwork:
    """The virtual network ``virtual://name`` (created empty on first use)."""
    if name not in NETWORKS:
        NETWORKS[name] = VirtualNetwork(name)
    return NETWORKS[name]


@dataclass
class VirtualEndpoint:
    """One endpoint: its descriptor and, per server cluster, attribute id → value."""

    id: int
    device_type: int
    in_clusters: dict[int, dict[int, Any]]
    out_clusters: list[int] = field(default_factory=list)
    profile: int = HA_PROFILE
    #: attributes of client (output) clusters, e.g. the OTA client's firmware version
    client_attrs: dict[int, dict[int, Any]] = field(
        default_factory=lambda: {0x0019: {0x0002: 0x00000101}})


class VirtualDevice:
    """A Zigbee device that answers ZDO and ZCL from its attribute tables."""

    def __init__(self, ieee: str, endpoints: list[VirtualEndpoint], *, model: str,
                 manufacturer: str, mains: bool = True) -> None:
        self.ieee = t.EUI64.convert(ieee)
        self.nwk = t.NWK(0xFFFE)
        self.endpoints = {ep.id: ep for ep in endpoints}
        self.mains = mains
        self.model = model
        self.manufacturer = manufacturer
        for ep in endpoints:
            basic = ep.in_clusters.get(0x0000)
            if basic is not None:
                basic.setdefault(0x0004, manufacturer)
                basic.setdefault(0x0005, model)
        #: False: asleep, packets are taken but never answered
        self.awake = True
        #: False: out of range, sending to it fails
        self.reachable = True
        self.network: VirtualNetwork | None = None
        self.received: list[tuple[int, int, str, Any]] = []  # (cluster, cmd id, name, args)
        self.bindings: list[tuple[int, int]] = []  # (endpoint, cluster)
        self.reporting: dict[tuple[int, int, int], tuple[int, int]] = {}
        #: attribute writes refused with a status: (cluster, attribute) → status
        self.refuse_writes: dict[tuple[int, int], foundation.Status] = {}
        self.left = False
        #: ZDO/ZCL requests left unanswered by name (e.g. "Bind_req"), as by a device
        #: that went back to sleep mid-configuration
        self.deaf_to: set[str] = set()
        self._tsn = itertools.count(1)

    def node_descriptor(self) -> zdo_t.NodeDescriptor:
        flags = zdo_t.NodeDescriptor.MACCapabilityFlags.AllocateAddress
        if self.mains:
            flags |= (zdo_t.NodeDescriptor.MACCapabilityFlags.MainsPowered
                      | zdo_t.NodeDescriptor.MACCapabilityFlags.RxOnWhenIdle
                      | zdo_t.NodeDescriptor.MACCapabilityFlags.FullFunctionDevice)
        return zdo_t.NodeDescriptor(
            logical_type=(zdo_t.LogicalType.Router if self.mains
                          else zdo_t.LogicalType.EndDevice),
            complex_descriptor_available=0, user_descriptor_available=0, reserved=0,
            aps_flags=0, frequency_band=zdo_t.NodeDescriptor.FrequencyBand.Freq2400MHz,
            mac_capability_flags=flags, manufacturer_code=0x1234, maximum_buffer_size=82,
            maximum_incoming_transfer_size=82, server_mask=0,
            maximum_outgoing_transfer_size=82, descriptor_capability_field=0)

    # -- what the device sends on its own ----------------------------------------------------

    def _send(self, ep: int, cluster: int, data: bytes, profile: int = HA_PROFILE) -> None:
        assert self.network is not None
        self.network.deliver(self, ep, cluster, data, profile)

    def report(self, cluster: int, values: dict[int, Any], ep: int | None = None) -> None:
        """Send a ZCL Report Attributes frame (values are stored first)."""
        ep = ep if ep is not None else self._ep_with(cluster)
        attrs = self.endpoints[ep].in_clusters[cluster]
        records = []
        for attr_id, value in values.items():
            attrs[attr_id] = value
            records.append(foundation.Attribute(attr_id, _type_value(cluster, attr_id, value)))
        hdr = foundation.ZCLHeader.general(next(self._tsn) % 256,
                                           foundation.GeneralCommand.Report_Attributes,
                                           direction=foundation.Direction.Server_to_Client)
        hdr.frame_control = hdr.frame_control.replace(disable_default_response=True)
        payload = t.List[foundation.Attribute](records).serialize()
        self._send(ep, cluster, hdr.serialize() + payload)

    def report_raw(self, cluster: int, payload: bytes, ep: int | None = None) -> None:
        """Send a Report Attributes frame with an arbitrary (possibly broken) payload."""
        ep = ep if ep is not None else self._ep_with(cluster)
        hdr = foundation.ZCLHeader.general(next(self._tsn) % 256,
                                           foundation.GeneralCommand.Report_Attributes,
                                           direction=foundation.Direction.Server_to_Client)
        hdr.frame_control = hdr.frame_control.replace(disable_default_response=True)
        self._send(ep, cluster, hdr.serialize() + payload)

    def zone_status_change(self, status: int, ep: int | None = None) -> None:
        """IAS zone status change notification (a cluster command, not a report)."""
        ep = ep if ep is not None else self._ep_with(0x0500)
        self.endpoints[ep].in_clusters[0x0500][0x0002] = status
        self._cluster_command(ep, 0x0500, 0x00,
                              t.bitmap16(status).serialize() + t.bitmap8(0).serialize()
                              + t.uint8_t(0).serialize() + t.uint16_t(0).serialize())

    def enroll_request(self, ep: int | None = None) -> None:
        """IAS zone enroll request."""
        ep = ep if ep is not None else self._ep_with(0x0500)
        zone_type = self.endpoints[ep].in_clusters[0x0500].get(0x0001, 0)
        self._cluster_command(ep, 0x0500, 0x01,
                              t.uint16_t(zone_type).serialize() + t.uint16_t(0).serialize())

    def _cluster_command(self, ep: int, cluster: int, cmd: int, payload: bytes) -> None:
        hdr = foundation.ZCLHeader.cluster(next(self._tsn) % 256, cmd,
                                           direction=foundation.Direction.Server_to_Client)
        hdr.frame_control = hdr.frame_control.replace(disable_default_response=True)
        self._send(ep, cluster, hdr.serialize() + payload)

    def announce(self) -> None:
        """ZDO Device_annce, as a device sends after (re)joining."""
        data = (t.uint8_t(next(self._tsn) % 256).serialize() + self.nwk.serialize()
                + self.ieee.serialize() + t.uint8_t(0x8E if self.mains else 0x80).serialize())
        self._send(0, zdo_t.ZDOCmd.Device_annce, data, profile=0)

    def _ep_with(self, cluster: int) -> int:
        for ep_id, ep in sorted(self.endpoints.items()):
            if cluster in ep.in_clusters:
                return ep_id
        raise KeyError(f"{self.model} has no cluster 0x{cluster:04X}")

    # -- answering the coordinator ---------------------------------------------------------

    def handle(self, packet: t.ZigbeePacket) -> None:
        """A packet from the coordinator reached this device."""
        data = packet.data.serialize()
        if packet.dst_ep == 0:
            self._handle_zdo(packet.cluster_id, data)
        else:
            self._handle_zcl(packet.dst_ep, packet.cluster_id, data)

    def _zdo_reply(self, tsn: int, command: zdo_t.ZDOCmd, *args: Any) -> None:
        _, schema = zdo_t.CLUSTERS[command]
        self._send(0, command, t.uint8_t(tsn).serialize() + t.serialize(args, schema), profile=0)

    def _handle_zdo(self, cluster: int, data: bytes) -> None:
        tsn = data[0]
        cmd = zdo_t.ZDOCmd(cluster)
        if cmd.name in self.deaf_to:
            return
        _, schema = zdo_t.CLUSTERS[cmd]
        args, _ = t.deserialize(data[1:], schema)
        ok = zdo_t.Status.SUCCESS
        if cmd == zdo_t.ZDOCmd.Node_Desc_req:
            self._zdo_reply(tsn, zdo_t.ZDOCmd.Node_Desc_rsp, ok, self.nwk, self.node_descriptor())
        elif cmd == zdo_t.ZDOCmd.Active_EP_req:
            self._zdo_reply(tsn, zdo_t.ZDOCmd.Active_EP_rsp, ok, self.nwk,
                            t.LVList[t.uint8_t, t.uint8_t](sorted(self.endpoints)))
        elif cmd == zdo_t.ZDOCmd.Simple_Desc_req:
            ep = self.endpoints.get(args[1])
            if ep is None:
                self._zdo_reply(tsn, zdo_t.ZDOCmd.Simple_Desc_rsp, zdo_t.Status.NOT_ACTIVE,
                                self.nwk, None)
                return
            sd = zdo_t.SizePrefixedSimpleDescriptor(
                endpoint=ep.id, profile=ep.profile, device_type=ep.device_type, device_version=1,
                input_clusters=t.LVList[t.uint16_t, t.uint8_t](sorted(ep.in_clusters)),
                output_clusters=t.LVList[t.uint16_t, t.uint8_t](ep.out_clusters))
            self._zdo_reply(tsn, zdo_t.ZDOCmd.Simple_Desc_rsp, ok, self.nwk, sd)
        elif cmd == zdo_t.ZDOCmd.Bind_req:
            self.bindings.append((int(args[1]), int(args[2])))
            self._zdo_reply(tsn, zdo_t.ZDOCmd.Bind_rsp, ok)
        elif cmd == zdo_t.ZDOCmd.Mgmt_Leave_req:
            self._zdo_reply(tsn, zdo_t.ZDOCmd.Mgmt_Leave_rsp, ok)
            self.left = True
            assert self.network is not None
            self.network.leave(self)
        elif cmd == zdo_t.ZDOCmd.Mgmt_Permit_Joining_req:
            self._zdo_reply(tsn, zdo_t.ZDOCmd.Mgmt_Permit_Joining_rsp, ok)

    def _handle_zcl(self, ep_id: int, cluster_id: int, data: bytes) -> None:
        hdr, payload = foundation.ZCLHeader.deserialize(data)
        ep = self.endpoints.get(ep_id)
        if ep is None:
            return
        if hdr.direction == foundation.Direction.Server_to_Client:
            # to one of our client clusters (OTA): answer reads, take notifications silently
            if cluster_id in ep.out_clusters and hdr.frame_control.is_general \
                    and hdr.command_id == foundation.GeneralCommand.Read_Attributes:
                args, _ = foundation.GENERAL_COMMANDS[hdr.command_id].schema.deserialize(payload)
                self._read_reply(ep_id, cluster_id, hdr.tsn, args.attribute_ids,
                                 ep.client_attrs.get(cluster_id, {}),
                                 foundation.Direction.Client_to_Server)
            return
        if cluster_id not in ep.in_clusters:
            return
        attrs = ep.in_clusters[cluster_id]
        cls = zigpy.zcl.Cluster._registry.get(cluster_id)
        reply_dir = foundation.Direction.Server_to_Client
        if hdr.frame_control.is_general:
            if foundation.GeneralCommand(hdr.command_id).name in self.deaf_to:
                return
            schema = foundation.GENERAL_COMMANDS[hdr.command_id].schema
            args, _ = schema.deserialize(payload)
            self.received.append((cluster_id, hdr.command_id, "general", args))
            if hdr.command_id == foundation.GeneralCommand.Read_Attributes:
                self._read_reply(ep_id, cluster_id, hdr.tsn, args.attribute_ids, attrs,
                                 reply_dir)
            elif hdr.command_id == foundation.GeneralCommand.Write_Attributes:
                status_records = []
                for attr in args.attributes:
                    refused = self.refuse_writes.get((cluster_id, int(attr.attrid)))
                    if refused is not None:
                        status_records.append(
                            foundation.WriteAttributesStatusRecord(refused, attr.attrid))
                        continue
                    attrs[int(attr.attrid)] = attr.value.value
                    status_records.append(
                        foundation.WriteAttributesStatusRecord(foundation.Status.SUCCESS))
                self._zcl_reply(ep_id, cluster_id, hdr.tsn,
                                foundation.GeneralCommand.Write_Attributes_rsp,
                                foundation.WriteAttributesResponse(status_records).serialize())
            elif hdr.command_id == foundation.GeneralCommand.Configure_Reporting:
                records = []
                for cfg in args.config_records:
                    self.reporting[(ep_id, cluster_id, int(cfg.attrid))] = (
                        int(cfg.min_interval), int(cfg.max_interval))
                    records.append(foundation.ConfigureReportingResponseRecord(
                        foundation.Status.SUCCESS, foundation.ReportingDirection.SendReports,
                        cfg.attrid))
                self._zcl_reply(ep_id, cluster_id, hdr.tsn,
                                foundation.GeneralCommand.Configure_Reporting_rsp,
                                foundation.ConfigureReportingResponse(records).serialize())
            return
        # cluster-specific command
        name = "?"
        args = None
        if cls is not None and hdr.command_id in cls.server_commands:
            command = cls.server_commands[hdr.command_id]
            name = command.name
            args, _ = command.schema.deserialize(payload)
        self.received.append((cluster_id, hdr.command_id, name, args))
        changed = self._apply(cluster_id, name, args, attrs)
        if not hdr.frame_control.disable_default_response:
            hdr_out = foundation.ZCLHeader.general(hdr.tsn,
                                                   foundation.GeneralCommand.Default_Response,
                                                   direction=reply_dir)
            hdr_out.frame_control = hdr_out.frame_control.replace(disable_default_response=True)
            body = foundation.DefaultResponse(command_id=hdr.command_id,
                                              status=foundation.Status.SUCCESS).serialize()
            self._send(ep_id, cluster_id, hdr_out.serialize() + body)
        if changed and (ep_id, cluster_id, 0x0000) in self.reporting:
            # a configured device reports the state change it just made
            self.report(cluster_id, {0x0000: attrs[0x0000]}, ep_id)

    def _read_reply(self, ep_id: int, cluster_id: int, tsn: int, attribute_ids: list[int],
                    attrs: dict[int, Any], direction: foundation.Direction) -> None:
        records = []
        for attr_id in attribute_ids:
            if attr_id in attrs:
                records.append(foundation.ReadAttributeRecord(
                    attr_id, foundation.Status.SUCCESS,
                    _type_value(cluster_id, attr_id, attrs[attr_id])))
            else:
                records.append(foundation.ReadAttributeRecord(
                    attr_id, foundation.Status.UNSUPPORTED_ATTRIBUTE))
        self._zcl_reply(ep_id, cluster_id, tsn, foundation.GeneralCommand.Read_Attributes_rsp,
                        t.List[foundation.ReadAttributeRecord](records).serialize(), direction)

    def _apply(self, cluster: int, name: str, args: Any, attrs: dict[int, Any]) -> bool:
        if cluster == 0x0006 and name in ("on", "off", "toggle"):
            before = attrs.get(0x0000)
            attrs[0x0000] = {"on": True, "off": False}.get(name, not before)
            return bool(before != attrs[0x0000])
        if cluster == 0x0008 and name in ("move_to_level", "move_to_level_with_on_off"):
            before = attrs.get(0x0000)
            attrs[0x0000] = int(args.level)
            return bool(before != attrs[0x0000])
        return False

    def _zcl_reply(self, ep: int, cluster: int, tsn: int, command: int, payload: bytes,
                   direction: foundation.Direction = foundation.Direction.Server_to_Client
                   ) -> None:
        hdr = foundation.ZCLHeader.general(tsn, command, direction=direction)
        hdr.frame_control = hdr.frame_control.replace(disable_default_response=True)
        self._send(ep, cluster, hdr.serialize() + payload)


def _type_value(cluster: int, attr_id: int, value: Any) -> foundation.TypeValue:
    cls = zigpy.zcl.Cluster._registry[cluster]
    attr_def = cls.attributes[attr_id]
    zcl_type = (attr_def.zcl_type if attr_def.zcl_type is not None
                else foundation.DataType.from_python_type(attr_def.type).type_id)
    return foundation.TypeValue(type=zcl_type, value=attr_def.type(value))


class VirtualNetwork:
    """The air between the stick and the devices, and the stick's own memory."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ieee = t.EUI64.convert("00:12:4b:00:ca:fe:00:01")
        self.network_info: zigpy.state.NetworkInfo | None = None
        self.node_info: zigpy.state.NodeInfo | None = None
        self.devices: dict[t.EUI64, VirtualDevice] = {}
        self.permit_until = 0.0
        self.app: VirtualRadio | None = None
        #: True: the stick is unplugged (connect fails, sends fail)
        self.unplugged = False
        self.connects = 0
        self._nwk = itertools.count(0x1001)

    # -- for tests ---------------------------------------------------------------------------

    @property
    def permit_open(self) -> bool:
        return time.monotonic() < self.permit_until

    def join(self, device: VirtualDevice) -> bool:
        """A device tries to join: it gets in only while joining is permitted."""
        if not self.permit_open or self.app is None:
            return False
        device.network = self
        device.left = False
        if device.nwk == 0xFFFE:
            device.nwk = t.NWK(next(self._nwk))
        self.devices[device.ieee] = device
        # what the stack reports on a trust-center join, then the device's own announce
        self.app.handle_join(nwk=device.nwk, ieee=device.ieee, parent_nwk=t.NWK(0x0000))
        return True

    def unplug(self) -> None:
        """Pull the stick: the serial link drops under the radio library."""
        self.unplugged = True
        app = self.app
        if app is not None:
            app.connection_lost(ConnectionError("virtual stick unplugged"))

    def plug_in(self) -> None:
        self.unplugged = False

    def leave(self, device: VirtualDevice) -> None:
        app = self.app
        self.devices.pop(device.ieee, None)
        if app is not None:
            loop = asyncio.get_running_loop()
            loop.call_soon(app.handle_leave, device.nwk, device.ieee)

    # -- the radio side -------------------------------------------------------------------

    def deliver(self, device: VirtualDevice, ep: int, cluster: int, data: bytes,
                profile: int) -> None:
        """A device transmits: the radio hands the frame to zigpy (on the next loop turn)."""
        app = self.app
        if app is None or self.unplugged:
            return
        packet = t.ZigbeePacket(
            src=t.AddrModeAddress(addr_mode=t.AddrMode.NWK, address=device.nwk),
            src_ep=ep,
            dst=t.AddrModeAddress(addr_mode=t.AddrMode.NWK, address=t.NWK(0x0000)),
            dst_ep=0 if profile == 0 else 1,
            tsn=data[0] if profile == 0 else foundation.ZCLHeader.deserialize(data)[0].tsn,
            profile_id=profile, cluster_id=cluster, data=t.SerializableBytes(data),
            lqi=200, rssi=-55)
        asyncio.get_running_loop().call_soon(app.packet_received, packet)


class VirtualRadio(zigpy.application.ControllerApplication):
    """A zigpy radio library whose "stick" is a :class:`VirtualNetwork`."""

    _watchdog_period = 3600

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        path = str(self.config["device"]["path"])
        if not path.startswith("virtual://"):
            raise ValueError(f"VirtualRadio needs a virtual:// path, not {path!r}")
        self.net = network(path[len("virtual://"):])

    async def connect(self) -> None:
        if self.net.unplugged:
            raise ConnectionError(f"{self.net.name}: no such device (stick unplugged)")
        self.net.connects += 1
        self.net.app = self

    async def disconnect(self) -> None:
        if self.net.app is self:
            self.net.app = None

    async def _watchdog_feed(self) -> None:
        if self.net.unplugged:
            raise ConnectionError("virtual stick does not answer")

    async def start_network(self) -> None:
        await self.load_network_info(load_devices=False)
        assert self.state.node_info is not None
        coordinator = self.add_device(self.state.node_info.ieee, self.state.node_info.nwk)
        coordinator.node_desc = zdo_t.NodeDescriptor(
            logical_type=zdo_t.LogicalType.Coordinator, complex_descriptor_available=0,
            user_descriptor_available=0, reserved=0, aps_flags=0,
            frequency_band=zdo_t.NodeDescriptor.FrequencyBand.Freq2400MHz,
            mac_capability_flags=zdo_t.NodeDescriptor.MACCapabilityFlags(0x8E),
            manufacturer_code=0x1234, maximum_buffer_size=82,
            maximum_incoming_transfer_size=82, server_mask=0,
            maximum_outgoing_transfer_size=82, descriptor_capability_field=0)
        ep = Endpoint(coordinator, 1)
        ep.profile_id = HA_PROFILE
        ep.device_type = 0x0400
        ep.status = EndpointStatus.ZDO_INIT
        ep.add_input_cluster(0x0000)
        coordinator.endpoints[1] = ep
        coordinator.model = "Virtual coordinator"
        coordinator.manufacturer = "gateway tests"

    async def load_network_info(self, *, load_devices: bool = False) -> None:
        if self.net.network_info is None or self.net.node_info is None:
            raise zigpy.exceptions.NetworkNotFormed("virtual stick has no network")
        info = self.net.network_info
        if load_devices:
            info = info.replace(nwk_addresses={ieee: dev.nwk
                                               for ieee, dev in self.net.devices.items()},
                                children=[ieee for ieee, dev in self.net.devices.items()
                                          if not dev.mains])
        self.state.network_info = info
        self.state.node_info = self.net.node_info

    async def write_network_info(self, *, network_info: zigpy.state.NetworkInfo,
                                 node_info: zigpy.state.NodeInfo) -> None:
        if node_info.ieee == t.EUI64.UNKNOWN:
            node_info = node_info.replace(ieee=self.net.ieee)
        # a real stick gives back typed values, whatever it was written with
        node_info = node_info.replace(nwk=t.NWK(node_info.nwk))
        network_info = network_info.replace(
            pan_id=t.PanId(network_info.pan_id), nwk_manager_id=t.NWK(network_info.nwk_manager_id),
            nwk_update_id=t.uint8_t(network_info.nwk_update_id),
            channel=t.uint8_t(network_info.channel))
        # the stick keeps its own frame counter going from what it was given
        self.net.network_info = network_info.replace(source="virtual radio",
                                                     metadata={"virtual": {}})
        self.net.node_info = node_info

    async def reset_network_info(self) -> None:
        self.net.network_info = None
        self.net.node_info = None

    async def force_remove(self, dev: Any) -> None:
        return None

    async def add_endpoint(self, descriptor: zdo_t.SimpleDescriptor) -> None:
        return None

    async def energy_scan(self, channels: t.Channels, duration_exp: int,
                          count: int) -> dict[int, float]:
        # a quiet room: every channel equally free
        return {c: 10.0 for c in channels}

    async def permit_ncp(self, time_s: int = 60) -> None:
        self.net.permit_until = time.monotonic() + time_s

    async def permit_with_link_key(self, node: t.EUI64, link_key: t.KeyData,
                                   time_s: int = 60) -> None:
        await self.permit_ncp(time_s)

    async def send_packet(self, packet: t.ZigbeePacket) -> None:
        if self.net.unplugged:
            raise zigpy.exceptions.DeliveryError("virtual stick unplugged")
        assert packet.dst is not None
        if packet.dst.addr_mode in (t.AddrMode.Broadcast, t.AddrMode.Group):
            return  # permit-join broadcasts etc.: nothing to answer
        if packet.dst.addr_mode == t.AddrMode.IEEE:
            device = self.net.devices.get(packet.dst.address)
        else:
            device = next((d for d in self.net.devices.values()
                           if d.nwk == packet.dst.address), None)
        if packet.dst.addr_mode == t.AddrMode.NWK and packet.dst.address == 0x0000:
            return  # the coordinator talking to itself
        if device is None or not device.reachable:
            raise zigpy.exceptions.DeliveryError(
                f"no route to 0x{int(packet.dst.address):04X}", status=t.MACStatus.MAC_NO_ACK)
        if device.awake:
            asyncio.get_running_loop().call_soon(device.handle, packet)


# -- ready-made devices ----------------------------------------------------------------------

def climate_sensor(ieee: str = "00:15:8d:00:01:02:03:04") -> VirtualDevice:
    """A battery temperature/humidity/pressure sensor (like an Aqara WSDCGQ11LM)."""
    return VirtualDevice(ieee, [VirtualEndpoint(1, 0x0302, {
        0x0000: {},
        0x0001: {0x0020: 30, 0x0021: 180},
        0x0402: {0x0000: 2150},
        0x0403: {0x0000: 1013},
        0x0405: {0x0000: 4550},
    }, [0x0019])], model="lumi.weather", manufacturer="LUMI", mains=False)


def smart_plug(ieee: str = "00:17:88:01:00:aa:bb:cc") -> VirtualDevice:
    """A mains plug with on/off, level and power metering (multiplier/divisor)."""
    return VirtualDevice(ieee, [VirtualEndpoint(1, 0x0101, {
        0x0000: {},
        0x0006: {0x0000: False},
        0x0008: {0x0000: 0},
        0x0702: {0x0000: 12345, 0x0300: 0, 0x0301: 1, 0x0302: 1000, 0x0400: 0},
        0x0B04: {0x050B: 0, 0x0505: 2300, 0x0508: 0, 0x0600: 1, 0x0601: 10,
                 0x0602: 1, 0x0603: 1000, 0x0604: 1, 0x0605: 10},
    })], model="PLUG-1", manufacturer="Acme", mains=True)


def door_sensor(ieee: str = "00:0d:6f:00:11:22:33:44") -> VirtualDevice:
    """A battery IAS zone contact sensor."""
    return VirtualDevice(ieee, [VirtualEndpoint(1, 0x0402, {
        0x0000: {},
        0x0001: {0x0021: 200},
        0x0500: {0x0000: 0, 0x0001: 0x0015, 0x0002: 0, 0x0010: t.EUI64.convert(
            "00:00:00:00:00:00:00:00"), 0x0011: 0xFF},
    })], model="DS01", manufacturer="Acme", mains=False)
