"""Virtual Zigbee nodes behind the simulated stick: they answer ZDO and ZCL.

Frames are parsed and built with zigpy's own ZDO and ZCL definitions, so what the host
sees is byte for byte what a real device would send. A :class:`VirtualNode` answers the
ZDO descriptor requests (the coordinator itself is one: bellows interviews it);
a :class:`VirtualDevice` adds ZCL clusters with attribute values, answers reads,
attribute writes, reporting configuration and binds, acts on On/Off and Level commands
(reporting the change where reporting was configured) and IAS enroll responses, and
builds attribute reports and cluster commands of its own.
Every request it receives is recorded in ``received`` for tests to check.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import bellows.types as bt
import zigpy.types as zt
import zigpy.zcl as zcl
import zigpy.zdo.types as zdo_t
from zigpy.zcl import foundation

log = logging.getLogger("tests.ezsp_stick.device")

ZDO_PROFILE = 0x0000
HA_PROFILE = 0x0104
ON_OFF = 0x0006
LEVEL = 0x0008
IAS_ZONE = 0x0500
ZDO_ENDPOINT = 0
#: where reports go when nothing was bound: the coordinator's first endpoint
COORDINATOR_ENDPOINT = 1
#: how well the coordinator hears a node unless a test says otherwise
DEFAULT_LQI = 230
DEFAULT_RSSI = -45
#: neighbour or route entries per Mgmt_Lqi_rsp / Mgmt_Rtg_rsp (firmware fits 2-3 in a frame)
TABLE_PAGE = 3

Message = tuple[bt.EmberApsFrame, bytes]


@dataclass
class Endpoint:
    """One simple descriptor."""

    endpoint: int
    profile: int = HA_PROFILE
    device_type: int = 0x0302  # temperature sensor
    device_version: int = 0
    in_clusters: Sequence[int] = ()
    out_clusters: Sequence[int] = ()

    def descriptor(self) -> zdo_t.SizePrefixedSimpleDescriptor:
        return zdo_t.SizePrefixedSimpleDescriptor(
            endpoint=self.endpoint, profile=self.profile, device_type=self.device_type,
            device_version=self.device_version, input_clusters=list(self.in_clusters),
            output_clusters=list(self.out_clusters))


def aps_frame(profile: int, cluster: int, src_ep: int, dst_ep: int, sequence: int,
              options: bt.EmberApsOption = bt.EmberApsOption.APS_OPTION_NONE,
              group: int = 0) -> bt.EmberApsFrame:
    """An APS frame as EmberZNet hands it to the host."""
    return bt.EmberApsFrame(profileId=profile, clusterId=cluster, sourceEndpoint=src_ep,
                            destinationEndpoint=dst_ep, options=options, groupId=group,
                            sequence=sequence)


class Topology(Protocol):
    """The network a node is part of, as far as its neighbour and routing tables go."""

    def neighbors_of(self, node: VirtualNode) -> list[zdo_t.Neighbor]: ...

    def routes_of(self, node: VirtualNode) -> list[zdo_t.Route]: ...


class VirtualNode:
    """A node that answers ZDO descriptor requests from its endpoints.

    ``lqi`` and ``rssi`` are how well its parent hears it (the stick hands them to the
    host with every frame from it); ``parent`` is the NWK address it joined through.
    Routers and the coordinator answer Mgmt_Lqi_req / Mgmt_Rtg_req from ``topology``
    when the stick gave them one, and with NOT_SUPPORTED otherwise.
    """

    def __init__(self, ieee: str | zt.EUI64, nwk: int,
                 logical_type: zdo_t.LogicalType = zdo_t.LogicalType.EndDevice,
                 mains_powered: bool = False, manufacturer_code: int = 0x1234,
                 endpoints: Sequence[Endpoint] = (), *, lqi: int = DEFAULT_LQI,
                 rssi: int = DEFAULT_RSSI, parent: int = 0x0000) -> None:
        self.ieee = ieee if isinstance(ieee, zt.EUI64) else zt.EUI64.convert(ieee)
        self.nwk = nwk
        self.logical_type = logical_type
        self.mains_powered = mains_powered
        self.manufacturer_code = manufacturer_code
        self.endpoints: dict[int, Endpoint] = {ep.endpoint: ep for ep in endpoints}
        self.lqi = lqi
        self.rssi = rssi
        self.parent = parent
        self.topology: Topology | None = None
        self.received: list[tuple[Any, ...]] = []
        #: set once the node was asked to leave; the stick then takes it off the network
        self.leaving = False
        self._aps_seq = 0

    def next_aps_seq(self) -> int:
        self._aps_seq = (self._aps_seq + 1) % 256
        return self._aps_seq

    @property
    def is_router(self) -> bool:
        """Routers and the coordinator keep neighbour and routing tables."""
        return self.logical_type != zdo_t.LogicalType.EndDevice

    def node_descriptor(self) -> zdo_t.NodeDescriptor:
        flags = zdo_t.MACCapabilityFlags.AllocateAddress
        if self.mains_powered:
            flags |= (zdo_t.MACCapabilityFlags.MainsPowered
                      | zdo_t.MACCapabilityFlags.RxOnWhenIdle)
        if self.logical_type != zdo_t.LogicalType.EndDevice:
            flags |= zdo_t.MACCapabilityFlags.FullFunctionDevice
        server_mask = 0x2C41 if self.logical_type == zdo_t.LogicalType.Coordinator else 0x2C00
        return zdo_t.NodeDescriptor(
            logical_type=self.logical_type, complex_descriptor_available=0,
            user_descriptor_available=0, reserved=0, aps_flags=0,
            frequency_band=zdo_t.NodeDescriptor.FrequencyBand.Freq2400MHz,
            mac_capability_flags=flags, manufacturer_code=self.manufacturer_code,
            maximum_buffer_size=82, maximum_incoming_transfer_size=82,
            server_mask=server_mask, maximum_outgoing_transfer_size=82,
            descriptor_capability_field=zdo_t.DescriptorCapability.NONE)

    # -- receiving ---------------------------------------------------------------------

    def handle(self, aps: bt.EmberApsFrame, payload: bytes) -> list[Message]:
        """Answer one frame the coordinator sent to this node; replies go back to it."""
        if aps.profileId == ZDO_PROFILE and aps.destinationEndpoint == ZDO_ENDPOINT:
            return self.handle_zdo(aps, payload)
        return self.handle_app(aps, payload)

    def handle_app(self, aps: bt.EmberApsFrame, payload: bytes) -> list[Message]:
        self.received.append(("aps", aps.clusterId, payload))
        log.warning("node %s: no application layer, frame for cluster 0x%04X ignored",
                    self.ieee, aps.clusterId)
        return []

    def handle_zdo(self, aps: bt.EmberApsFrame, payload: bytes) -> list[Message]:
        try:
            cmd = zdo_t.ZDOCmd(aps.clusterId)
            _, schema = zdo_t.CLUSTERS[cmd]
        except (ValueError, KeyError):
            log.warning("node %s: unknown ZDO cluster 0x%04X, ignored", self.ieee,
                        aps.clusterId)
            return []
        tsn, data = zt.uint8_t.deserialize(payload)
        args, _ = zt.deserialize(data, schema)
        self.received.append(("zdo", cmd.name, *args))
        reply = self.zdo_reply(cmd, args)
        if reply is None:
            return []
        rsp_cmd, values = reply
        _, rsp_schema = zdo_t.CLUSTERS[rsp_cmd]
        body = bytes([tsn]) + zt.serialize(values, rsp_schema)
        return [(aps_frame(ZDO_PROFILE, rsp_cmd, ZDO_ENDPOINT, ZDO_ENDPOINT,
                           self.next_aps_seq()), body)]

    def zdo_reply(self, cmd: zdo_t.ZDOCmd,
                  args: list[Any]) -> tuple[zdo_t.ZDOCmd, list[Any]] | None:
        """The response command and its values, or None for requests that get no answer."""
        ok = zdo_t.Status.SUCCESS
        Z = zdo_t.ZDOCmd
        if cmd == Z.Node_Desc_req:
            return Z.Node_Desc_rsp, [ok, self.nwk, self.node_descriptor()]
        if cmd == Z.Active_EP_req:
            return Z.Active_EP_rsp, [ok, self.nwk, sorted(self.endpoints)]
        if cmd == Z.Simple_Desc_req:
            ep = self.endpoints.get(args[1])
            if ep is None:
                return Z.Simple_Desc_rsp, [zdo_t.Status.NOT_ACTIVE, self.nwk, None]
            return Z.Simple_Desc_rsp, [ok, self.nwk, ep.descriptor()]
        if cmd == Z.IEEE_addr_req:
            return Z.IEEE_addr_rsp, [ok, self.ieee, self.nwk, 0, 0, []]
        if cmd == Z.NWK_addr_req:
            return Z.NWK_addr_rsp, [ok, self.ieee, self.nwk, 0, 0, []]
        if cmd in (Z.Bind_req, Z.Unbind_req):
            return zdo_t.ZDOCmd(cmd | 0x8000), [ok]
        if cmd == Z.Mgmt_Leave_req:
            # Addressed to itself (or to "whoever receives this"): it answers, then leaves
            self.leaving = args[0] in (self.ieee, zt.EUI64(bytes(8)))
            return Z.Mgmt_Leave_rsp, [ok]
        if cmd == Z.Mgmt_Permit_Joining_req:
            return None  # broadcast: nobody answers
        if cmd == Z.Mgmt_NWK_Update_req:
            channels = args[0].ScanChannels
            count = len(list(channels))
            return Z.Mgmt_NWK_Update_rsp, [ok, channels, count, 0, [0x10] * count]
        if cmd == Z.Mgmt_Lqi_req:
            if self.topology is None or not self.is_router:
                return Z.Mgmt_Lqi_rsp, [zdo_t.Status.NOT_SUPPORTED, None]
            neighbors = self.topology.neighbors_of(self)
            start = args[0]
            return Z.Mgmt_Lqi_rsp, [ok, zdo_t.Neighbors(
                Entries=len(neighbors), StartIndex=start,
                NeighborTableList=neighbors[start:start + TABLE_PAGE])]
        if cmd == Z.Mgmt_Rtg_req:
            if self.topology is None or not self.is_router:
                return Z.Mgmt_Rtg_rsp, [zdo_t.Status.NOT_SUPPORTED, None]
            routes = self.topology.routes_of(self)
            start = args[0]
            return Z.Mgmt_Rtg_rsp, [ok, zdo_t.Routes(
                Entries=len(routes), StartIndex=start,
                RoutingTableList=routes[start:start + TABLE_PAGE])]
        if cmd in (Z.Device_annce, Z.Parent_annce):
            return None
        log.warning("node %s: no answer for ZDO %s", self.ieee, cmd.name)
        return None


class VirtualDevice(VirtualNode):
    """An end device with ZCL clusters: Basic plus whatever ``attributes`` names.

    ``attributes`` maps ``(endpoint, cluster_id)`` to ``{attribute_id: value}``; values
    take the attribute's type from zigpy's cluster definitions. ``router=True`` makes it
    a mains-powered router (a plug, a repeater) that others can join through.
    """

    def __init__(self, ieee: str | zt.EUI64, nwk: int, *, model: str = "TH01",
                 manufacturer: str = "Acme Sensors",
                 endpoints: Sequence[Endpoint] | None = None,
                 attributes: Mapping[tuple[int, int], Mapping[int, Any]] | None = None,
                 mains_powered: bool = False, router: bool = False, lqi: int = DEFAULT_LQI,
                 rssi: int = DEFAULT_RSSI, parent: int = 0x0000) -> None:
        if endpoints is None:
            endpoints = [Endpoint(1, in_clusters=[0x0000, 0x0001, 0x0402, 0x0405],
                                  out_clusters=[0x0019])]
        logical_type = zdo_t.LogicalType.Router if router else zdo_t.LogicalType.EndDevice
        super().__init__(ieee, nwk, logical_type=logical_type,
                         mains_powered=mains_powered or router, endpoints=endpoints, lqi=lqi,
                         rssi=rssi, parent=parent)
        self.model = model
        self.manufacturer = manufacturer
        self.attributes: dict[tuple[int, int], dict[int, Any]] = {}
        for ep in self.endpoints.values():
            if 0x0000 in ep.in_clusters:
                self.attributes[(ep.endpoint, 0x0000)] = {
                    0x0000: 3, 0x0004: manufacturer, 0x0005: model,
                    0x0007: 0x01 if self.mains_powered else 0x03}
        for key, values in (attributes or {}).items():
            self.attributes.setdefault(key, {}).update(values)
        self.reporting: dict[tuple[int, int, int], tuple[int, int]] = {}
        self._tsn = 0

    def next_tsn(self) -> int:
        self._tsn = (self._tsn + 1) % 256
        return self._tsn

    # -- ZCL ---------------------------------------------------------------------------

    @staticmethod
    def _attr_def(cluster: int, attrid: int) -> foundation.ZCLAttributeDef | None:
        cls = zcl.Cluster._registry.get(cluster)
        return None if cls is None else cls.attributes.get(attrid)

    def _typed(self, cluster: int, attrid: int, value: Any) -> foundation.TypeValue:
        adef = self._attr_def(cluster, attrid)
        if adef is None:
            raise KeyError(f"cluster 0x{cluster:04X} has no attribute 0x{attrid:04X} in zigpy")
        return foundation.TypeValue(type=adef.zcl_type, value=adef.type(value))

    def handle_app(self, aps: bt.EmberApsFrame, payload: bytes) -> list[Message]:
        hdr, data = foundation.ZCLHeader.deserialize(payload)
        ep, cluster = aps.destinationEndpoint, aps.clusterId
        changed: dict[int, Any] = {}
        if hdr.frame_control.is_general:
            cmd = foundation.GeneralCommand(hdr.command_id)
            schema = foundation.GENERAL_COMMANDS[cmd].schema
            args, _ = schema.deserialize(data)
            self.received.append(("zcl", cluster, cmd.name, args))
            rsp = self._general(ep, cluster, cmd, args)
        else:
            self.received.append(("zcl", cluster, hdr.command_id, data))
            status, changed = self._cluster_command(ep, cluster, hdr.command_id, data)
            rsp = None
            if not hdr.frame_control.disable_default_response or \
                    status != foundation.Status.SUCCESS:
                rsp = (foundation.GeneralCommand.Default_Response,
                       foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Default_Response]
                       .schema(command_id=hdr.command_id, status=status))
        replies: list[Message] = []
        if rsp is not None:
            rsp_cmd, rsp_args = rsp
            # A reply travels the other way: from a client cluster it goes client to server
            out_hdr = foundation.ZCLHeader.general(
                tsn=hdr.tsn, command_id=rsp_cmd, direction=hdr.direction.flip())
            body = out_hdr.serialize() + rsp_args.serialize()
            replies.append((aps_frame(aps.profileId, cluster, ep, aps.sourceEndpoint,
                                      self.next_aps_seq()), body))
        # A state change is reported at once where reporting was configured for it
        reportable = {a: v for a, v in changed.items() if (ep, cluster, a) in self.reporting}
        if reportable:
            replies.append(self.report(ep, cluster, reportable))
        return replies

    def _cluster_command(self, ep: int, cluster: int, command_id: int,
                         data: bytes) -> tuple[foundation.Status, dict[int, Any]]:
        """Act on a cluster command: the status to answer and the attributes it changed."""
        if (ep, cluster) not in self.attributes:
            return foundation.Status.UNSUP_CLUSTER_COMMAND, {}
        values = self.attributes[(ep, cluster)]
        if cluster == ON_OFF and command_id in (0x00, 0x01, 0x02):
            on = {0x00: False, 0x01: True}.get(command_id, not values.get(0x0000, False))
            values[0x0000] = on
            return foundation.Status.SUCCESS, {0x0000: on}
        if cluster == LEVEL and command_id in (0x00, 0x04) and data:
            values[0x0000] = data[0]
            changed: dict[int, Any] = {0x0000: data[0]}
            on_off = self.attributes.get((ep, ON_OFF))
            if command_id == 0x04 and on_off is not None:
                # "with on/off": level 0 switches off, anything else on
                on_off[0x0000] = data[0] > 0
            return foundation.Status.SUCCESS, changed
        if cluster == IAS_ZONE and command_id == 0x00 and len(data) >= 2:
            # Enroll response from the CIE: the zone is enrolled under the given id
            values[0x0000] = 1 if data[0] == 0x00 else 0
            values[0x0011] = data[1]
            return foundation.Status.SUCCESS, {}
        log.warning("device %s: cluster 0x%04X command 0x%02X not simulated", self.ieee,
                    cluster, command_id)
        return foundation.Status.SUCCESS, {}

    def _general(self, ep: int, cluster: int, cmd: foundation.GeneralCommand,
                 args: Any) -> tuple[foundation.GeneralCommand, Any] | None:
        G = foundation.GeneralCommand
        values = self.attributes.get((ep, cluster), {})
        if cmd == G.Read_Attributes:
            records = []
            for attrid in args.attribute_ids:
                if attrid in values:
                    records.append(foundation.ReadAttributeRecord(
                        attrid, foundation.Status.SUCCESS, self._typed(cluster, attrid,
                                                                       values[attrid])))
                else:
                    records.append(foundation.ReadAttributeRecord(
                        attrid, foundation.Status.UNSUPPORTED_ATTRIBUTE))
            return G.Read_Attributes_rsp, foundation.GENERAL_COMMANDS[
                G.Read_Attributes_rsp].schema(status_records=records)
        if cmd in (G.Write_Attributes, G.Write_Attributes_Undivided):
            for attr in args.attributes:
                self.attributes.setdefault((ep, cluster), {})[attr.attrid] = attr.value.value
            return G.Write_Attributes_rsp, foundation.GENERAL_COMMANDS[
                G.Write_Attributes_rsp].schema(status_records=[
                    foundation.WriteAttributesStatusRecord(status=foundation.Status.SUCCESS)])
        if cmd == G.Configure_Reporting:
            for rec in args.config_records:
                self.reporting[(ep, cluster, rec.attrid)] = (rec.min_interval, rec.max_interval)
            return G.Configure_Reporting_rsp, foundation.GENERAL_COMMANDS[
                G.Configure_Reporting_rsp].schema(status_records=[
                    foundation.ConfigureReportingResponseRecord(
                        status=foundation.Status.SUCCESS)])
        if cmd == G.Default_Response:
            return None
        return G.Default_Response, foundation.GENERAL_COMMANDS[G.Default_Response].schema(
            command_id=cmd, status=foundation.Status.UNSUP_GENERAL_COMMAND)

    # -- frames the device sends on its own -----------------------------------------------

    def report(self, endpoint: int, cluster: int, values: Mapping[int, Any]) -> Message:
        """A ZCL Report Attributes frame to the coordinator; also updates the values."""
        self.attributes.setdefault((endpoint, cluster), {}).update(values)
        records = [foundation.Attribute(attrid=attrid, value=self._typed(cluster, attrid, v))
                   for attrid, v in values.items()]
        hdr = foundation.ZCLHeader.general(
            tsn=self.next_tsn(), command_id=foundation.GeneralCommand.Report_Attributes,
            direction=foundation.Direction.Server_to_Client)
        hdr.frame_control = hdr.frame_control.replace(disable_default_response=1)
        body = hdr.serialize() + foundation.GENERAL_COMMANDS[
            foundation.GeneralCommand.Report_Attributes].schema(
                attribute_reports=records).serialize()
        return (aps_frame(HA_PROFILE, cluster, endpoint, COORDINATOR_ENDPOINT,
                          self.next_aps_seq()), body)

    def command(self, endpoint: int, cluster: int, command_id: int, **args: Any) -> Message:
        """A cluster command the device sends to the coordinator (server to client), such
        as an IAS zone's status change notification; ``args`` per zigpy's schema."""
        cmd = zcl.Cluster._registry[cluster].client_commands[command_id]
        hdr = foundation.ZCLHeader.cluster(tsn=self.next_tsn(), command_id=command_id,
                                           direction=foundation.Direction.Server_to_Client)
        body = hdr.serialize() + cmd.schema(**args).serialize()
        return (aps_frame(HA_PROFILE, cluster, endpoint, COORDINATOR_ENDPOINT,
                          self.next_aps_seq()), body)

    def announce(self) -> Message:
        """The ZDO Device_annce a device broadcasts after joining."""
        capability = 0x80 | (0x0C if self.mains_powered else 0x00)
        _, schema = zdo_t.CLUSTERS[zdo_t.ZDOCmd.Device_annce]
        body = bytes([self.next_aps_seq()]) + zt.serialize(
            [self.nwk, self.ieee, capability], schema)
        return (aps_frame(ZDO_PROFILE, zdo_t.ZDOCmd.Device_annce, ZDO_ENDPOINT, ZDO_ENDPOINT,
                          self.next_aps_seq()), body)

