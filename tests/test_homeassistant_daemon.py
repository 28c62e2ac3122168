"""Home Assistant discovery in the real daemon, on a real mosquitto.

The simulator's devices are exposed as sensors and (by the ``switches`` pattern) as
switches; a ``mosquitto_sub`` process plays Home Assistant's side: it watches
``homeassistant/#`` and the gateway's state topics, and ``mosquitto_pub`` sends the birth
message and switch commands. Home Assistant itself does not run here.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.api.client import ApiClient
from tests.brokers import Mosquitto
from tests.daemon import GatewayProcess
from tests.waiting import wait_until

GW = "gw-ha"
BASE = f"gateway/{GW}"
NODE1, NODE2 = f"{GW}_sim_sim-1", f"{GW}_sim_sim-2"


class Watcher:
    """A subscriber process recording ``(topic, payload, retained)`` of every message."""

    def __init__(self, broker: Mosquitto, out: Path, *topics: str) -> None:
        self.out = out
        args = ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5",
                "-q", "1", "-F", "%r\t%t\t%p"]
        for t in topics:
            args += ["-t", t]
        self._file = open(out, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._file)

    def messages(self) -> list[tuple[str, str, bool]]:
        out = []
        for line in self.out.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split("\t", 2)
            if len(parts) == 3:
                out.append((parts[1], parts[2], parts[0] == "1"))
        return out

    def on(self, topic: str) -> list[str]:
        return [p for t, p, _ in self.messages() if t == topic]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._file.close()


def retained(broker: Mosquitto, topic: str) -> dict[str, str]:
    """What the broker holds retained under ``topic`` now."""
    run = subprocess.run(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port),
                          "-t", topic, "--retained-only", "-W", "1", "-F", "%t\t%p"],
                         capture_output=True, timeout=20)
    out = {}
    for line in run.stdout.decode("utf-8", "replace").splitlines():
        t, _, p = line.partition("\t")
        out[t] = p
    return out


def publish(broker: Mosquitto, topic: str, payload: str) -> None:
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
                    "-t", topic, "-m", payload], check=True, timeout=20)


def config(tmp_path: Path, broker: Mosquitto) -> dict[str, Any]:
    return {
        "gateway": {"id": GW, "state_dir": str(tmp_path / "state")},
        "store": {"commit_interval": "10ms"},
        "uplink": {"enabled": False},
        "api": {"enabled": True},
        "adapters": [{"type": "simulator", "name": "sim", "devices": 2, "interval": 0.1,
                      "metrics": ["temperature", "humidity", "battery", "power"],
                      "count": 5}],
        "homeassistant": {"enabled": True, "host": broker.host, "port": broker.port,
                          "switches": ["sim:*"], "min_interval": 0.2},
    }


@pytest.fixture
def watcher(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Watcher]:
    w = Watcher(mosquitto, tmp_path / "ha.txt", "homeassistant/#", f"{BASE}/#")
    yield w
    w.stop()


def test_devices_are_discovered_updated_commanded_and_forgotten(
        tmp_path: Path, mosquitto: Mosquitto, watcher: Watcher,
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    gw = gateway_factory(config(tmp_path, mosquitto)).start()
    temp_topic = f"homeassistant/sensor/{NODE1}/temperature/config"
    expected = {temp_topic, f"homeassistant/sensor/{NODE1}/humidity/config",
                f"homeassistant/sensor/{NODE1}/battery/config",
                f"homeassistant/sensor/{NODE1}/power/config",
                f"homeassistant/switch/{NODE1}/switch/config",
                f"homeassistant/sensor/{NODE2}/temperature/config",
                f"homeassistant/switch/{NODE2}/switch/config",
                f"homeassistant/binary_sensor/{GW}/connectivity/config"}
    held = wait_until(lambda: (lambda r: r if expected <= set(r) else None)(
        retained(mosquitto, "homeassistant/#")), within=20, what="retained discovery configs")
    temp = json.loads(held[temp_topic])
    assert temp["device_class"] == "temperature" and temp["unit_of_measurement"] == "°C"
    assert temp["state_topic"] == f"{BASE}/{NODE1}/state"
    assert temp["availability_mode"] == "all"
    assert [a["topic"] for a in temp["availability"]] == [f"{BASE}/status",
                                                          f"{BASE}/{NODE1}/availability"]
    assert temp["device"]["via_device"] == f"edge_gateway_{GW}"
    assert json.loads(held[f"homeassistant/sensor/{NODE1}/battery/config"])[
        "device_class"] == "battery"

    # states: JSON with the latest value of each metric; gateway and device online
    states = wait_until(lambda: watcher.on(f"{BASE}/{NODE1}/state"), within=10,
                        what="device states")
    assert {"temperature", "humidity", "battery", "power"} <= set(json.loads(states[-1]))
    assert "online" in watcher.on(f"{BASE}/status")
    assert "online" in watcher.on(f"{BASE}/{NODE1}/availability")
    gw.wait_for_log("messages per device sent", timeout=20)
    # five messages per device in 0.5 s, published at most every 0.2 s: coalesced
    assert len(watcher.on(f"{BASE}/{NODE1}/state")) < 5

    # a switch command reaches the simulator; its new state is published
    publish(mosquitto, f"{BASE}/{NODE1}/switch/set", "OFF")
    wait_until(lambda: '{"state":"OFF"}' in watcher.on(f"{BASE}/{NODE1}/switch"), within=10,
               what="switch state after the command")
    gw.wait_for_log("homeassistant: sim:sim-1 off: power off", timeout=10)
    # a bad payload costs only itself
    publish(mosquitto, f"{BASE}/{NODE1}/switch/set", "BRIGHTER")
    gw.wait_for_log("bad command for sim:sim-1", timeout=10)
    publish(mosquitto, f"{BASE}/{NODE1}/switch/set", "ON")
    wait_until(lambda: '{"state":"ON"}' in watcher.on(f"{BASE}/{NODE1}/switch"), within=10,
               what="switch on again")

    # Home Assistant's birth message: every config is sent again
    before = len(watcher.on(temp_topic))
    publish(mosquitto, "homeassistant/status", "online")
    wait_until(lambda: len(watcher.on(temp_topic)) > before, within=10,
               what="configs re-sent after the birth message")

    # a forgotten device loses its entities (empty retained configs)
    ApiClient(tmp_path / "state" / "gateway.sock").call("DELETE", "/api/devices/sim:sim-2")
    wait_until(lambda: not any(NODE2 in t for t in retained(mosquitto, "homeassistant/#")),
               within=10, what="sim-2's configs cleared")
    assert temp_topic in retained(mosquitto, "homeassistant/#")
    assert gw.stop() == 0
    # the gateway's last will (sent at a clean stop too): offline
    assert retained(mosquitto, f"{BASE}/status") == {f"{BASE}/status": "offline"}


def test_a_reload_that_changes_the_section_restarts_discovery_only(
        tmp_path: Path, mosquitto: Mosquitto, watcher: Watcher,
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    cfg = config(tmp_path, mosquitto)
    cfg["adapters"][0]["count"] = 0  # the simulator keeps sending across the reload
    gw = gateway_factory(cfg).start()
    wait_until(lambda: f"homeassistant/sensor/{NODE1}/temperature/config"
               in retained(mosquitto, "homeassistant/#"), within=20, what="configs")
    cfg["homeassistant"]["discovery_prefix"] = "ha2"
    cfg["homeassistant"]["exclude_metrics"] = ["power"]
    gw.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    answer = ApiClient(tmp_path / "state" / "gateway.sock", timeout=60).call(
        "POST", "/api/reload")
    assert answer["ok"] and "homeassistant restarted" in answer["changed"], answer
    held = wait_until(lambda: (lambda r: r if f"ha2/sensor/{NODE1}/temperature/config" in r
                               else None)(retained(mosquitto, "ha2/#")),
                      within=20, what="configs under the new prefix")
    assert not any("/power/" in t for t in held)  # the new section's filters apply
    assert "simulator" not in " ".join(answer["changed"])  # the adapter was not touched
    # the restarted bridge is connected and announces states again
    before = len(watcher.on(f"{BASE}/{NODE1}/state"))
    wait_until(lambda: len(watcher.on(f"{BASE}/{NODE1}/state")) > before, within=20,
               what="states after the reload")
    assert gw.stop() == 0


def test_light_commands_reach_a_device_that_takes_a_level(
        tmp_path: Path, mosquitto: Mosquitto, watcher: Watcher,
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    cfg = config(tmp_path, mosquitto)
    cfg["adapters"][0].update(devices=1, count=0, metrics=["temperature", "power"])
    cfg["homeassistant"]["switches"] = []
    cfg["homeassistant"]["lights"] = ["sim:*"]
    gw = gateway_factory(cfg).start()
    node = f"{GW}_sim_sim-1"
    light_topic = f"homeassistant/light/{node}/light/config"
    held = wait_until(lambda: (lambda r: r if light_topic in r else None)(
        retained(mosquitto, "homeassistant/#")), within=20, what="the light's config")
    light = json.loads(held[light_topic])
    assert light["schema"] == "json" and light["brightness_scale"] == 100
    assert light["command_topic"] == f"{BASE}/{node}/light/set"
    assert not any("/switch/" in t for t in held)
    states = f"{BASE}/{node}/light"

    # brightness with a transition: the simulator's level, in percent
    publish(mosquitto, f"{BASE}/{node}/light/set",
            '{"state": "ON", "brightness": 40, "transition": 2}')
    gw.wait_for_log("homeassistant: sim:sim-1 level: level 40 %", timeout=10)
    wait_until(lambda: '{"state":"ON","brightness":40}' in watcher.on(states), within=10,
               what="the light on at 40 %")

    # OFF (with a transition too): the device is off, its power reading drops to 0
    publish(mosquitto, f"{BASE}/{node}/light/set", '{"state": "OFF", "transition": 1}')
    gw.wait_for_log("homeassistant: sim:sim-1 off: power off", timeout=10)
    wait_until(lambda: '{"state":"OFF","brightness":40}' in watcher.on(states), within=10,
               what="the light off")
    wait_until(lambda: any(json.loads(p).get("power") == 0.0
                           for p in watcher.on(f"{BASE}/{node}/state")), within=10,
               what="the simulated device reporting no power")

    # a brightness alone sets the level; 0 % is off
    publish(mosquitto, f"{BASE}/{node}/light/set", '{"brightness": 100}')
    wait_until(lambda: '{"state":"ON","brightness":100}' in watcher.on(states), within=10,
               what="the light on at 100 %")
    publish(mosquitto, f"{BASE}/{node}/light/set", '{"brightness": 0}')
    wait_until(lambda: '{"state":"OFF","brightness":0}' in watcher.on(states), within=10,
               what="the light at 0 %, off")
    # a brightness out of range is refused and changes nothing
    publish(mosquitto, f"{BASE}/{node}/light/set", '{"brightness": 101}')
    gw.wait_for_log("bad command for sim:sim-1", timeout=10)
    assert retained(mosquitto, states) == {states: '{"state":"OFF","brightness":0}'}
    assert gw.stop() == 0
