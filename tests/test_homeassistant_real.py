"""The gateway against a real Home Assistant, on a real mosquitto.

Home Assistant needs Python >= 3.13 and hundreds of packages, so it is not part of the
suite's own environment: this module runs when ``GATEWAY_TEST_HASS`` names a ``hass``
executable and is skipped otherwise::

    python3.13 -m venv /opt/hass
    /opt/hass/bin/pip install homeassistant home-assistant-frontend paho-mqtt
    GATEWAY_TEST_HASS=/opt/hass/bin/hass .venv/bin/pytest tests/test_homeassistant_real.py

(Home Assistant starts in recovery mode without its frontend package; it runs with
``--skip-pip``, so it installs nothing itself.)

Home Assistant starts with only its MQTT integration, set up the way its config flow
leaves it (a config entry for the broker in ``.storage``), ``mqtt_statestream`` to read
the entities it creates and their states back over MQTT, and one automation that turns
a switch off when a test topic says so. Nothing of Home Assistant is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.api.client import ApiClient
from tests.brokers import Mosquitto, free_port
from tests.daemon import GatewayProcess
from tests.test_homeassistant_daemon import Watcher, publish, retained
from tests.waiting import wait_until

HASS = os.environ.get("GATEWAY_TEST_HASS", "")
pytestmark = pytest.mark.skipif(
    not (HASS and os.access(HASS, os.X_OK)),
    reason="GATEWAY_TEST_HASS does not name a Home Assistant executable")

GW = "hagw"
NODE1, NODE2 = f"{GW}_sim_sim-1", f"{GW}_sim_sim-2"
# Home Assistant's entity ids: the discovery object_id, slugified
SENSOR1, SENSOR2 = "hagw_sim_sim_1", "hagw_sim_sim_2"


def hass_config(root: Path, broker: Mosquitto) -> Path:
    """A Home Assistant configuration directory talking to ``broker``."""
    (root / ".storage").mkdir(parents=True)
    (root / "configuration.yaml").write_text(f"""
homeassistant:
  name: Test
  latitude: 52.5
  longitude: 13.4
  elevation: 30
  unit_system: metric
  time_zone: UTC
  country: DE
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: {free_port()}
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: info
mqtt_statestream:
  base_topic: hass
  publish_attributes: true
automation:
  - alias: switch off on request
    triggers:
      - trigger: mqtt
        topic: test/switch_off
    actions:
      - action: switch.turn_off
        target:
          entity_id: switch.{SENSOR1}_switch
  - alias: light to 40 % on request
    triggers:
      - trigger: mqtt
        topic: test/light_40
    actions:
      - action: light.turn_on
        target:
          entity_id: light.{SENSOR2}_light
        data:
          brightness_pct: 40
""", encoding="utf-8")
    now = "2026-01-01T00:00:00+00:00"
    entry = {"entry_id": "01JTEST0000000000000000MQTT", "domain": "mqtt", "title": broker.host,
             "version": 1, "minor_version": 2, "source": "user", "unique_id": None,
             "data": {"broker": broker.host, "port": broker.port},
             "options": {"discovery": True, "discovery_prefix": "homeassistant"},
             "pref_disable_new_entities": False, "pref_disable_polling": False,
             "disabled_by": None, "discovery_keys": {}, "subentries": [],
             "created_at": now, "modified_at": now}
    (root / ".storage" / "core.config_entries").write_text(json.dumps(
        {"version": 1, "minor_version": 5, "key": "core.config_entries",
         "data": {"entries": [entry]}}), encoding="utf-8")
    return root


class HomeAssistant:
    """``hass -c DIR`` as a process; stopped by its PID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "hass.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HomeAssistant:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([HASS, "-c", str(self.root), "--skip-pip"],
                                         stdout=out, stderr=subprocess.STDOUT)
        return self

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            print(f"Home Assistant's output (end):\n{self.output()[-4000:]}")
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def storage(self, key: str) -> Any:
        return json.loads((self.root / ".storage" / key).read_text(encoding="utf-8"))["data"]


