"""A Z-Stack 3.x coordinator (as on a CC2652P: Sonoff ZBDongle-P, SLZB-06) behind MT.

Requests arrive as zigpy-znp command objects (:mod:`.mt` parses them); each supported
one has a ``_<SUBSYSTEM>_<Command>`` method returning the synchronous response and any
callbacks that follow it, in the order firmware sends them. An unsupported request is
answered with ``RPCError.CommandNotRecognized``, as firmware does, and counted in
``unknown``.

NVRAM (:class:`NvState`) holds what a real stick keeps in flash and survives resets and
reconnects: the OSAL items of the ``LEGACY`` table (NIB, keys, PAN ids, stack settings)
and the Z-Stack 3.30 tables (address manager, TC link keys, APS keys, NWK security
material). It starts as a blank stick's; ``preform`` writes a formed network into it.
Everything else (network started, registered endpoints, permit joining) is lost on
reset, as on firmware.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import zigpy.zdo.types as zdo_t
import zigpy_znp.commands as c
import zigpy_znp.const as const
import zigpy_znp.types as t
from zigpy_znp.types.nvids import ExNvIds, OsalNvIds

from tests.ezsp_stick.device import (
    ZDO_ENDPOINT,
    ZDO_PROFILE,
    Endpoint,
    Message,
    VirtualDevice,
    VirtualNode,
    aps_frame,
)
from tests.znp_stick.mt import ALIGN_STRUCTS

log = logging.getLogger("tests.znp_stick")

LEGACY = ExNvIds.LEGACY
#: table sizes: smaller than a CC2652P build's (which has hundreds of address-manager
#: slots), big enough for tests, and each read or written row by row by zigpy-znp
TABLE_ROWS = {ExNvIds.ADDRMGR: 16, ExNvIds.TCLK_TABLE: 8, ExNvIds.APS_KEY_DATA_TABLE: 4,
              ExNvIds.NWK_SEC_MATERIAL_TABLE: 2}
LQI = 200
CODE_REVISION = 20230507  # Koenkk's Z-Stack 3.x.0 coordinator build of 7 May 2023
MAC_CAPABILITIES = c.ZDO.EndDeviceAnnceInd.Callback.schema[3].type

Reply = list[t.CommandBase]


def nv_bytes(value: Any) -> bytes:
    """A value as Z-Stack stores it (structs padded as on a CC2652)."""
    if isinstance(value, (t.CStruct, t.BaseListType)):
        return bytes(value.serialize(align=ALIGN_STRUCTS))
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return bytes(value.serialize())


def nv_value(data: bytes, item_type: Any) -> Any:
    if issubclass(item_type, (t.CStruct, t.BaseListType)):
        value, _ = item_type.deserialize(data, align=ALIGN_STRUCTS)
    else:
        value, _ = item_type.deserialize(data)
    return value


def blank_nib() -> t.NIB:
    """The NIB of a stick that never formed a network."""
    empty = t.NwkKeyDesc(KeySeqNum=0, Key=t.KeyData(bytes(16)))
    return t.NIB(
        SequenceNum=0, PassiveAckTimeout=5, MaxBroadcastRetries=2, MaxChildren=0, MaxDepth=20,
        MaxRouters=0, dummyNeighborTable=0, BroadcastDeliveryTime=30, ReportConstantCost=0,
        RouteDiscRetries=0, dummyRoutingTable=0, SecureAllFrames=1, SecurityLevel=5,
        SymLink=1, CapabilityFlags=143, TransactionPersistenceTime=7, nwkProtocolVersion=2,
        RouteDiscoveryTime=5, RouteExpiryTime=30, nwkDevAddress=0xFFFE, nwkLogicalChannel=0,
        nwkCoordAddress=0xFFFE, nwkCoordExtAddress=t.EUI64(bytes(8)), nwkPanId=0xFFFF,
        nwkState=t.NwkState.NWK_INIT, channelList=t.Channels.NO_CHANNELS, beaconOrder=15,
        superFrameOrder=15, scanDuration=0, battLifeExt=0, allocatedRouterAddresses=0,
        allocatedEndDeviceAddresses=0, nodeDepth=0, extendedPANID=t.EUI64(bytes(8)),
        nwkKeyLoaded=False, spare1=empty, spare2=empty, spare3=0, spare4=0,
        nwkLinkStatusPeriod=60, nwkRouterAgeLimit=3, nwkUseMultiCast=False,
        nwkIsConcentrator=True, nwkConcentratorDiscoveryTime=120, nwkConcentratorRadius=10,
        nwkAllFresh=1, nwkManagerAddr=0x0000, nwkTotalTransmissions=0, nwkUpdateId=0)


def _empty_key() -> t.NwkKeyDesc:
    return t.NwkKeyDesc(KeySeqNum=0, Key=t.KeyData(bytes(16)))


#: network state: wiped by a reset with STARTUP_OPTION ClearState
def _network_items() -> dict[int, Any]:
    return {
        OsalNvIds.NIB: blank_nib(),
        OsalNvIds.NWK_ACTIVE_KEY_INFO: _empty_key(),
        OsalNvIds.NWK_ALTERN_KEY_INFO: _empty_key(),
        OsalNvIds.NWKKEY: t.NwkActiveKeyItems(Active=_empty_key(), FrameCounter=0),
        OsalNvIds.BDBNODEISONANETWORK: t.uint8_t(0),
        # a count of 0 entries, then room for more, as Z-Stack sizes it at build time
        OsalNvIds.APS_LINK_KEY_TABLE: bytes(22),
    }


#: configuration: back to these with STARTUP_OPTION ClearConfig
def _config_items() -> dict[int, Any]:
    return {
        OsalNvIds.STARTUP_OPTION: t.StartupOptions.NONE,
        OsalNvIds.LOGICAL_TYPE: t.DeviceLogicalType.Coordinator,
        OsalNvIds.PANID: t.uint16_t(0xFFFF),
        OsalNvIds.CHANLIST: t.Channels.from_channel_list([11]),
        OsalNvIds.EXTENDED_PAN_ID: t.EUI64(bytes(8)),
        OsalNvIds.APS_USE_EXT_PANID: t.EUI64(bytes(8)),
        OsalNvIds.PRECFGKEY: t.KeyData(bytes(16)),
        OsalNvIds.PRECFGKEYS_ENABLE: t.Bool(False),
        OsalNvIds.TCLK_SEED: t.KeyData(bytes(range(0x40, 0x50))),
        # stack settings zigpy-znp checks and writes at every start
        OsalNvIds.CONCENTRATOR_ENABLE: t.Bool(False),
        OsalNvIds.CONCENTRATOR_DISCOVERY: t.uint8_t(100),
        OsalNvIds.CONCENTRATOR_RC: t.Bool(False),
        OsalNvIds.SRC_RTG_EXPIRY_TIME: t.uint8_t(10),
        OsalNvIds.NWK_CHILD_AGE_ENABLE: t.Bool(True),
        OsalNvIds.BCAST_DELIVERY_TIME: t.uint8_t(30),
        OsalNvIds.ZDO_DIRECT_CB: t.Bool(False),
    }


def _table_fill(item: ExNvIds) -> Any:
    if item == ExNvIds.ADDRMGR:
        return const.EMPTY_ADDR_MGR_ENTRY_ZSTACK3
    if item == ExNvIds.TCLK_TABLE:
        return t.TCLKDevEntry(txFrmCntr=0, rxFrmCntr=0, extAddr=t.EUI64(bytes(8)),
                              keyAttributes=t.KeyAttributes.DEFAULT_KEY,
                              keyType=t.KeyType.NONE, SeedShift_IcIndex=0)
    if item == ExNvIds.APS_KEY_DATA_TABLE:
        return t.APSKeyDataTableEntry(Key=t.KeyData(bytes(16)), TxFrameCounter=0,
                                      RxFrameCounter=0)
    return t.NwkSecMaterialDesc(FrameCounter=0, ExtendedPanID=t.EUI64(bytes(8)))


class NvState:
    """The stick's flash: ``items[(item id, sub id)]``, OSAL items under ``LEGACY``."""

    def __init__(self, ieee: t.EUI64) -> None:
        self.ieee = ieee
        self.items: dict[tuple[int, int], bytes] = {}
        self.put(OsalNvIds.EXTADDR, ieee)
        self._restore(_config_items(), _network_items())
        for item, rows in TABLE_ROWS.items():
            self._clear_table(item, rows)

    # -- access --------------------------------------------------------------------------

    def get(self, nvid: int, item: int = LEGACY, sub: int | None = None) -> bytes | None:
        return self.items.get((item, nvid if sub is None else sub))

    def put(self, nvid: int, value: Any) -> None:
        self.items[(LEGACY, nvid)] = nv_bytes(value)

    def read(self, nvid: int, item_type: Any) -> Any:
        data = self.get(nvid)
        if data is None:
            raise KeyError(nvid)
        return nv_value(data, item_type)

    def table(self, item: ExNvIds, item_type: Any) -> list[Any]:
        return [nv_value(self.items[(item, sub)], item_type)
                for sub in range(TABLE_ROWS[item]) if (item, sub) in self.items]

    def put_row(self, item: ExNvIds, sub: int, value: Any) -> None:
        self.items[(item, sub)] = nv_bytes(value)

    # -- state ---------------------------------------------------------------------------

    @property
    def formed(self) -> bool:
        return self.get(OsalNvIds.BDBNODEISONANETWORK) == b"\x01"

    @property
    def nib(self) -> t.NIB:
        return self.read(OsalNvIds.NIB, t.NIB)

    def children(self) -> dict[t.EUI64, int]:
        """Joined devices, from the address manager table (as Z-Stack keeps them)."""
        return {e.extAddr: e.nwkAddr for e in self.table(ExNvIds.ADDRMGR, t.AddrMgrEntry)
                if e.type != 0xFF and e.type & t.AddrMgrUserType.Assoc}

    def add_child(self, ieee: t.EUI64, nwk: int) -> None:
        entries = self.table(ExNvIds.ADDRMGR, t.AddrMgrEntry)
        free = next((i for i, e in enumerate(entries) if e.extAddr == ieee), None)
        if free is None:
            free = next((i for i, e in enumerate(entries) if e.type == 0xFF), None)
        if free is None:
            raise RuntimeError("address manager table full")
        self.put_row(ExNvIds.ADDRMGR, free, t.AddrMgrEntry(
            type=t.AddrMgrUserType.Assoc, nwkAddr=nwk, extAddr=ieee))

    def remove_child(self, ieee: t.EUI64) -> bool:
        for i, e in enumerate(self.table(ExNvIds.ADDRMGR, t.AddrMgrEntry)):
            if e.extAddr == ieee and e.type != 0xFF:
                self.put_row(ExNvIds.ADDRMGR, i, const.EMPTY_ADDR_MGR_ENTRY_ZSTACK3)
                return True
        return False

    def boot(self) -> None:
        """What Z-Stack does with its flash at boot: startup options, missing items."""
        options = nv_value(self.get(OsalNvIds.STARTUP_OPTION) or b"\x00", t.StartupOptions)
        if options & t.StartupOptions.ClearState:
            for nvid, value in _network_items().items():
                self.put(nvid, value)
            for item in (ExNvIds.ADDRMGR, ExNvIds.TCLK_TABLE, ExNvIds.APS_KEY_DATA_TABLE,
                         ExNvIds.NWK_SEC_MATERIAL_TABLE):
                self._clear_table(item, TABLE_ROWS[item])
        if options & t.StartupOptions.ClearConfig:
            for nvid, value in _config_items().items():
                self.put(nvid, value)
        self.put(OsalNvIds.STARTUP_OPTION, t.StartupOptions.NONE)
        # Deleted stack items come back with their defaults; EXTADDR with the chip's own
        self._restore(_config_items(), _network_items())
        if self.get(OsalNvIds.EXTADDR) is None:
            self.put(OsalNvIds.EXTADDR, self.ieee)

    def _restore(self, *defaults: dict[int, Any]) -> None:
        for items in defaults:
            for nvid, value in items.items():
                if self.get(nvid) is None:
                    self.put(nvid, value)

    def _clear_table(self, item: ExNvIds, rows: int) -> None:
        for sub in range(rows):
            self.put_row(item, sub, _table_fill(item))

    def form(self, channels: t.Channels) -> None:
        """Form a network from the configured items, as BDB formation does."""
        channel = next(iter(channels), 11)
        pan_id = nv_value(self.get(OsalNvIds.PANID) or b"\xff\xff", t.uint16_t)
        if pan_id in (0xFFFF, 0xFFFE, 0x0000):
            pan_id = random.randint(0x0001, 0xFFF0)
        epid = self.read(OsalNvIds.APS_USE_EXT_PANID, t.EUI64)
        if epid == t.EUI64(bytes(8)):
            epid = self.read(OsalNvIds.EXTADDR, t.EUI64)
        key = self.read(OsalNvIds.PRECFGKEY, t.KeyData)
        self.write_network(channel=channel, channels=channels, pan_id=pan_id, epid=epid,
                           key=key)

    def write_network(self, *, channel: int, channels: t.Channels, pan_id: int,
                      epid: t.EUI64, key: t.KeyData, frame_counter: int = 1) -> None:
        nib = blank_nib().replace(
            nwkState=t.NwkState.NWK_ROUTER, nwkDevAddress=0x0000, nwkLogicalChannel=channel,
            nwkCoordAddress=0x0000, nwkPanId=pan_id, channelList=channels,
            extendedPANID=epid, nwkKeyLoaded=True)
        active = t.NwkKeyDesc(KeySeqNum=0, Key=key)
        self.put(OsalNvIds.NIB, nib)
        self.put(OsalNvIds.NWK_ACTIVE_KEY_INFO, active)
        self.put(OsalNvIds.NWK_ALTERN_KEY_INFO, active)
        self.put(OsalNvIds.NWKKEY, t.NwkActiveKeyItems(Active=active, FrameCounter=frame_counter))
        self.put(OsalNvIds.EXTENDED_PAN_ID, epid)
        self.put(OsalNvIds.BDBNODEISONANETWORK, t.uint8_t(1))
        self.put_row(ExNvIds.NWK_SEC_MATERIAL_TABLE, 0, t.NwkSecMaterialDesc(
            FrameCounter=frame_counter, ExtendedPanID=epid))


