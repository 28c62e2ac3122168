"""The Home Assistant bridge in process: a real device registry, a real mosquitto.

A gmqtt client plays Home Assistant's side and keeps what the broker would hold retained
(an empty payload removes a topic). The registry is the daemon's own; only the command
sink is a stand-in (the daemon tests send commands to the simulator).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gmqtt
import pytest
from prometheus_client import CollectorRegistry

from gateway.core.config import DevicesSection
from gateway.core.registry import DeviceRegistry
from gateway.homeassistant.bridge import HomeAssistantBridge
from gateway.homeassistant.config import Broker, HomeAssistantConfig
from gateway.reading import Command, CommandResult, Reading
from tests.brokers import Mosquitto
from tests.waiting import eventually

GW = "gw1"
BASE = f"gateway/{GW}"


class HomeAssistant:
    """Home Assistant's side: every message seen, and what is retained now."""

    def __init__(self) -> None:
        self.held: dict[str, bytes] = {}
        self.seen: list[tuple[str, bytes]] = []
        self.client = gmqtt.Client("home-assistant")
        self.client.on_message = self._on_message
        self.subscribed: list[int] = []
        self.client.on_subscribe = lambda c, mid, qos, props: self.subscribed.append(mid)

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int,
                    properties: Any) -> int:
        self.seen.append((topic, payload))
        if payload:
            self.held[topic] = payload
        else:
            self.held.pop(topic, None)
        return 0

    def configs(self, needle: str = "") -> dict[str, dict[str, Any]]:
        """Discovery configs held now whose topic contains ``needle``."""
        return {t: json.loads(p) for t, p in self.held.items()
                if t.startswith("homeassistant/") and t.endswith("/config") and needle in t}


class Harness:
    def __init__(self, tmp_path: Path, broker: Mosquitto) -> None:
        self.tmp_path = tmp_path
        self.broker = broker
        self.metrics = CollectorRegistry()
        self.registry = DeviceRegistry(DevicesSection.model_validate({"flush_interval": 60}),
                                       tmp_path / "devices.json", CollectorRegistry())
        self.ha = HomeAssistant()
        self.sent: list[Command] = []
        self.bridge: HomeAssistantBridge | None = None

    async def send(self, command: Command) -> CommandResult:
        self.sent.append(command)
        return CommandResult.delivered("done")

    async def start(self, **section: Any) -> HomeAssistantBridge:
        cfg = HomeAssistantConfig.model_validate({"enabled": True, "min_interval": 0.05,
                                                  **section})
        self.bridge = HomeAssistantBridge(cfg, Broker(host=self.broker.host,
                                                      port=self.broker.port),
                                          GW, "0.1.0", self.registry, self.send, self.metrics)
        await self.bridge.start()
        await eventually(lambda: self.bridge is not None and self.bridge.connected, 10.0,
                         "the bridge connected")
        return self.bridge

    def observe(self, readings: list[Reading]) -> None:
        """What the pipeline does with accepted readings: the registry, then the bridge."""
        self.registry.observe(readings)
        if self.bridge is not None:
            self.bridge.observe(readings)

    def refused(self, reason: str) -> float:
        return self.metrics.get_sample_value("gateway_homeassistant_refused_total",
                                             {"reason": reason}) or 0.0


@pytest.fixture
async def h(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path, mosquitto)
    await harness.registry.start()
    await harness.ha.client.connect(mosquitto.host, mosquitto.port)
    harness.ha.client.subscribe("homeassistant/#", qos=1)
    harness.ha.client.subscribe(f"{BASE}/#", qos=1)
    await eventually(lambda: len(harness.ha.subscribed) == 2, 5.0, "Home Assistant's SUBACKs")
    yield harness
    if harness.bridge is not None:
        await harness.bridge.stop()
    await harness.ha.client.disconnect()
    await harness.registry.stop()


def reading(device: str, metric: str = "temperature", value: float = 21.0) -> Reading:
    return Reading(device, metric, value, "Cel", time.time())


