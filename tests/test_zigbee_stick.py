"""The unmodified bellows/zigpy stack against the simulated EZSP stick.

No mock: bellows' own ControllerApplication opens ``socket://127.0.0.1:PORT``, speaks
ASH and EZSP to :mod:`tests.ezsp_stick`, which stands in for the Silicon Labs stick that
cannot be attached here. These tests prove the stick is faithful enough for the
gateway's Zigbee tests to rely on it: start and form, permit, a device joining and being
interviewed, a report arriving, and the link dying in the two ways a real stick does.
The last ones check its ASH framing directly against bellows' own frame classes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zigpy.config as zconf
import zigpy.device
from bellows.ash import (
    AckFrame,
    AshFrame,
    AshProtocol,
    DataFrame,
    NakFrame,
    NcpFailure,
    RStackFrame,
    RstFrame,
    parse_frame,
)
from bellows.types import NcpResetCode
from bellows.zigbee.application import ControllerApplication

from tests.ezsp_stick import EzspStick, VirtualDevice
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

TEMPERATURE = 0x0402
HUMIDITY = 0x0405
SENSOR_IEEE = "00:0d:6f:00:0a:bc:de:f1"
SENSOR_NWK = 0x4A1B


class Events:
    """A zigpy application listener that records what the application reports."""

    def __init__(self) -> None:
        self.joined: list[zigpy.device.Device] = []
        self.initialized: list[zigpy.device.Device] = []
        self.lost: list[Exception] = []

    def device_joined(self, device: zigpy.device.Device) -> None:
        self.joined.append(device)

    def device_initialized(self, device: zigpy.device.Device) -> None:
        self.initialized.append(device)

    def connection_lost(self, exc: Exception) -> None:
        self.lost.append(exc)


def app_config(stick: EzspStick, db: Path) -> dict[str, Any]:
    return {
        zconf.CONF_DEVICE: {zconf.CONF_DEVICE_PATH: stick.url},
        zconf.CONF_DATABASE: str(db),
        # A fixed channel: forming on a random one would first run an energy scan
        zconf.CONF_NWK: {zconf.CONF_NWK_CHANNEL: 15},
    }


@pytest.fixture
async def stick() -> AsyncIterator[EzspStick]:
    async with EzspStick() as s:
        yield s


@pytest.fixture
async def formed_stick(stick: EzspStick) -> EzspStick:
    """A stick that already carries a network, so starting skips formation."""
    stick.preform(channel=20, pan_id=0x1A62)
    return stick


async def start_app(stick: EzspStick, db: Path, events: Events,
                    auto_form: bool = True) -> ControllerApplication:
    app = await ControllerApplication.new(app_config(stick, db), auto_form=auto_form)
    app.add_listener(events)
    return app


async def join_sensor(stick: EzspStick, app: ControllerApplication,
                      events: Events) -> tuple[VirtualDevice, zigpy.device.Device]:
    sensor = VirtualDevice(SENSOR_IEEE, SENSOR_NWK, model="TH01", manufacturer="Acme Sensors",
                           attributes={(1, TEMPERATURE): {0x0000: 2150},
                                       (1, HUMIDITY): {0x0000: 4500}})
    await app.permit(60)
    await stick.wait_for(lambda: stick.permit_joining, 5, "joining open")
    stick.join(sensor)
    await eventually(lambda: any(str(d.ieee) == SENSOR_IEEE for d in events.initialized), 15,
                     "device_initialized")
    return sensor, app.get_device(ieee=zigpy.types.EUI64.convert(SENSOR_IEEE))


async def test_bellows_forms_a_network_on_a_blank_stick(stick: EzspStick,
                                                        tmp_path: Path) -> None:
    events = Events()
    app = await start_app(stick, tmp_path / "zigbee.db", events)
    try:
        assert stick.nv.formed and stick.network_up
        assert stick.ncp.commands["formNetwork"] == 1
        # What zigpy believes is what the stick holds
        info = app.state.network_info
        assert info.channel == 15 == stick.nv.params.radioChannel
        assert info.pan_id == stick.nv.params.panId
        assert info.network_key.key == stick.nv.network_key
        assert app.state.node_info.ieee == stick.nv.eui64
        assert app.state.node_info.nwk == 0x0000
        # bellows interviewed the coordinator through the stick's own ZDO
        assert app._device.node_desc is not None and app._device.node_desc.is_coordinator
        # Every command bellows sent was understood
        assert dict(stick.ncp.unknown) == {}
        assert sum(stick.ncp.commands.values()) >= 100
        assert len(stick.ncp.commands) >= 25
    finally:
        await app.shutdown()


async def test_joined_device_is_interviewed_and_its_report_reaches_zigpy(
        formed_stick: EzspStick, tmp_path: Path) -> None:
    events = Events()
    app = await start_app(formed_stick, tmp_path / "zigbee.db", events)
    try:
        # zigpy closes joining at startup, and the stick then refuses a join
        assert not formed_stick.permit_joining
        with pytest.raises(RuntimeError, match="not permitted"):
            formed_stick.join(VirtualDevice(SENSOR_IEEE, SENSOR_NWK))
        sensor, device = await join_sensor(formed_stick, app, events)
        assert formed_stick.ncp.commands["permitJoining"] >= 2
        assert any(str(d.ieee) == SENSOR_IEEE for d in events.joined)
        # The interview went over the air: node descriptor, endpoints, descriptors, Basic
        asked = [r[1] for r in sensor.received if r[0] == "zdo"]
        assert asked[:3] == ["Node_Desc_req", "Active_EP_req", "Simple_Desc_req"]
        basic_reads = [r[3].attribute_ids for r in sensor.received
                       if r[:3] == ("zcl", 0x0000, "Read_Attributes")]
        assert basic_reads and {4, 5} <= set(basic_reads[0])
        assert device.model == "TH01" and device.manufacturer == "Acme Sensors"
        assert device.node_desc is not None and device.node_desc.is_end_device
        assert sorted(device.endpoints[1].in_clusters) == [0x0000, 0x0001, TEMPERATURE,
                                                           HUMIDITY]

        reports: list[Any] = []
        device.endpoints[1].in_clusters[TEMPERATURE].on_event("attribute_report",
                                                               reports.append)
        formed_stick.report(sensor, 1, TEMPERATURE, {0x0000: 2237})
        await eventually(lambda: bool(reports), 5, "attribute_report")
        assert reports[0].attribute_name == "measured_value"
        assert reports[0].value == 2237
        assert reports[0].device_ieee == SENSOR_IEEE
    finally:
        await app.shutdown()


async def test_stick_dropping_the_link_fires_connection_lost(formed_stick: EzspStick,
                                                             tmp_path: Path) -> None:
    events = Events()
    app = await start_app(formed_stick, tmp_path / "zigbee.db", events)
    try:
        assert events.lost == []
        formed_stick.drop_link()
        await eventually(lambda: bool(events.lost), 5, "connection_lost")
        assert formed_stick.link is None
    finally:
        await app.shutdown()


async def test_unsolicited_reset_fires_connection_lost_with_the_reset_code(
        formed_stick: EzspStick, tmp_path: Path) -> None:
    events = Events()
    app = await start_app(formed_stick, tmp_path / "zigbee.db", events)
    try:
        formed_stick.unsolicited_reset()
        await eventually(lambda: bool(events.lost), 5, "connection_lost")
        assert isinstance(events.lost[0], NcpFailure)
        assert not formed_stick.network_up  # the NCP rebooted: its stack is down
    finally:
        await app.shutdown()


async def test_restarted_stack_keeps_the_device_and_receives_its_reports(
        formed_stick: EzspStick, tmp_path: Path) -> None:
    db = tmp_path / "zigbee.db"
    events = Events()
    app = await start_app(formed_stick, db, events)
    try:
        sensor, _ = await join_sensor(formed_stick, app, events)
        formed_stick.drop_link()
        await eventually(lambda: bool(events.lost), 5, "connection_lost")
    finally:
        await app.shutdown()

    # What a supervisor does after connection_lost: start again on the same stick and db
    events2 = Events()
    app2 = await start_app(formed_stick, db, events2, auto_form=False)
    try:
        assert formed_stick.connections == 2
        # The network came back from the stick's NVRAM: started, not formed again
        assert formed_stick.ncp.commands["formNetwork"] == 0
        assert formed_stick.ncp.commands["networkInit"] >= 2
        assert app2.state.network_info.channel == 20
        assert app2.state.network_info.pan_id == 0x1A62
        assert dict(formed_stick.ncp.unknown) == {}
        device = app2.get_device(ieee=zigpy.types.EUI64.convert(SENSOR_IEEE))
        assert device.model == "TH01"  # from zigpy's database, no second interview
        reports: list[Any] = []
        device.endpoints[1].in_clusters[HUMIDITY].on_event("attribute_report", reports.append)
        formed_stick.report(sensor, 1, HUMIDITY, {0x0000: 5120})
        await eventually(lambda: bool(reports), 5, "attribute_report after restart")
        assert reports[0].value == 5120
    finally:
        await app2.shutdown()


# -- ASH framing, byte by byte, with bellows' own frame classes on the host side -------------


class RawHost:
    """A bare ASH host on the stick's socket: bellows' frames, no bellows state machine."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, frame: AshFrame, prefix: bytes = b"") -> None:
        self.writer.write(prefix + AshProtocol._stuff_bytes(frame.to_bytes()) + b"\x7e")

    async def receive(self, within: float = 2.0) -> AshFrame:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\x7e"), within)
        return parse_frame(AshProtocol._unstuff_bytes(raw[:-1]))

    async def reset(self) -> RStackFrame:
        self.send(RstFrame(), prefix=b"\x1a" * 32)
        frame = await self.receive()
        assert isinstance(frame, RStackFrame)
        return frame


