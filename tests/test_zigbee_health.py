"""Zigbee network health on bellows and the simulated EZSP stick: each device's LQI and
RSSI as readings (rate-limited), the network map from the routers' neighbour tables, and
the energy scan of channels with a recommendation."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.zigbee import ZigbeeAdapter
from gateway.adapters.zigbee.config import ZigbeeConfig
from tests.ezsp_stick import EzspStick, VirtualDevice
from tests.test_zigbee_stick_adapter import (
    HUMIDITY,
    POWER,
    SENSOR_ID,
    SENSOR_IEEE,
    TEMPERATURE,
    Gateway,
    run_gateway,
)
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def stick() -> AsyncIterator[EzspStick]:
    async with EzspStick() as s:
        s.preform(channel=20, pan_id=0x1A62)
        yield s


@contextlib.asynccontextmanager
async def started(stick: EzspStick, tmp_path: Path, **options: Any) -> AsyncIterator[Gateway]:
    """The adapter on ``stick`` under the real supervisor, pipeline and outbox."""
    config = ZigbeeConfig(type="zigbee", name="zigbee", radio_type="ezsp", port=stick.url,
                          channel=20, **options)
    running = run_gateway(config, tmp_path)
    try:
        yield await anext(running)
    finally:
        await running.aclose()


async def pair(stick: EzspStick, gw: Gateway, device: VirtualDevice) -> VirtualDevice:
    adapter = gw.adapter
    assert isinstance(adapter, ZigbeeAdapter)
    await adapter.permit_join(60)
    await stick.wait_for(lambda: stick.permit_joining, 5, "joining open")
    stick.join(device)
    dev_id = f"zigbee:{device.ieee}"
    await eventually(lambda: gw.directory.info.get(dev_id, {}).get("interview") == "configured",
                     20, f"{dev_id} configured")
    return device


def sensor(lqi: int = 180, rssi: int = -67) -> VirtualDevice:
    return VirtualDevice(SENSOR_IEEE, 0x4A1B, lqi=lqi, rssi=rssi,
                         attributes={(1, TEMPERATURE): {0x0000: 2150},
                                     (1, HUMIDITY): {0x0000: 4500},
                                     (1, POWER): {0x0020: 30, 0x0021: 180}})


def of(gw: Gateway, metric: str) -> list[Any]:
    return [r for r in gw.durable if r.device == SENSOR_ID and r.metric == metric]


async def test_lqi_and_rssi_of_a_device_become_readings_at_most_once_per_interval(
        stick: EzspStick, tmp_path: Path) -> None:
    async with started(stick, tmp_path) as gw:
        dev = await pair(stick, gw, sensor(lqi=180, rssi=-67))
        lqi = await gw.wait_reading("linkquality", 180)
        assert lqi.unit is None
        assert (await gw.wait_reading("rssi", -67)).unit == "dBm"
        # more frames within link_interval (60 s): their reports arrive, no second pair
        for value in (2200, 2210, 2220):
            stick.report(dev, 1, TEMPERATURE, {0x0000: value})
        await gw.wait_reading("temperature", 22.2)
        dev.lqi = 90
        stick.report(dev, 1, TEMPERATURE, {0x0000: 2230})
        await gw.wait_reading("temperature", 22.3)
        await gw.refresh()
        assert [r.value for r in of(gw, "linkquality")] == [180]
        assert [r.value for r in of(gw, "rssi")] == [-67]


async def test_changed_link_quality_is_reported_once_the_interval_has_passed(
        stick: EzspStick, tmp_path: Path) -> None:
    async with started(stick, tmp_path, link_interval=0.3) as gw:
        dev = await pair(stick, gw, sensor(lqi=200, rssi=-50))
        await gw.wait_reading("linkquality", 200)
        dev.lqi, dev.rssi = 120, -78

        async def moved() -> bool:
            stick.report(dev, 1, HUMIDITY, {0x0000: 4600})
            await gw.refresh()
            return any(r.value == 120 for r in of(gw, "linkquality"))

        await eventually(moved, 10, "the new LQI as a reading")
        assert any(r.value == -78 for r in of(gw, "rssi"))


async def test_link_readings_can_be_turned_off(stick: EzspStick, tmp_path: Path) -> None:
    async with started(stick, tmp_path, link_readings=False) as gw:
        dev = await pair(stick, gw, sensor())
        stick.report(dev, 1, TEMPERATURE, {0x0000: 2300})
        await gw.wait_reading("temperature", 23.0)
        assert of(gw, "linkquality") == [] and of(gw, "rssi") == []
        # the registry still learns them
        assert gw.directory.info[SENSOR_ID]["lqi"] == 180
