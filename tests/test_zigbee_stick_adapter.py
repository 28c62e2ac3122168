"""The gateway's Zigbee adapter on bellows, against the simulated EZSP stick.

The adapter runs in-process under the real supervisor, pushing into the real pipeline
and SQLite outbox; bellows opens ``socket://127.0.0.1:PORT`` with radio type ``ezsp``.
Only the stick is simulated (:mod:`tests.ezsp_stick`): a Silicon Labs stick cannot be
attached here. The stick drops the link and reboots on its own; the supervisor must
bring the adapter back on the same network and readings must flow again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.adapters.base import Adapter, AdapterContext
from gateway.adapters.supervisor import Supervisor
from gateway.adapters.zigbee import ZigbeeAdapter
from gateway.adapters.zigbee.config import ZigbeeConfig
from gateway.core.pipeline import AdapterSink, Pipeline, SinkCounters
from gateway.reading import Command, Reading
from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox
from tests.ezsp_stick import Endpoint, EzspStick, VirtualDevice
from tests.waiting import eventually
from tests.znp_stick import ZnpStick

pytestmark = pytest.mark.timeout(90)

POWER, ON_OFF, LEVEL, TEMPERATURE, HUMIDITY = 0x0001, 0x0006, 0x0008, 0x0402, 0x0405
SENSOR_IEEE = "00:0d:6f:00:0a:bc:de:f1"
SENSOR_ID = f"zigbee:{SENSOR_IEEE}"
PLUG_IEEE = "00:0d:6f:00:0b:11:22:33"
PLUG_ID = f"zigbee:{PLUG_IEEE}"
IAS_ZONE = 0x0500
DOOR_IEEE = "00:0d:6f:00:0c:44:55:66"
DOOR_ID = f"zigbee:{DOOR_IEEE}"


class Directory:
    """Keeps what the adapter tells the device registry."""

    def __init__(self) -> None:
        self.info: dict[str, dict[str, Any]] = {}

    def declare(self, device: str, **info: Any) -> None:
        self.info.setdefault(device, {}).update(info)

    def knows(self, device: str) -> bool:
        return device in self.info

    def remove(self, device: str) -> bool:
        return self.info.pop(device, None) is not None


class Gateway:
    """Outbox → pipeline → supervised Zigbee adapter, as the daemon wires them."""

    def __init__(self, outbox: Outbox, supervisor: Supervisor, directory: Directory) -> None:
        self.outbox = outbox
        self.supervisor = supervisor
        self.directory = directory
        self.durable: list[Reading] = []
        self._after = 0

    @property
    def adapter(self) -> Adapter | None:
        return self.supervisor.adapters.get("zigbee")

    async def refresh(self) -> list[Reading]:
        """Readings committed to the outbox since the last call."""
        for row in await self.outbox.read_telemetry(self._after, 10_000):
            self.durable.extend(row.readings)
            self._after = row.id
        return self.durable

    async def wait_reading(self, metric: str, value: float, within: float = 10.0,
                           device: str = SENSOR_ID, after: int = 0) -> Reading:
        """The first durable reading of ``metric`` = ``value``, from ``durable[after:]``."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for r in (await self.refresh())[after:]:
                same = (r.value is value if isinstance(value, bool)
                        else r.value == pytest.approx(value))
                if r.device == device and r.metric == metric and same:
                    return r
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no durable {metric}={value} for {device} within {within} s; "
                           f"have {[(r.device, r.metric, r.value) for r in self.durable]}")

    async def wait_restarted(self, previous: Adapter, stick: EzspStick, connections: int,
                             within: float = 20.0) -> Adapter:
        """The supervisor replaced ``previous`` and the new adapter has the network up."""
        def back() -> bool:
            a = self.adapter
            return (a is not None and a is not previous
                    and self.supervisor.states["zigbee"].state == "running"
                    and stick.connections >= connections and stick.network_up)

        await eventually(back, within, "adapter running again on the stick")
        assert self.adapter is not None
        return self.adapter


@pytest.fixture
async def stick() -> AsyncIterator[EzspStick]:
    async with EzspStick() as s:
        s.preform(channel=20, pan_id=0x1A62)
        yield s


#: the simulated sticks, each behind its radio library
Stick = EzspStick | ZnpStick


@pytest.fixture
async def gateway(stick: EzspStick, tmp_path: Path) -> AsyncIterator[Gateway]:
    config = ZigbeeConfig(type="zigbee", name="zigbee", radio_type="ezsp", port=stick.url,
                          channel=20)
    async for gw in run_gateway(config, tmp_path):
        yield gw