@pytest.fixture
async def raw_host() -> AsyncIterator[tuple[EzspStick, RawHost]]:
    # Silent on connect, like a USB stick: the host resets it
    async with EzspStick(announce_boot=None) as s:
        reader, writer = await asyncio.open_connection(s.host, s.port)
        try:
            yield s, RawHost(reader, writer)
        finally:
            writer.close()
            await writer.wait_closed()


LEGACY_VERSION_4 = bytes([0x00, 0x00, 0x00, 0x04])  # seq 0, version(desiredProtocolVersion=4)


async def test_stick_answers_reset_and_a_legacy_version_request(
        raw_host: tuple[EzspStick, RawHost]) -> None:
    stick, host = raw_host
    rstack = await host.reset()
    assert rstack.reset_code == NcpResetCode.RESET_SOFTWARE
    host.send(DataFrame(frm_num=0, re_tx=False, ack_num=0, ezsp_frame=LEGACY_VERSION_4))
    ack = await host.receive()
    assert isinstance(ack, AckFrame) and ack.ack_num == 1
    data = await host.receive()
    assert isinstance(data, DataFrame) and data.frm_num == 0
    # Legacy response: seq, frame control, id, then protocol 13, stack type, stack version
    assert data.ezsp_frame[:4] == bytes([0x00, 0x80, 0x00, 13])