class ZStack:
    """The firmware: MT requests in, responses and callbacks out (through ``emit``)."""

    def __init__(self, nv: NvState, devices: dict[int, VirtualDevice],
                 emit: Callable[[t.CommandBase], None]) -> None:
        self.nv = nv
        self.devices = devices
        self.emit = emit
        #: every request the host sent, by name ("SYS.Ping"); unsupported ones by name too
        self.commands: Counter[str] = Counter()
        self.unknown: Counter[str] = Counter()
        self.reset()

    def reset(self) -> None:
        """A reboot: volatile state is gone; NVRAM gets Z-Stack's boot treatment."""
        self.nv.boot()
        self.state = t.DeviceState.InitializedNotStarted
        self.coordinator = VirtualNode(self.nv.read(OsalNvIds.EXTADDR, t.EUI64), 0x0000,
                                       logical_type=zdo_t.LogicalType.Coordinator,
                                       mains_powered=True, manufacturer_code=0x0000)
        self.primary_channels: t.Channels | None = None
        self.permit_until = 0.0
        self.zdo_callbacks = False

    @property
    def network_up(self) -> bool:
        return self.state == t.DeviceState.StartedAsCoordinator

    @property
    def permit_joining(self) -> bool:
        return self.network_up and time.monotonic() < self.permit_until

    def boot_indication(self, reason: t.ResetReason = t.ResetReason.PowerUp) -> t.CommandBase:
        return c.SYS.ResetInd.Callback(Reason=reason, TransportRev=2, ProductId=1, MajorRel=2,
                                       MinorRel=7, MaintRel=1)

    # -- dispatch --------------------------------------------------------------------------

    def handle(self, request: t.CommandBase | None, header: t.CommandHeader) -> None:
        """Answer one request; ``None`` is a frame zigpy-znp's tables do not know."""
        name = (type(request).__qualname__.rsplit(".", 1)[0] if request is not None
                else f"0x{int(header):04X}")
        self.commands[name] += 1
        log.debug("znp stick ← host: %s", request)
        handler = getattr(self, "_" + name.replace(".", "_"), None)
        if handler is None:
            self.unknown[name] += 1
            log.warning("znp stick: no handler for %s (%s): answered CommandNotRecognized;"
                        " add ZStack._%s to support it", name, request, name.replace(".", "_"))
            if header.type == t.CommandType.SREQ:
                self.emit(c.RPCError.CommandNotRecognized.Rsp(
                    ErrorCode=c.rpc_error.ErrorCode.InvalidCommandId, RequestHeader=header))
            return
        for frame in handler(request) or []:
            self.emit(frame)

    # -- SYS -----------------------------------------------------------------------------

    def _SYS_Ping(self, req: Any) -> Reply:
        return [c.SYS.Ping.Rsp(Capabilities=t.MTCapabilities.SYS | t.MTCapabilities.AF
                               | t.MTCapabilities.ZDO | t.MTCapabilities.UTIL
                               | t.MTCapabilities.APP_CNF | t.MTCapabilities.GP)]

    def _SYS_Version(self, req: Any) -> Reply:
        return [c.SYS.Version.Rsp(
            TransportRev=2, ProductId=1, MajorRel=2, MinorRel=7, MaintRel=1,
            CodeRevision=CODE_REVISION,
            BootloaderBuildType=c.sys.BootloaderBuildType.NON_BOOTLOADER_BUILD,
            BootloaderRevision=0xFFFFFFFF)]

    def _SYS_ResetReq(self, req: Any) -> Reply:
        # An AREQ: no response, the boot indication says the stick is back
        self.reset()
        return [self.boot_indication(t.ResetReason.External)]

    def _SYS_SetTxPower(self, req: Any) -> Reply:
        return [c.SYS.SetTxPower.Rsp(StatusOrPower=t.Status.SUCCESS)]

    # OSAL items (the LEGACY table)

    def _SYS_OSALNVLength(self, req: Any) -> Reply:
        return [c.SYS.OSALNVLength.Rsp(ItemLen=len(self.nv.get(req.Id) or b""))]

    def _SYS_OSALNVReadExt(self, req: Any) -> Reply:
        data = self.nv.get(req.Id)
        if data is None:
            return [req.Rsp(Status=t.Status.INVALID_PARAMETER, Value=t.ShortBytes(b""))]
        return [req.Rsp(Status=t.Status.SUCCESS,
                        Value=t.ShortBytes(data[req.Offset:req.Offset + 244]))]

    _SYS_OSALNVRead = _SYS_OSALNVReadExt

    def _SYS_OSALNVWriteExt(self, req: Any) -> Reply:
        data = self.nv.get(req.Id)
        if data is None or req.Offset + len(req.Value) > len(data):
            return [req.Rsp(Status=t.Status.INVALID_PARAMETER)]
        value = bytearray(data)
        value[req.Offset:req.Offset + len(req.Value)] = req.Value
        self.nv.items[(LEGACY, req.Id)] = bytes(value)
        return [req.Rsp(Status=t.Status.SUCCESS)]

    _SYS_OSALNVWrite = _SYS_OSALNVWriteExt

    def _SYS_OSALNVItemInit(self, req: Any) -> Reply:
        if self.nv.get(req.Id) is not None:
            return [req.Rsp(Status=t.Status.SUCCESS)]
        if len(req.Value) > req.ItemLen:
            return [req.Rsp(Status=t.Status.INVALID_PARAMETER)]
        self.nv.items[(LEGACY, req.Id)] = bytes(req.Value).ljust(req.ItemLen, b"\xff")
        # "created, not initialised before": what zigpy-znp expects for a new item
        return [req.Rsp(Status=t.Status.NV_ITEM_UNINIT)]

    def _SYS_OSALNVDelete(self, req: Any) -> Reply:
        data = self.nv.get(req.Id)
        if data is None or len(data) != req.ItemLen:
            return [req.Rsp(Status=t.Status.INVALID_PARAMETER)]
        del self.nv.items[(LEGACY, req.Id)]
        return [req.Rsp(Status=t.Status.SUCCESS)]

    # Z-Stack 3.30 items (tables by item and sub id)

    def _SYS_NVLength(self, req: Any) -> Reply:
        data = self.nv.get(req.SubId, req.ItemId, req.SubId)
        return [c.SYS.NVLength.Rsp(Length=len(data or b""))]

    def _SYS_NVRead(self, req: Any) -> Reply:
        data = self.nv.get(req.SubId, req.ItemId, req.SubId)
        if data is None:
            return [c.SYS.NVRead.Rsp(Status=t.Status.FAILURE, Value=t.ShortBytes(b""))]
        chunk = data[req.Offset:][:min(req.Length, 244)]
        return [c.SYS.NVRead.Rsp(Status=t.Status.SUCCESS, Value=t.ShortBytes(chunk))]

    def _SYS_NVWrite(self, req: Any) -> Reply:
        key = (req.ItemId, req.SubId)
        data = self.nv.items.get(key)
        if data is None or req.Offset + len(req.Value) > len(data):
            return [c.SYS.NVWrite.Rsp(Status=t.Status.FAILURE)]
        value = bytearray(data)
        value[req.Offset:req.Offset + len(req.Value)] = req.Value
        self.nv.items[key] = bytes(value)
        return [c.SYS.NVWrite.Rsp(Status=t.Status.SUCCESS)]

    def _SYS_NVCreate(self, req: Any) -> Reply:
        key = (req.ItemId, req.SubId)
        if key in self.nv.items:
            return [c.SYS.NVCreate.Rsp(Status=t.Status.SUCCESS)]
        self.nv.items[key] = bytes(req.Length)
        return [c.SYS.NVCreate.Rsp(Status=t.Status.NV_ITEM_UNINIT)]

    def _SYS_NVDelete(self, req: Any) -> Reply:
        if self.nv.items.pop((req.ItemId, req.SubId), None) is None:
            return [c.SYS.NVDelete.Rsp(Status=t.Status.NV_OPER_FAILED)]
        return [c.SYS.NVDelete.Rsp(Status=t.Status.SUCCESS)]

    # -- UTIL ----------------------------------------------------------------------------

    def _UTIL_AssocFindDevice(self, req: Any) -> Reply:
        # An empty associated-device struct in memory layout: 36 bytes on a CC2652
        # (padded), 28 on a CC2531; zigpy-znp learns the struct alignment from it
        return [req.Rsp(Device=t.Bytes(b"\xff" * 36))]

    def _UTIL_LEDControl(self, req: Any) -> Reply:
        return [req.Rsp(Status=t.Status.SUCCESS)]

    def _UTIL_GetDeviceInfo(self, req: Any) -> Reply:
        return [req.Rsp(Status=t.Status.SUCCESS, IEEE=self.coordinator.ieee,
                        NWK=0x0000 if self.network_up else 0xFFFE,
                        DeviceType=t.DeviceTypeCapabilities(7), DeviceState=self.state,
                        AssociatedDevices=[])]

    # -- APP_CNF (BDB) -------------------------------------------------------------------

    def _AppConfig_BDBSetChannel(self, req: Any) -> Reply:
        if req.IsPrimary:
            self.primary_channels = req.Channel
        return [req.Rsp(Status=t.Status.SUCCESS)]

    def _AppConfig_BDBStartCommissioning(self, req: Any) -> Reply:
        mode = c.app_config.BDBCommissioningMode
        status = c.app_config.BDBCommissioningStatus
        note = c.AppConfig.BDBCommissioningNotification.Callback
        rsp = req.Rsp(Status=t.Status.SUCCESS)
        if req.Mode != mode.NwkFormation:
            return [rsp]
        if self.nv.formed:
            # The network in NVRAM is resumed; asked to form, Z-Stack reports the formation
            # it skipped as a failure: zigpy-znp takes that as "restored"
            self.state = t.DeviceState.StartedAsCoordinator
            return [rsp,
                    note(Status=status.NetworkRestored, Mode=mode.NONE,
                         RemainingModes=mode.NwkFormation),
                    c.ZDO.StateChangeInd.Callback(State=t.DeviceState.StartedAsCoordinator),
                    note(Status=status.FormationFailure, Mode=mode.NwkFormation,
                         RemainingModes=mode.NONE)]
        channels = self.primary_channels or self.nv.read(OsalNvIds.CHANLIST, t.Channels)
        self.nv.form(channels)
        self.state = t.DeviceState.StartedAsCoordinator
        return [rsp,
                c.ZDO.StateChangeInd.Callback(State=t.DeviceState.StartingAsCoordinator),
                note(Status=status.InProgress, Mode=mode.NwkFormation,
                     RemainingModes=mode.NwkFormation),
                c.ZDO.StateChangeInd.Callback(State=t.DeviceState.StartedAsCoordinator),
                note(Status=status.Success, Mode=mode.NwkFormation, RemainingModes=mode.NONE)]

    # -- AF ------------------------------------------------------------------------------

    def _AF_Register(self, req: Any) -> Reply:
        if req.Endpoint in self.coordinator.endpoints:
            return [req.Rsp(Status=t.Status.APS_DUPLICATE_ENTRY)]
        self.coordinator.endpoints[req.Endpoint] = Endpoint(
            req.Endpoint, profile=req.ProfileId, device_type=req.DeviceId,
            device_version=req.DeviceVersion, in_clusters=list(req.InputClusters),
            out_clusters=list(req.OutputClusters))
        return [req.Rsp(Status=t.Status.SUCCESS)]

    def _AF_DataRequestExt(self, req: Any) -> Reply:
        if not self.network_up:
            return [req.Rsp(Status=t.Status.NWK_INVALID_REQUEST)]
        mode, address = req.DstAddrModeAddress.mode, req.DstAddrModeAddress.address
        zdo = req.DstEndpoint == ZDO_ENDPOINT
        targets = self._targets(mode, address)
        out: Reply = [req.Rsp(Status=t.Status.SUCCESS)]
        if zdo and req.ClusterId == zdo_t.ZDOCmd.Mgmt_Permit_Joining_req and len(req.Data) >= 2:
            self._permit(req.Data[1])
        if not zdo and mode in (t.AddrMode.NWK, t.AddrMode.IEEE):
            # the APS acknowledgement, or its absence
            status = t.Status.SUCCESS if targets else t.Status.MAC_NO_ACK
            out.append(c.AF.DataConfirm.Callback(Status=status, Endpoint=req.SrcEndpoint,
                                                 TSN=req.TSN))
        elif mode == t.AddrMode.Group:
            out.append(c.AF.DataConfirm.Callback(Status=t.Status.SUCCESS,
                                                 Endpoint=req.SrcEndpoint, TSN=req.TSN))
        profile = ZDO_PROFILE if zdo else 0x0104
        aps = aps_frame(profile, req.ClusterId, req.SrcEndpoint, req.DstEndpoint, req.TSN)
        for node in targets:
            for reply in node.handle(aps, bytes(req.Data)):
                out.append(self._incoming(node.nwk, reply))
            if node.leaving and isinstance(node, VirtualDevice):
                out.extend(self._left(node))
        return out

    def _targets(self, mode: t.AddrMode, address: Any) -> list[VirtualNode]:
        joined = self.nv.children()
        members = [d for d in self.devices.values() if d.ieee in joined]
        if mode == t.AddrMode.Broadcast:
            return list(members)
        if mode == t.AddrMode.NWK:
            if address == 0x0000:
                return [self.coordinator]
            return [d for d in members if d.nwk == address]
        if mode == t.AddrMode.IEEE:
            if address == self.coordinator.ieee:
                return [self.coordinator]
            return [d for d in members if d.ieee == address]
        return []

    def _incoming(self, sender: int, message: Message, broadcast: bool = False) -> t.CommandBase:
        """A frame from a node as Z-Stack passes it up: ZDO through the ZDO callback."""
        aps, body = message
        if aps.profileId == ZDO_PROFILE and aps.destinationEndpoint == ZDO_ENDPOINT:
            return c.ZDO.MsgCbIncoming.Callback(
                Src=sender, IsBroadcast=t.Bool(broadcast), ClusterId=aps.clusterId,
                SecurityUse=0, TSN=body[0], MacDst=0xFFFF if broadcast else 0x0000,
                Data=t.Bytes(body[1:]))
        return c.AF.IncomingMsg.Callback(
            GroupId=0x0000, ClusterId=aps.clusterId, SrcAddr=sender,
            SrcEndpoint=aps.sourceEndpoint, DstEndpoint=aps.destinationEndpoint,
            WasBroadcast=t.Bool(broadcast), LQI=LQI, SecurityUse=t.Bool(False),
            TimeStamp=int(time.monotonic() * 1000) & 0xFFFFFFFF, TSN=aps.sequence,
            Data=t.ShortBytes(body), MacSrcAddr=sender, MsgResultRadius=29)

    # -- ZDO -----------------------------------------------------------------------------

    def _ZDO_MsgCallbackRegister(self, req: Any) -> Reply:
        self.zdo_callbacks = True
        return [req.Rsp(Status=t.Status.SUCCESS)]

    def _ZDO_MgmtPermitJoinReq(self, req: Any) -> Reply:
        if not self.network_up:
            return [req.Rsp(Status=t.Status.NWK_INVALID_REQUEST)]
        src = 0x0000 if req.AddrMode == t.AddrMode.Broadcast else req.Dst
        if req.AddrMode == t.AddrMode.Broadcast or req.Dst == 0x0000:
            self._permit(req.Duration)
        return [req.Rsp(Status=t.Status.SUCCESS),
                c.ZDO.MgmtPermitJoinRsp.Callback(Src=src, Status=t.ZDOStatus.SUCCESS)]

    def _permit(self, seconds: int) -> None:
        self.permit_until = time.monotonic() + seconds if seconds else 0.0

    def _ZDO_ExtRouteChk(self, req: Any) -> Reply:
        return [req.Rsp(Status=c.zdo.RoutingStatus.SUCCESS)]

    def _ZDO_ExtRouteDisc(self, req: Any) -> Reply:
        return [req.Rsp(Status=t.Status.SUCCESS)]

    # -- the radio side --------------------------------------------------------------------

    def join(self, device: VirtualDevice) -> None:
        """Trust-centre join (Z-Stack's TC device indication), then the Device_annce."""
        if not self.permit_joining:
            raise RuntimeError("joining is not permitted: the host must call permit first")
        self.devices[device.nwk] = device
        self.nv.add_child(device.ieee, device.nwk)
        self.emit(c.ZDO.TCDevInd.Callback(SrcNwk=device.nwk, SrcIEEE=device.ieee,
                                          ParentNwk=0x0000))
        aps, body = device.announce()
        self.emit(c.ZDO.EndDeviceAnnceInd.Callback(
            Src=device.nwk, NWK=device.nwk, IEEE=device.ieee,
            Capabilities=MAC_CAPABILITIES(body[-1])))
        self.emit(self._incoming(device.nwk, (aps, body), broadcast=True))

    def deliver(self, device: VirtualDevice, message: Message) -> None:
        """A frame the device sends on its own reaches the coordinator."""
        if device.ieee not in self.nv.children():
            raise RuntimeError(f"{device.ieee} has not joined")
        if not self.network_up:
            raise RuntimeError("the network is not up: nothing can be received")
        self.emit(self._incoming(device.nwk, message))

    def leave(self, device: VirtualDevice) -> None:
        for frame in self._left(device):
            self.emit(frame)

    def _left(self, device: VirtualDevice) -> Iterable[t.CommandBase]:
        device.leaving = False
        if not self.nv.remove_child(device.ieee):
            return []
        return [c.ZDO.LeaveInd.Callback(NWK=device.nwk, IEEE=device.ieee, Request=False,
                                        Remove=False, Rejoin=False)]


def preform(nv: NvState, *, channel: int, pan_id: int, extended_pan_id: str,
            network_key: bytes) -> None:
    """Write a formed network into NVRAM, as a stick formed by zigpy-znp on an earlier run
    carries it (including zigpy-znp's own "configured" and migration markers)."""
    epid = t.EUI64.convert(extended_pan_id)
    nv.write_network(channel=channel, channels=t.Channels.from_channel_list([channel]),
                     pan_id=pan_id, epid=epid, key=t.KeyData(network_key), frame_counter=5000)
    nv.put(OsalNvIds.PANID, t.uint16_t(pan_id))
    nv.put(OsalNvIds.APS_USE_EXT_PANID, epid)
    nv.put(OsalNvIds.PRECFGKEY, t.KeyData(network_key))
    nv.put(OsalNvIds.CHANLIST, t.Channels.from_channel_list([channel]))
    nv.put(OsalNvIds.HAS_CONFIGURED_ZSTACK3, const.ZSTACK_CONFIGURE_SUCCESS)
    nv.put(OsalNvIds.ZIGPY_ZNP_MIGRATION_ID, t.uint8_t(1))



