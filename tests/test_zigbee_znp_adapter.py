"""The gateway's Zigbee adapter on zigpy-znp, against the simulated Z-Stack stick.

The adapter runs in-process under the real supervisor, pushing into the real pipeline
and SQLite outbox; the unmodified zigpy-znp opens ``socket://127.0.0.1:PORT`` with radio
type ``znp``. Only the stick is simulated (:mod:`tests.znp_stick`): a TI CC2652 stick
cannot be attached here.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.adapters.zigbee import ZigbeeAdapter
from gateway.adapters.zigbee.config import ZigbeeConfig
from tests.test_zigbee_stick_adapter import (
    SENSOR_ID,
    Gateway,
    pair_sensor,
    run_gateway,
)
from tests.znp_stick import ZnpStick

pytestmark = pytest.mark.timeout(60)

TEMPERATURE, HUMIDITY = 0x0402, 0x0405


async def _gateway(stick: ZnpStick, tmp_path: Path) -> AsyncIterator[Gateway]:
    config = ZigbeeConfig(type="zigbee", name="zigbee", radio_type="znp", port=stick.url,
                          channel=20)
    assert config.flow_control == "none"  # the znp default: MT frames are binary
    async for gw in run_gateway(config, tmp_path):
        yield gw


@pytest.fixture
async def stick() -> AsyncIterator[ZnpStick]:
    async with ZnpStick() as s:
        s.preform(channel=20, pan_id=0x1A62)
        yield s


@pytest.fixture
async def gateway(stick: ZnpStick, tmp_path: Path) -> AsyncIterator[Gateway]:
    async for gw in _gateway(stick, tmp_path):
        yield gw


async def test_join_interview_and_reports_become_durable_readings_over_znp(
        stick: ZnpStick, gateway: Gateway) -> None:
    assert gateway.supervisor.states["zigbee"].state == "running"
    assert stick.network_up
    # The network came from the stick's NVRAM: zigpy-znp formed nothing
    assert stick.zstack.commands["AppConfig.BDBSetChannel"] == 0
    sensor = await pair_sensor(stick, gateway)

    info = gateway.directory.info[SENSOR_ID]
    assert info["model"] == "TH01" and info["manufacturer"] == "Acme Sensors"
    assert info["type"] == "battery"
    # The interview went over the air through Z-Stack: ZDO, then Basic cluster reads
    zdo = {r[1] for r in sensor.received if r[0] == "zdo"}
    assert {"Node_Desc_req", "Active_EP_req", "Simple_Desc_req", "Bind_req"} <= zdo
    assert any(r[:3] == ("zcl", 0x0000, "Read_Attributes") for r in sensor.received)
    assert sensor.ieee in stick.children

    first = await gateway.wait_reading("temperature", 21.5)
    assert first.unit == "Cel"
    assert (await gateway.wait_reading("battery", 90)).unit == "%EL"

    stick.report(sensor, 1, TEMPERATURE, {0x0000: 2237})
    assert (await gateway.wait_reading("temperature", 22.37)).unit == "Cel"
    stick.report(sensor, 1, HUMIDITY, {0x0000: 5120})
    assert (await gateway.wait_reading("humidity", 51.2)).unit == "%RH"
    assert dict(stick.zstack.unknown) == {}


async def test_adapter_reconnects_after_the_link_drops_and_readings_flow_again(
        stick: ZnpStick, gateway: Gateway) -> None:
    sensor = await pair_sensor(stick, gateway)
    before = gateway.adapter
    assert before is not None

    stick.drop_link()
    after = await gateway.wait_restarted(before, stick, connections=2)  # type: ignore[arg-type]
    state = gateway.supervisor.states["zigbee"]
    assert state.restarts == 1
    assert isinstance(after, ZigbeeAdapter) and after.app is not None
    assert after.app.state.network_info.pan_id == 0x1A62
    assert stick.zstack.commands["AppConfig.BDBSetChannel"] == 0

    stick.report(sensor, 1, HUMIDITY, {0x0000: 6150})
    assert (await gateway.wait_reading("humidity", 61.5)).unit == "%RH"


async def test_blank_stick_is_formed_on_the_configured_channel(tmp_path: Path) -> None:
    async with ZnpStick() as stick:
        started = time.monotonic()
        async for gw in _gateway(stick, tmp_path):
            adapter = gw.adapter
            assert isinstance(adapter, ZigbeeAdapter) and adapter.app is not None
            info = adapter.app.state.network_info
            assert info.channel == 20
            assert time.monotonic() - started < 20
            # zigpy-znp formed a network, then wrote its own settings into NVRAM
            assert stick.nv.formed and stick.nv.nib.nwkLogicalChannel == 20
            assert stick.nv.nib.nwkPanId == info.pan_id
            assert stick.zstack.commands["AppConfig.BDBStartCommissioning"] >= 2
            assert dict(stick.zstack.unknown) == {}