async def test_declared_renamed_and_removed_devices_reach_home_assistant_at_once(
        h: Harness) -> None:
    # sweep_interval is accepted from older files but no longer decides anything: with an
    # hour between sweeps, a removal must still clear the entities within seconds
    bridge = await h.start(switches=["sim:*"], sweep_interval="1h")
    switch = f"homeassistant/switch/{GW}_sim_lamp/switch/config"
    # declared, no reading yet: announced (its switch) without waiting for a full look
    h.registry.declare("sim:lamp", name="Lamp", location="hall")
    found = await eventually(lambda: h.ha.configs().get(switch), 5.0, "the lamp's switch")
    assert found["device"]["name"] == "Lamp" and found["device"]["suggested_area"] == "hall"

    # renamed through the registry: the configs carry the new name, well before the
    # safety resync (minutes away)
    h.registry.observe([reading("sim:lamp")])
    sensor = f"homeassistant/sensor/{GW}_sim_lamp/temperature/config"
    await eventually(lambda: sensor in h.ha.configs(), 5.0, "the lamp's temperature sensor")
    assert h.registry.rename("sim:lamp", "Hall lamp")
    await eventually(lambda: all(c["device"]["name"] == "Hall lamp"
                                 for c in h.ha.configs("sim_lamp").values()), 5.0,
                     "the new name in every config of the lamp")
    # declared model and manufacturer change the device block too
    h.registry.declare("sim:lamp", model="E27", manufacturer="Acme")
    await eventually(lambda: h.ha.configs().get(switch, {}).get("device", {}).get("model")
                     == "E27", 5.0, "the declared model")

    # removed: its configs, state and availability are cleared
    assert h.registry.remove("sim:lamp")
    await eventually(lambda: not any("sim_lamp" in t for t in h.ha.held), 5.0,
                     "every retained topic of the lamp cleared")
    assert f"homeassistant/binary_sensor/{GW}/connectivity/config" in h.ha.held
    # the bridge stops listening when it stops (a reload replaces it)
    await bridge.stop()
    h.bridge = None
    assert bridge.on_change not in h.registry._change_listeners
    assert bridge.on_transition not in h.registry._listeners


async def test_device_ids_that_slug_alike_keep_their_own_entities_and_commands(
        h: Harness) -> None:
    from gateway.homeassistant.discovery import Topics

    topics = Topics("homeassistant", BASE, GW)
    plain = topics.node("sim:a_b")
    assert plain == topics.node("sim:a.b") == f"{GW}_sim_a_b"
    suffixed = topics.node("sim:a.b", suffixed=True)
    assert suffixed.startswith(plain + "_") and len(suffixed) == len(plain) + 7
    assert suffixed == topics.node("sim:a.b", suffixed=True)  # stable: a hash of the id
    # "-" is kept in a node id, "." is not: sim:a-b would not collide
    assert topics.node("sim:a-b") == f"{GW}_sim_a-b"
    # sim:a_b is registered first, so it keeps the plain node id; sim:a.b sorts first by
    # id, so a restart that went by id would swap them
    h.registry.observe([reading("sim:a_b", value=2.0)])
    h.registry.observe([reading("sim:a.b", value=1.0)])
    bridge = await h.start(switches=["sim:*"])

    def both() -> dict[str, dict[str, Any]] | None:
        found = h.ha.configs("/switch/config")
        want = {f"homeassistant/switch/{plain}/switch/config",
                f"homeassistant/switch/{suffixed}/switch/config"}
        return found if want <= set(found) else None

    configs = await eventually(both, 5.0, "a switch for each of the two devices")
    mine = configs[f"homeassistant/switch/{plain}/switch/config"]
    other = configs[f"homeassistant/switch/{suffixed}/switch/config"]
    assert mine["device"]["name"] == "sim:a_b" and other["device"]["name"] == "sim:a.b"
    assert mine["unique_id"] != other["unique_id"]
    assert mine["device"]["identifiers"] != other["device"]["identifiers"]
    states = await eventually(
        lambda: (lambda a, b: (a, b) if a and b else None)(
            h.ha.held.get(f"{BASE}/{plain}/state"), h.ha.held.get(f"{BASE}/{suffixed}/state")),
        5.0, "both states")
    assert json.loads(states[0])["temperature"] == 2.0
    assert json.loads(states[1])["temperature"] == 1.0

    # a command on each entity reaches its own device
    h.ha.client.publish(f"{BASE}/{suffixed}/switch/set", b"OFF", qos=1)
    h.ha.client.publish(f"{BASE}/{plain}/switch/set", b"ON", qos=1)
    await eventually(lambda: len(h.sent) == 2, 5.0, "both commands carried out")
    assert sorted((c.device, c.action) for c in h.sent) == [("sim:a.b", "off"),
                                                            ("sim:a_b", "on")]

    # a restart (a reload, the daemon's) gives each device the node id it had
    await bridge.stop()
    seen_before = len(h.ha.seen)
    await h.start(switches=["sim:*"])
    topic = f"homeassistant/switch/{plain}/switch/config"
    await eventually(lambda: any(t == topic for t, _ in h.ha.seen[seen_before:]), 5.0,
                     "the configs sent again after the restart")
    assert h.ha.configs()[topic]["device"]["name"] == "sim:a_b"
    assert h.ha.configs()[f"homeassistant/switch/{suffixed}/switch/config"]["device"][
        "name"] == "sim:a.b"