@pytest.fixture
def hass(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[HomeAssistant]:
    ha = HomeAssistant(hass_config(tmp_path / "hass", mosquitto))
    yield ha
    ha.stop()


def gateway_config(tmp_path: Path, broker: Mosquitto) -> dict[str, Any]:
    return {
        "gateway": {"id": GW, "state_dir": str(tmp_path / "state")},
        "store": {"commit_interval": "10ms"},
        "uplink": {"enabled": False},
        "api": {"enabled": True},
        "adapters": [{"type": "simulator", "name": "sim", "devices": 2, "interval": 0.2,
                      "metrics": ["temperature", "humidity", "battery", "power"],
                      "count": 25}],
        "homeassistant": {"enabled": True, "host": broker.host, "port": broker.port,
                          "switches": ["sim:sim-1"], "lights": ["sim:sim-2"],
                          "min_interval": 0.2},
    }


def test_home_assistant_creates_the_entities_shows_states_and_sends_commands(
        tmp_path: Path, mosquitto: Mosquitto, hass: HomeAssistant,
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    watch = Watcher(mosquitto, tmp_path / "seen.txt", "hass/#", "homeassistant/status",
                    f"gateway/{GW}/#")
    try:
        hass.start()
        # Home Assistant's MQTT integration announces itself with its birth message
        wait_until(lambda: "online" in watch.on("homeassistant/status"), within=180,
                   what="Home Assistant's birth message")
        gw = gateway_factory(gateway_config(tmp_path, mosquitto)).start()

        def attr(entity: str, name: str) -> Any:
            got = watch.on(f"hass/{entity.replace('.', '/')}/{name}")
            return json.loads(got[-1]) if got else None

        # sensors with the device class, unit and state class from the discovery configs,
        # and numeric states read from the gateway's JSON state topic
        temp = f"sensor.{SENSOR1}_temperature"
        wait_until(lambda: watch.on(f"hass/sensor/{SENSOR1}_temperature/state"), within=60,
                   what=f"{temp} in Home Assistant")
        assert attr(temp, "device_class") == "temperature"
        assert attr(temp, "unit_of_measurement") == "°C"
        assert attr(temp, "state_class") == "measurement"
        wait_until(lambda: _number(watch.on(f"hass/sensor/{SENSOR1}_temperature/state")),
                   within=30, what=f"a numeric state of {temp}")
        battery = f"sensor.{SENSOR1}_battery"
        wait_until(lambda: attr(battery, "unit_of_measurement") == "%", within=30,
                   what=f"{battery}'s unit")
        assert attr(battery, "device_class") == "battery"
        power = f"sensor.{SENSOR2}_power"
        wait_until(lambda: attr(power, "device_class") == "power", within=30,
                   what=f"{power}'s device class")
        assert attr(power, "unit_of_measurement") == "W"
        # the gateway's own connectivity sensor, on while it is connected
        connectivity = f"hass/binary_sensor/edge_gateway_{GW}_connectivity/state"
        wait_until(lambda: "on" in watch.on(connectivity), within=30,
                   what="the gateway's connectivity sensor")
        # a switch per simulated device, available; its state is unknown until the device
        # reports one or a command sets it (the simulator reports none)
        switch = f"{SENSOR1}_switch"
        wait_until(lambda: (watch.on(f"hass/switch/{switch}/state") or ["unavailable"])[-1]
                   != "unavailable", within=30, what="the switch entity available")

        # a command from Home Assistant (an automation calling switch.turn_off) reaches the
        # simulated device through the gateway, and the new state comes back
        publish(mosquitto, "test/switch_off", "go")
        wait_until(lambda: "OFF" in watch.on(f"gateway/{GW}/{NODE1}/switch/set"), within=30,
                   what="Home Assistant's switch command")
        gw.wait_for_log("homeassistant: sim:sim-1 off: power off", timeout=20)
        wait_until(lambda: "off" in watch.on(f"hass/switch/{switch}/state"), within=30,
                   what="the switch off in Home Assistant")

        # a light: Home Assistant's brightness (40 % of its 0-255) reaches the simulated
        # device as a level of 40 %, and the state coming back shows the light on at 102
        light = f"{SENSOR2}_light"
        wait_until(lambda: watch.on(f"hass/light/{light}/state"), within=30,
                   what="the light entity")
        assert attr(f"light.{light}", "supported_color_modes") == ["brightness"]
        publish(mosquitto, "test/light_40", "go")
        sent = wait_until(lambda: watch.on(f"gateway/{GW}/{NODE2}/light/set"), within=30,
                          what="Home Assistant's light command")
        assert json.loads(sent[-1]) == {"state": "ON", "brightness": 40}
        gw.wait_for_log("homeassistant: sim:sim-2 level: level 40 %", timeout=20)
        wait_until(lambda: attr(f"light.{light}", "brightness") == 102, within=30,
                   what="the light's brightness in Home Assistant")
        assert watch.on(f"hass/light/{light}/state")[-1] == "on"

        # a forgotten device's entities (and the device) go away in Home Assistant too; the
        # simulator has stopped sending by then, or sim-2 would be learnt again
        gw.wait_for_log("messages per device sent", timeout=30)
        ApiClient(tmp_path / "state" / "gateway.sock").call("DELETE", "/api/devices/sim:sim-2")
        wait_until(lambda: not any(NODE2 in t for t in retained(mosquitto, "homeassistant/#")),
                   within=30, what="sim-2's discovery configs cleared")
        wait_until(lambda: f"Removing component: sensor.{SENSOR2}_temperature" in hass.output(),
                   within=30, what="Home Assistant removing sim-2's entities")
        # the gateway stops: its entities become unavailable
        assert gw.stop() == 0
        wait_until(lambda: "unavailable" in watch.on(f"hass/sensor/{SENSOR1}_temperature/state"),
                   within=30, what=f"{temp} unavailable after the gateway stopped")
    finally:
        hass.stop()
        watch.stop()

    # Home Assistant's registries, written at its stop: the devices hang off the gateway,
    # sim-2 and its entities are gone
    registry = hass.storage("core.device_registry")["devices"]
    devices = {tuple(i) for d in registry for i in d["identifiers"]}
    assert ("mqtt", f"edge_gateway_{GW}") in devices
    assert ("mqtt", f"edge_gateway_{NODE1}") in devices
    assert ("mqtt", f"edge_gateway_{NODE2}") not in devices
    by_ident = {tuple(d["identifiers"][0]): d for d in registry}
    gateway_dev = by_ident[("mqtt", f"edge_gateway_{GW}")]
    assert by_ident[("mqtt", f"edge_gateway_{NODE1}")]["via_device_id"] == gateway_dev["id"]
    entities = {e["entity_id"]: e for e in hass.storage("core.entity_registry")["entities"]}
    assert {temp, battery, f"switch.{switch}", f"sensor.{SENSOR1}_humidity"} <= set(entities)
    assert f"light.{light}" not in entities  # sim-2 was forgotten
    assert not [e for e in entities if SENSOR2 in e]
    assert entities[temp]["unique_id"] == f"{NODE1}_temperature"


def _number(states: list[str]) -> bool:
    for s in reversed(states):
        try:
            float(json.loads(s))
        except (ValueError, TypeError):
            continue
        return True
    return False
