"""Zigbee network health on bellows and the simulated EZSP stick: each device's LQI and
RSSI as readings (rate-limited), the network map from the routers' neighbour tables, and
the energy scan of channels with a recommendation."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.adapters.zigbee import ZigbeeAdapter
from gateway.adapters.zigbee.config import ZigbeeConfig
from tests.ezsp_stick import EzspStick, VirtualDevice
from tests.test_zigbee_cli import _cli
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


ROUTER_IEEE = "00:0d:6f:00:0b:11:22:33"


@pytest.fixture
def quick_topology(monkeypatch: pytest.MonkeyPatch) -> None:
    """zigpy waits 1-1.5 s after each table request (spacing for real meshes)."""
    import zigpy.topology

    monkeypatch.setattr(zigpy.topology, "REQUEST_DELAY", (0.0, 0.01))


async def test_network_map_shows_the_router_and_the_sensor_behind_it(
        stick: EzspStick, tmp_path: Path, quick_topology: None) -> None:
    async with started(stick, tmp_path) as gw:
        adapter = gw.adapter
        assert isinstance(adapter, ZigbeeAdapter)
        await pair(stick, gw, VirtualDevice(ROUTER_IEEE, 0x6E01, model="PLUG1", router=True,
                                            lqi=210, rssi=-48))
        await pair(stick, gw, VirtualDevice(SENSOR_IEEE, 0x4A1B, lqi=140, rssi=-80,
                                            parent=0x6E01))
        before = await adapter.network_map()
        assert before["scanned_at"] is None and before["links"] == []

        answer = await adapter.network_map(refresh=True)
        assert answer["complete"] and answer["scanned_at"] is not None
        coordinator = str(stick.nv.eui64)
        nodes = {n["ieee"]: n for n in answer["nodes"]}
        assert nodes[coordinator]["type"] == "coordinator" and nodes[coordinator]["nwk"] == "0x0000"
        assert nodes[ROUTER_IEEE] | {"lqi": None} == {
            "ieee": ROUTER_IEEE, "nwk": "0x6E01", "device": f"zigbee:{ROUTER_IEEE}",
            "type": "router", "lqi": None, "model": "PLUG1"}
        assert nodes[ROUTER_IEEE]["lqi"] == 210
        assert nodes[SENSOR_IEEE]["type"] == "end_device"
        assert nodes[SENSOR_IEEE]["device"] == SENSOR_ID
        links = {(link["from"], link["to"]): link for link in answer["links"]}
        assert links[(coordinator, ROUTER_IEEE)] | {"from": 0, "to": 0} == {
            "from": 0, "to": 0, "lqi": 210, "relationship": "child", "depth": 1}
        assert links[(ROUTER_IEEE, SENSOR_IEEE)]["relationship"] == "child"
        assert links[(ROUTER_IEEE, SENSOR_IEEE)]["lqi"] == 140
        assert links[(ROUTER_IEEE, SENSOR_IEEE)]["depth"] == 2
        assert links[(ROUTER_IEEE, coordinator)]["relationship"] == "parent"
        assert (coordinator, SENSOR_IEEE) not in links  # not the coordinator's neighbour
        assert [(r["from"], r["to"], r["next_hop"]) for r in answer["routes"]] == [
            (coordinator, SENSOR_IEEE, ROUTER_IEEE)]
        # asked of the coordinator and the router, not of the sleepy sensor
        assert not any(r[1] == "Mgmt_Lqi_req" for r in stick.devices[0x4A1B].received)

        # the scan time outlives the adapter (zigpy keeps the tables in its database)
        again = await adapter.network_map()
        assert again["scanned_at"] == answer["scanned_at"] and len(again["links"]) == len(links)


async def test_energy_scan_recommends_a_quiet_preferred_channel_away_from_wifi(
        stick: EzspStick, tmp_path: Path) -> None:
    # a Wi-Fi access point on channel 6 (2437 MHz) covers Zigbee 15-19; 24 is a hair
    # quieter than 25, which Zigbee devices prefer
    stick.noise({14: -70, 15: -55, 16: -45, 17: -45, 18: -50, 19: -60, 24: -96, 25: -95})
    async with started(stick, tmp_path) as gw:
        adapter = gw.adapter
        assert isinstance(adapter, ZigbeeAdapter)
        answer = await adapter.energy_scan()
        assert stick.ncp.energy_scans == [(list(range(11, 27)), 4)]
        rows = {r["channel"]: r for r in answer["channels"]}
        assert sorted(rows) == list(range(11, 27))
        assert rows[16]["energy"] > rows[20]["energy"] > 0
        assert rows[15]["wifi_overlap"] == [2, 3, 4, 5] and rows[15]["mhz"] == 2425
        rec = answer["recommendation"]
        assert rec["channel"] == 25 and rec["wifi_overlap"] == [12, 13]
        assert "close to the quietest, 24" in rec["reason"]
        assert rec["current"] == 20 and rec["change"] is True

        # only some channels: the advice picks among those
        some = await adapter.energy_scan([15, 16, 20], duration=2)
        assert [r["channel"] for r in some["channels"]] == [15, 16, 20]
        assert some["recommendation"]["channel"] == 20
        assert stick.ncp.energy_scans[-1] == ([15, 16, 20], 2)


async def test_energy_scan_is_refused_while_joining_is_open(stick: EzspStick, tmp_path: Path,
                                                       quick_topology: None) -> None:
    from gateway.adapters.zigbee.adapter import ScanRefused

    async with started(stick, tmp_path) as gw:
        adapter = gw.adapter
        assert isinstance(adapter, ZigbeeAdapter)
        await adapter.permit_join(60)
        with pytest.raises(ScanRefused, match="joining is open"):
            await adapter.energy_scan()
        assert stick.ncp.energy_scans == []
        # the map only asks the routers: it goes ahead
        assert (await adapter.network_map(refresh=True))["complete"]
        with pytest.raises(ValueError, match="duration"):
            await adapter.energy_scan(duration=9)
        await adapter.permit_join(0)
        assert (await adapter.energy_scan([20]))["recommendation"]["channel"] == 20


async def test_one_map_scan_at_a_time_and_no_energy_scan_meanwhile(
        stick: EzspStick, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zigpy.topology

    from gateway.adapters.zigbee.adapter import ScanRefused

    monkeypatch.setattr(zigpy.topology, "REQUEST_DELAY", (0.3, 0.3))
    async with started(stick, tmp_path) as gw:
        adapter = gw.adapter
        assert isinstance(adapter, ZigbeeAdapter)
        first = asyncio.ensure_future(adapter.network_map(refresh=True))
        await eventually(lambda: any(r[1] == "Mgmt_Lqi_req"
                                     for r in stick.ncp.coordinator.received), 5,
                         "the coordinator asked for its neighbours")
        second = asyncio.ensure_future(adapter.network_map(refresh=True))
        with pytest.raises(ScanRefused, match="network map scan is running"):
            await adapter.energy_scan()
        a, b = await asyncio.gather(first, second)
        assert a["scanned_at"] == b["scanned_at"] is not None
        asked = [r for r in stick.ncp.coordinator.received if r[1] == "Mgmt_Lqi_req"]
        assert len(asked) == 1


def _daemon_config(tmp_path: Path, stick: EzspStick) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "gateway": {"id": "zigbee-health", "state_dir": str(tmp_path / "state")},
        "uplink": {"enabled": False},
        "adapters": [{"type": "zigbee", "name": "zb", "radio_type": "ezsp",
                      "port": stick.url, "channel": 20}],
    }))
    return path


async def test_zigbee_scan_and_map_commands_through_the_running_daemon(
        stick: EzspStick, tmp_path: Path, quick_topology: None) -> None:
    from gateway.config.model import load_config
    from gateway.daemon import Gateway as Daemon

    stick.noise({c: -40 for c in range(11, 23)})  # busy up to 22
    gw = Daemon(load_config(_daemon_config(tmp_path, stick)))
    await gw.start()
    sock = str(tmp_path / "state" / "gateway.sock")
    try:
        rc, out, err = await _cli("zigbee", "scan", "--socket", sock)
        assert rc == 0, err
        assert "recommended: channel 25" in out and "Wi-Fi channel(s) 12, 13" in out
        assert "the network is on channel 20" in out
        line20 = next(line for line in out.splitlines() if line.split()[:1] == ["20"])
        assert "7, 8, 9, 10" in line20 and "<- current" in line20

        rc, out, err = await _cli("zigbee", "scan", "--socket", sock, "--channels", "15-16,26",
                                  "--duration", "1", "--json")
        assert rc == 0, err
        assert [r["channel"] for r in json.loads(out)["channels"]] == [15, 16, 26]
        assert stick.ncp.energy_scans[-1] == ([15, 16, 26], 1)

        rc, _, err = await _cli("zigbee", "scan", "--socket", sock, "--channels", "27")
        assert rc == 2 and "outside 11-26" in err

        assert gw.supervisor is not None
        await gw.supervisor.adapters["zb"].permit_join(30)  # type: ignore[attr-defined]
        rc, _, err = await _cli("zigbee", "scan", "--socket", sock)
        assert rc == 1 and "joining is open on zb" in err

        rc, out, err = await _cli("zigbee", "map", "--socket", sock)
        assert rc == 0, err
        assert "scanned never" in out and "coordinator 0x0000" in out
        rc, out, err = await _cli("zigbee", "map", "--socket", sock, "--refresh", "--json")
        assert rc == 0, err
        answer = json.loads(out)
        assert answer["adapter"] == "zb" and answer["scanned_at"] is not None
        assert [n["type"] for n in answer["nodes"]] == ["coordinator"]
    finally:
        await gw.stop()


def test_wifi_overlap_and_channel_lists_follow_the_2_4_ghz_channel_plan() -> None:
    from gateway.adapters.zigbee.health import parse_channels, recommend, wifi_overlap

    assert {c: wifi_overlap(c) for c in (11, 15, 20, 25, 26)} == {
        11: [1], 15: [2, 3, 4, 5], 20: [7, 8, 9, 10], 25: [12, 13], 26: [13]}
    assert parse_channels("11-26") == list(range(11, 27))
    assert parse_channels("15, 20,11-12,20") == [11, 12, 15, 20]
    for bad in ("10", "20-27", "x", ""):
        with pytest.raises(ValueError, match="channels"):
            parse_channels(bad)
    # equal levels everywhere: a channel devices prefer, not the first one
    flat = recommend({c: 40.0 for c in range(11, 27)}, None)
    assert flat["channel"] in (15, 20, 25) and "current" not in flat