async def test_entities_past_max_entities_are_refused_once_each_and_logged_once(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "gateway.homeassistant")
    await h.start(max_entities=3)
    h.observe([reading("mqtt:a", "temperature"), reading("mqtt:a", "humidity")])
    h.observe([reading("mqtt:b", "temperature"), reading("mqtt:b", "humidity"),
                        reading("mqtt:c", "temperature")])
    await eventually(lambda: h.refused("max_entities") >= 2, 5.0, "two entities refused")
    # the first three are announced, with their states; gateway's own entity is apart
    sensors = h.ha.configs("homeassistant/sensor/")
    assert set(sensors) == {f"homeassistant/sensor/{GW}_mqtt_a/temperature/config",
                            f"homeassistant/sensor/{GW}_mqtt_a/humidity/config",
                            f"homeassistant/sensor/{GW}_mqtt_b/humidity/config"}, sensors
    assert f"homeassistant/binary_sensor/{GW}/connectivity/config" in h.ha.held
    await eventually(lambda: f"{BASE}/{GW}_mqtt_c/state" in h.ha.held, 5.0,
                     "the state of a device whose entity was refused")
    # more readings: the refused entities are not counted again, nor logged again
    for i in range(5):
        h.observe([reading("mqtt:b", "temperature", 20.0 + i),
                            reading("mqtt:c", "temperature", 20.0 + i)])
        await eventually(lambda i=i: json.loads(h.ha.held.get(f"{BASE}/{GW}_mqtt_c/state",
                                                              b"{}")).get("temperature")
                         == 20.0 + i, 5.0, "the new state published")
    assert h.refused("max_entities") == 2
    lines = [r for r in caplog.records if "homeassistant.max_entities" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    # room again (a device forgotten): the refused entities are announced
    assert h.registry.remove("mqtt:a")
    h.observe([reading("mqtt:b", "temperature", 30.0),
                        reading("mqtt:c", "temperature", 30.0)])
    await eventually(lambda: set(h.ha.configs("homeassistant/sensor/")) == {
        f"homeassistant/sensor/{GW}_mqtt_b/temperature/config",
        f"homeassistant/sensor/{GW}_mqtt_b/humidity/config",
        f"homeassistant/sensor/{GW}_mqtt_c/temperature/config"}, 5.0,
        "the refused entities announced once there is room")
    assert h.refused("max_entities") == 2