async def test_stick_acks_a_retransmission_without_running_the_command_twice(
        raw_host: tuple[EzspStick, RawHost]) -> None:
    stick, host = raw_host
    await host.reset()
    frame = DataFrame(frm_num=0, re_tx=False, ack_num=0, ezsp_frame=LEGACY_VERSION_4)
    host.send(frame)
    first = [await host.receive(), await host.receive()]
    assert [type(f) for f in first] == [AckFrame, DataFrame]
    # The host missed our ACK and sends the frame again, flagged as a retransmission
    host.send(frame.replace(re_tx=True, ack_num=1))
    again = await host.receive()
    assert isinstance(again, AckFrame) and again.ack_num == 1
    with pytest.raises(TimeoutError):
        await host.receive(within=1.0)  # no second response, nor a resent one (0.4 s)
    assert stick.ncp.commands["version"] == 1


async def test_stick_naks_a_corrupted_frame_then_takes_the_good_one(
        raw_host: tuple[EzspStick, RawHost]) -> None:
    stick, host = raw_host
    await host.reset()
    good = DataFrame(frm_num=0, re_tx=False, ack_num=0, ezsp_frame=LEGACY_VERSION_4)
    raw = bytearray(good.to_bytes())
    raw[-1] ^= 0xFF  # break the CRC
    host.writer.write(AshProtocol._stuff_bytes(bytes(raw)) + b"\x7e")
    nak = await host.receive()
    assert isinstance(nak, NakFrame) and nak.ack_num == 0
    assert stick.ncp.commands["version"] == 0
    host.send(good.replace(re_tx=True))
    assert isinstance(await host.receive(), AckFrame)
    assert isinstance(await host.receive(), DataFrame)
    assert stick.ncp.commands["version"] == 1


async def test_stick_retransmits_its_frame_until_the_host_acknowledges(
        raw_host: tuple[EzspStick, RawHost]) -> None:
    stick, host = raw_host
    await host.reset()
    host.send(DataFrame(frm_num=0, re_tx=False, ack_num=0, ezsp_frame=LEGACY_VERSION_4))
    assert isinstance(await host.receive(), AckFrame)
    first = await host.receive()
    assert isinstance(first, DataFrame) and not first.re_tx
    # We stay silent: the stick sends the same frame again, flagged as a retransmission
    second = await host.receive()
    assert isinstance(second, DataFrame) and second.re_tx
    assert second.frm_num == first.frm_num and second.ezsp_frame == first.ezsp_frame
    host.send(AckFrame(res=0, ncp_ready=False, ack_num=1))
    with pytest.raises(TimeoutError):
        await host.receive(within=1.0)  # acknowledged: nothing resent after 0.4 s
