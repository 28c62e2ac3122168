"""End to end through the real daemon: simulated Z-Stack stick → ``gateway run`` → cloud.

``gateway run`` is its own process with a ``type: zigbee`` adapter (radio type ``znp``,
zigpy-znp) on ``socket://127.0.0.1:PORT``; the cloud is a real mosquitto with a recording
subscriber; pairing goes through the real control API. Only the stick is simulated
(:mod:`tests.znp_stick`): a TI CC2652 stick cannot be attached here. The stick drops the
link; the daemon's supervisor restarts the adapter and readings reach the cloud again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import Mosquitto
from tests.daemon import GatewayProcess
from tests.test_zigbee_stick_daemon import (
    RADIO_UP,
    gateway_config,
    pair_sensor,
    values_of,
)
from tests.waiting import eventually
from tests.znp_stick import ZnpStick

pytestmark = pytest.mark.timeout(90)

TEMPERATURE, HUMIDITY = 0x0402, 0x0405
SENSOR_IEEE = "00:0d:6f:00:0a:bc:de:f3"
SENSOR_ID = f"zigbee:{SENSOR_IEEE}"


async def test_znp_stick_reading_reaches_the_cloud_across_a_link_drop(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        gateway_factory: Callable[..., GatewayProcess],
        cloud_sink_factory: Callable[..., Any]) -> None:
    cloud_broker = mosquitto_factory(name="cloud")
    cloud = cloud_sink_factory(cloud_broker.port)
    async with ZnpStick() as stick:
        stick.preform(channel=20, pan_id=0x2B73)
        state = tmp_path / "state"
        gw = gateway_factory(gateway_config(state, stick, cloud_broker, "znp"))
        await asyncio.to_thread(gw.start)
        await eventually(lambda: RADIO_UP in gw.log_text(), 20, "zigbee radio up")
        assert "znp radio on socket://" in gw.log_text()

        sensor = await pair_sensor(stick, state, SENSOR_IEEE)

        def cloud_values(metric: str) -> list[Any]:
            return values_of(cloud, SENSOR_ID, metric)

        stick.report(sensor, 1, TEMPERATURE, {0x0000: 2345})
        await eventually(lambda: 23.45 in cloud_values("temperature"), 20,
                         "reported temperature in the cloud")

        stick.drop_link()
        await eventually(lambda: gw.log_text().count(RADIO_UP) >= 2 and stick.network_up, 30,
                         "adapter restarted on the stick")
        assert stick.connections == 2
        assert stick.zstack.commands["AppConfig.BDBSetChannel"] == 0  # nothing re-formed

        stick.report(sensor, 1, HUMIDITY, {0x0000: 6150})
        await eventually(lambda: 61.5 in cloud_values("humidity"), 20,
                         "humidity reported after the reconnect in the cloud")
        assert dict(stick.zstack.unknown) == {}
        assert "did not stop cleanly" not in gw.log_text()
        rc = gw.stop()
        assert rc == 0, f"gateway exited with {rc}:\n{gw.log_text()[-4000:]}"