async def run_gateway(config: ZigbeeConfig, tmp_path: Path) -> AsyncIterator[Gateway]:
    """The adapter on ``config``'s stick under the real supervisor, pipeline and outbox."""
    metrics = CollectorRegistry()
    outbox = await Outbox.open(tmp_path / "outbox.db", StoreConfig(), metrics=metrics)
    pipeline = Pipeline(outbox)
    directory = Directory()
    ctx = AdapterContext(name="zigbee", sink=AdapterSink(pipeline, "zigbee",
                                                         SinkCounters(metrics)),
                         state_dir=tmp_path / "state", metrics=metrics, devices=directory)
    # Short backoff keeps the test quick; the policy itself is the daemon's
    supervisor = Supervisor({"zigbee": ("zigbee", lambda: ZigbeeAdapter(config, ctx))},
                            metrics, backoff_initial=0.2, backoff_max=1.0)
    await supervisor.start(wait=20.0)
    try:
        yield Gateway(outbox, supervisor, directory)
    finally:
        await supervisor.stop()
        await outbox.close()


async def pair_sensor(stick: Stick, gw: Gateway) -> VirtualDevice:
    adapter = gw.adapter
    assert isinstance(adapter, ZigbeeAdapter)
    sensor = VirtualDevice(SENSOR_IEEE, 0x4A1B, model="TH01", manufacturer="Acme Sensors",
                           attributes={(1, TEMPERATURE): {0x0000: 2150},
                                       (1, HUMIDITY): {0x0000: 4500},
                                       (1, POWER): {0x0020: 30, 0x0021: 180}})
    await adapter.permit_join(60)
    await stick.wait_for(lambda: stick.permit_joining, 5, "joining open")
    stick.join(sensor)
    # The adapter binds and configures reporting once zigpy's interview is over
    await eventually(lambda: (1, TEMPERATURE, 0x0000) in sensor.reporting
                     and (1, HUMIDITY, 0x0000) in sensor.reporting, 20, "reporting configured")
    await eventually(lambda: gw.directory.info.get(SENSOR_ID, {}).get("interview") == "configured",
                     10, "device marked configured")
    return sensor


async def test_report_from_a_paired_device_becomes_a_durable_reading(
        stick: EzspStick, gateway: Gateway) -> None:
    assert gateway.supervisor.states["zigbee"].state == "running"
    assert stick.network_up and stick.ncp.commands["formNetwork"] == 0
    sensor = await pair_sensor(stick, gateway)

    info = gateway.directory.info[SENSOR_ID]
    assert info["model"] == "TH01" and info["manufacturer"] == "Acme Sensors"
    assert info["type"] == "battery"
    binds = [r for r in sensor.received if r[:2] == ("zdo", "Bind_req")]
    assert {r[4] for r in binds} >= {TEMPERATURE, HUMIDITY}
    # Values read right after configuration are readings already, scaled and with units
    first = await gateway.wait_reading("temperature", 21.5)
    assert first.unit == "Cel"
    assert (await gateway.wait_reading("battery", 90)).unit == "%EL"

    stick.report(sensor, 1, TEMPERATURE, {0x0000: 2237})
    reported = await gateway.wait_reading("temperature", 22.37)
    assert reported.unit == "Cel"
    assert dict(stick.ncp.unknown) == {}


async def test_adapter_reconnects_after_the_link_drops_and_readings_flow_again(
        stick: EzspStick, gateway: Gateway) -> None:
    sensor = await pair_sensor(stick, gateway)
    before = gateway.adapter
    assert before is not None

    stick.drop_link()
    after = await gateway.wait_restarted(before, stick, connections=2)
    state = gateway.supervisor.states["zigbee"]
    assert state.restarts == 1 and "connection lost" in (state.last_error or "")
    # Same network, from the stick's NVRAM: nothing was formed again
    assert stick.ncp.commands["formNetwork"] == 0
    assert isinstance(after, ZigbeeAdapter) and after.app is not None
    assert after.app.state.network_info.pan_id == 0x1A62

    stick.report(sensor, 1, HUMIDITY, {0x0000: 5120})
    reading = await gateway.wait_reading("humidity", 51.2)
    assert reading.unit == "%RH"


async def test_adapter_recovers_from_an_unsolicited_stick_reset(
        stick: EzspStick, gateway: Gateway) -> None:
    sensor = await pair_sensor(stick, gateway)
    before = gateway.adapter
    assert before is not None

    stick.unsolicited_reset()
    await gateway.wait_restarted(before, stick, connections=2)
    assert gateway.supervisor.states["zigbee"].restarts == 1
    assert stick.ncp.commands["formNetwork"] == 0

    stick.report(sensor, 1, TEMPERATURE, {0x0000: -512})
    reading = await gateway.wait_reading("temperature", -5.12)
    assert reading.unit == "Cel"


async def pair_plug(stick: EzspStick, gw: Gateway) -> VirtualDevice:
    adapter = gw.adapter
    assert isinstance(adapter, ZigbeeAdapter)
    plug = VirtualDevice(PLUG_IEEE, 0x6E01, model="PLUG1", manufacturer="Acme Power",
                         mains_powered=True,
                         endpoints=[Endpoint(1, device_type=0x0101,
                                             in_clusters=[0x0000, ON_OFF, LEVEL])],
                         attributes={(1, ON_OFF): {0x0000: False}, (1, LEVEL): {0x0000: 0}})
    await adapter.permit_join(60)
    await stick.wait_for(lambda: stick.permit_joining, 5, "joining open")
    stick.join(plug)
    await eventually(lambda: (1, ON_OFF, 0x0000) in plug.reporting, 20, "reporting configured")
    return plug


