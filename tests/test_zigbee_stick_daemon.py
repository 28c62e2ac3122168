"""End to end through the real daemon: simulated EZSP stick → ``gateway run`` → cloud.

``gateway run`` is its own process with a ``type: zigbee`` adapter (radio type ``ezsp``,
bellows) on ``socket://127.0.0.1:PORT``; the cloud is a real mosquitto with a recording
subscriber; pairing goes through the real control API. Only the stick is simulated
(:mod:`tests.ezsp_stick`): a Silicon Labs stick cannot be attached here. The stick drops
the link, then reboots on its own; each time the daemon's supervisor restarts the adapter
and readings reach the cloud again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.brokers import Mosquitto
from tests.daemon import GatewayProcess
from tests.ezsp_stick import EzspStick, VirtualDevice
from tests.waiting import eventually
from tests.znp_stick import ZnpStick

pytestmark = pytest.mark.timeout(90)

TEMPERATURE, HUMIDITY = 0x0402, 0x0405
SENSOR_IEEE = "00:0d:6f:00:0a:bc:de:f2"
SENSOR_ID = f"zigbee:{SENSOR_IEEE}"
RADIO_UP = "radio on socket://"


def gateway_config(state: Path, stick: EzspStick | ZnpStick, cloud: Mosquitto,
                   radio_type: str = "ezsp") -> dict[str, Any]:
    return {
        "gateway": {"id": f"gw-{radio_type}", "state_dir": str(state)},
        "uplink": {"host": cloud.host, "port": cloud.port, "batch_linger": "10ms"},
        "store": {"commit_interval": "20ms"},
        "adapters": [{"type": "zigbee", "name": "zigbee", "radio_type": radio_type,
                      "port": stick.url, "channel": 20}],
    }


async def permit_join(socket: Path, seconds: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket))) as s:
        async with s.post("http://gateway/api/permit-join", json={"seconds": seconds}) as rsp:
            body: dict[str, Any] = await rsp.json()
            assert rsp.status == 200, body
            return body


async def pair_sensor(stick: EzspStick | ZnpStick, state: Path, ieee: str) -> VirtualDevice:
    """Open joining through the daemon's control API; a temperature and humidity sensor
    joins and the daemon configures its reporting."""
    await permit_join(state / "gateway.sock", 60)
    await stick.wait_for(lambda: stick.permit_joining, 5, "joining open")
    sensor = VirtualDevice(ieee, 0x5C2D, attributes={
        (1, TEMPERATURE): {0x0000: 1990}, (1, HUMIDITY): {0x0000: 6000}})
    stick.join(sensor)
    await eventually(lambda: (1, TEMPERATURE, 0x0000) in sensor.reporting, 20,
                     "reporting configured by the daemon")
    return sensor


def values_of(cloud: Any, device: str, metric: str) -> list[Any]:
    """The values of ``device``'s ``metric`` the cloud subscriber has received."""
    return [r.value for r in cloud.readings() if r.device == device and r.metric == metric]


async def test_stick_reading_reaches_the_cloud_across_link_drop_and_stick_reset(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        gateway_factory: Callable[..., GatewayProcess],
        cloud_sink_factory: Callable[..., Any]) -> None:
    cloud_broker = mosquitto_factory(name="cloud")
    cloud = cloud_sink_factory(cloud_broker.port)
    async with EzspStick() as stick:
        stick.preform(channel=20, pan_id=0x2B73)
        state = tmp_path / "state"
        gw = gateway_factory(gateway_config(state, stick, cloud_broker))
        # The daemon blocks on its log while the stick answers on this loop
        await asyncio.to_thread(gw.start)
        await eventually(lambda: RADIO_UP in gw.log_text(), 20, "zigbee radio up")

        sensor = await pair_sensor(stick, state, SENSOR_IEEE)

        def cloud_values(metric: str) -> list[Any]:
            return values_of(cloud, SENSOR_ID, metric)

        stick.report(sensor, 1, TEMPERATURE, {0x0000: 2345})
        await eventually(lambda: 23.45 in cloud_values("temperature"), 20,
                         "reported temperature in the cloud")

        stick.drop_link()
        await eventually(lambda: gw.log_text().count(RADIO_UP) >= 2 and stick.network_up, 30,
                         "adapter restarted on the stick")
        assert "connection to the stick lost" in gw.log_text()
        assert stick.connections == 2 and stick.ncp.commands["formNetwork"] == 0

        stick.report(sensor, 1, HUMIDITY, {0x0000: 6150})
        await eventually(lambda: 61.5 in cloud_values("humidity"), 20,
                         "humidity reported after the reconnect in the cloud")

        # The firmware reboots on its own: bellows sees RSTACK, the adapter restarts again
        stick.unsolicited_reset()
        await eventually(lambda: gw.log_text().count(RADIO_UP) >= 3 and stick.network_up, 30,
                         "adapter restarted after the unsolicited reset")
        assert stick.connections == 3 and stick.ncp.commands["formNetwork"] == 0
        stick.report(sensor, 1, TEMPERATURE, {0x0000: 2410})
        await eventually(lambda: 24.1 in cloud_values("temperature"), 20,
                         "temperature reported after the reset in the cloud")
        # Every restart stopped the old adapter within the supervisor's bound, and the
        # daemon still exits cleanly on SIGTERM (nothing of zigpy's left running)
        assert "did not stop cleanly" not in gw.log_text()
        rc = gw.stop()
        assert rc == 0, f"gateway exited with {rc}:\n{gw.log_text()[-4000:]}"