async def test_on_off_and_level_commands_reach_the_plug_and_come_back_as_readings(
        stick: EzspStick, gateway: Gateway) -> None:
    plug = await pair_plug(stick, gateway)

    # Values read after pairing (off, level 0) are readings already: look past them
    await gateway.wait_reading("on_off", False, device=PLUG_ID)
    seen = len(await gateway.refresh())

    result = await gateway.supervisor.send(Command(PLUG_ID, "on"))
    assert (result.ok, result.status) == (True, "delivered"), result
    assert plug.attributes[(1, ON_OFF)][0x0000] is True
    # The plug reports its new state, which becomes a reading like any other
    await gateway.wait_reading("on_off", True, device=PLUG_ID, after=seen)

    result = await gateway.supervisor.send(Command(PLUG_ID, "level", {"level": 50}))
    assert result.status == "delivered", result
    assert plug.attributes[(1, LEVEL)][0x0000] == 127
    await gateway.wait_reading("level", 50.0, device=PLUG_ID, after=seen)

    seen = len(await gateway.refresh())
    result = await gateway.supervisor.send(Command(PLUG_ID, "off"))
    assert result.status == "delivered", result
    assert plug.attributes[(1, ON_OFF)][0x0000] is False
    await gateway.wait_reading("on_off", False, device=PLUG_ID, after=seen)

    gone = await gateway.supervisor.send(Command("zigbee:00:00:00:00:00:00:99:99", "on"))
    assert gone.status == "unknown_device"


async def test_removed_device_is_asked_to_leave_and_is_forgotten(
        stick: EzspStick, gateway: Gateway) -> None:
    plug = await pair_plug(stick, gateway)
    adapter = gateway.adapter
    assert isinstance(adapter, ZigbeeAdapter)
    assert plug.ieee in stick.nv.children

    result = await adapter.remove(PLUG_ID)
    assert result.status == "delivered", result
    leaves = [r for r in plug.received if r[:2] == ("zdo", "Mgmt_Leave_req")]
    assert leaves and leaves[0][2] == plug.ieee
    assert PLUG_ID not in gateway.directory.info  # the device registry forgot it
    # The stick took it off the network, and the gateway forgets it (zigpy drops the
    # device in the background, once its own leave request has been tried)
    await eventually(lambda: plug.ieee not in stick.nv.children, 5, "plug gone from the stick")
    assert adapter.app is not None
    await eventually(lambda: plug.ieee not in adapter.app.devices, 10, "plug gone from zigpy")
    gone = await gateway.supervisor.send(Command(PLUG_ID, "on"))
    assert gone.status == "unknown_device"
    assert dict(stick.ncp.unknown) == {}


async def test_device_leaving_on_its_own_is_declared_left(
        stick: EzspStick, gateway: Gateway) -> None:
    sensor = await pair_sensor(stick, gateway)
    stick.leave(sensor)  # its reset button: the stick reports "device left" to the host
    await eventually(lambda: gateway.directory.info[SENSOR_ID].get("interview") == "left", 5,
                     "device left declared")
    assert sensor.ieee not in stick.nv.children


async def test_door_sensor_is_enrolled_and_its_zone_status_becomes_contact_readings(
        stick: EzspStick, gateway: Gateway) -> None:
    adapter = gateway.adapter
    assert isinstance(adapter, ZigbeeAdapter)
    door = VirtualDevice(DOOR_IEEE, 0x7A10, model="DS01", manufacturer="Acme Security",
                         endpoints=[Endpoint(1, device_type=0x0402,
                                             in_clusters=[0x0000, POWER, IAS_ZONE])],
                         attributes={(1, IAS_ZONE): {0x0000: 0, 0x0001: 0x0015,
                                                     0x0002: 0x0000}})
    await adapter.permit_join(60)
    await stick.wait_for(lambda: stick.permit_joining, 5, "joining open")
    stick.join(door)
    zone = door.attributes[(1, IAS_ZONE)]
    # The adapter writes itself in as the CIE and sends an enroll response
    await eventually(lambda: zone.get(0x0000) == 1, 20, "zone enrolled")
    assert zone[0x0010] == stick.nv.eui64
    await gateway.wait_reading("contact", True, device=DOOR_ID)  # read at pairing: closed

    seen = len(await gateway.refresh())
    stick.send_command(door, 1, IAS_ZONE, 0x00, zone_status=0x0001, extended_status=0,
                       zone_id=0, delay=0)  # alarm 1: the door opened
    await gateway.wait_reading("contact", False, device=DOOR_ID, after=seen)
    seen = len(await gateway.refresh())
    stick.send_command(door, 1, IAS_ZONE, 0x00, zone_status=0x0004, extended_status=0,
                       zone_id=0, delay=0)  # closed again, but tampered with
    await gateway.wait_reading("contact", True, device=DOOR_ID, after=seen)
    await gateway.wait_reading("tamper", True, device=DOOR_ID, after=seen)
