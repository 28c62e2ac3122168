"""Discovery payloads, the unit mapping, command parsing and the config section, in process.

Every payload is checked against what Home Assistant's documentation requires:
- https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery (topic format, device)
- https://www.home-assistant.io/integrations/sensor.mqtt/ (state_topic required)
- https://www.home-assistant.io/integrations/binary_sensor.mqtt/
- https://www.home-assistant.io/integrations/switch.mqtt/ (command_topic required)
- https://www.home-assistant.io/integrations/light.mqtt/#json-schema
- https://developers.home-assistant.io/docs/core/entity/sensor/#available-device-classes
  (each device class with its allowed units and state classes; the table below)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.model import ConfigError, load_config
from gateway.homeassistant import discovery as d
from gateway.homeassistant.config import HomeAssistantConfig, filters_overlap, resolve_broker
from gateway.homeassistant.mapping import BINARY, BY_METRIC, UNITS, sensor_kind

#: Home Assistant sensor device class → (allowed units, allowed state classes), from the
#: developer docs' table of sensor device classes (link above)
HA_SENSOR_CLASSES: dict[str, tuple[set[str | None], set[str]]] = {
    "temperature": ({"°C", "°F", "K"}, {"measurement"}),
    "humidity": ({"%"}, {"measurement"}),
    "battery": ({"%"}, {"measurement"}),
    "power": ({"mW", "W", "kW", "MW", "GW", "TW"}, {"measurement"}),
    "apparent_power": ({"VA"}, {"measurement"}),
    "reactive_power": ({"var"}, {"measurement"}),
    "energy": ({"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal",
                "Mcal", "Gcal"}, {"total", "total_increasing"}),
    "voltage": ({"µV", "mV", "V", "kV", "MV"}, {"measurement"}),
    "current": ({"mA", "A"}, {"measurement"}),
    "frequency": ({"Hz", "kHz", "MHz", "GHz"}, {"measurement"}),
    "illuminance": ({"lx"}, {"measurement"}),
    "pressure": ({"Pa", "kPa", "hPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"},
                 {"measurement"}),
    "atmospheric_pressure": ({"Pa", "kPa", "hPa", "bar", "cbar", "mbar", "mmHg", "inHg",
                              "psi"}, {"measurement"}),
    "carbon_dioxide": ({"ppm"}, {"measurement"}),
    "carbon_monoxide": ({"ppm"}, {"measurement"}),
    "volatile_organic_compounds": ({"µg/m³", "mg/m³"}, {"measurement"}),
    "volatile_organic_compounds_parts": ({"ppm", "ppb"}, {"measurement"}),
    "pm1": ({"µg/m³"}, {"measurement"}),
    "pm25": ({"µg/m³"}, {"measurement"}),
    "pm10": ({"µg/m³"}, {"measurement"}),
    "signal_strength": ({"dB", "dBm"}, {"measurement"}),
    "sound_pressure": ({"dB", "dBA"}, {"measurement"}),
    "irradiance": ({"W/m²", "BTU/(h⋅ft²)"}, {"measurement"}),
    "speed": ({"m/s", "km/h", "mph", "ft/s", "kn", "mm/s", "in/s", "mm/h", "in/h", "mm/d",
               "in/d", "Beaufort"}, {"measurement"}),
    "wind_speed": ({"m/s", "km/h", "mph", "ft/s", "kn", "mm/s", "in/s", "Beaufort"},
                   {"measurement"}),
    "precipitation_intensity": ({"in/d", "in/h", "mm/d", "mm/h"}, {"measurement"}),
    "distance": ({"km", "m", "cm", "mm", "mi", "nmi", "yd", "in", "ft"},
                 {"measurement", "total", "total_increasing"}),
    "weight": ({"kg", "g", "mg", "µg", "oz", "lb", "st"},
               {"measurement", "total", "total_increasing"}),
    "duration": ({"d", "h", "min", "s", "ms", "μs"},
                 {"measurement", "total", "total_increasing"}),
    "volume": ({"L", "mL", "gal", "fl. oz.", "m³", "ft³", "CCF"}, {"total", "total_increasing"}),
    "water": ({"L", "gal", "m³", "ft³", "CCF"}, {"total", "total_increasing"}),
    "gas": ({"m³", "ft³", "CCF"}, {"total", "total_increasing"}),
    "moisture": ({"%"}, {"measurement"}),
    "power_factor": ({"%", None}, {"measurement"}),
    "ph": ({None}, {"measurement"}),
    "aqi": ({None}, {"measurement"}),
}
#: Home Assistant's binary sensor device classes
HA_BINARY_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
    "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving",
    "occupancy", "opening", "plug", "power", "presence", "problem", "running", "safety",
    "smoke", "sound", "tamper", "update", "vibration", "window"}
#: keys each component's discovery config must carry (the docs' required ones, and ours)
REQUIRED = {
    "sensor": {"state_topic", "unique_id", "device", "value_template", "availability"},
    "binary_sensor": {"state_topic", "unique_id", "device"},
    "switch": {"command_topic", "state_topic", "unique_id", "device"},
    "light": {"command_topic", "state_topic", "schema", "supported_color_modes", "unique_id",
              "device"},
}
_TOPIC_ID = re.compile(r"^[a-zA-Z0-9_-]+$")

TOPICS = d.Topics("homeassistant", "gateway/gw1", "gw1")
INFO = {"id": "zigbee:00:12:4b:00:01:02:03:04", "name": "Kitchen", "model": "TS0201",
        "manufacturer": "_TZ3000", "location": "kitchen"}


def check(entity: d.Entity) -> dict[str, Any]:
    """One payload against the docs: topic form, required keys, device, class/unit combos."""
    topic = entity.topic(TOPICS)
    prefix, component, node, object_id, tail = topic.split("/")
    assert (prefix, tail) == ("homeassistant", "config")
    assert _TOPIC_ID.match(node) and _TOPIC_ID.match(object_id)
    cfg = json.loads(entity.payload())
    assert component == entity.component
    assert REQUIRED[component] <= set(cfg), REQUIRED[component] - set(cfg)
    assert cfg["device"]["identifiers"]
    if component == "sensor" and "device_class" in cfg:
        units, state_classes = HA_SENSOR_CLASSES[cfg["device_class"]]
        assert cfg.get("unit_of_measurement") in units, cfg
        assert cfg["state_class"] in state_classes, cfg
    if component == "binary_sensor" and "device_class" in cfg:
        assert cfg["device_class"] in HA_BINARY_CLASSES
    if "availability" in cfg:
        assert cfg["availability_mode"] == "all"
        assert all("topic" in a for a in cfg["availability"])
    assert cfg["default_entity_id"] == f"{component}.{cfg['object_id']}"
    return cfg


CASES = [  # (metric, SenML unit, value) → (component, device_class, unit, state_class)
    ("temperature", "Cel", 21.5, ("sensor", "temperature", "°C", "measurement")),
    ("humidity", "%RH", 45.0, ("sensor", "humidity", "%", "measurement")),
    ("battery", "%EL", 87, ("sensor", "battery", "%", "measurement")),
    ("power", "W", 60.2, ("sensor", "power", "W", "measurement")),
    ("energy", "Wh", 12000, ("sensor", "energy", "Wh", "total_increasing")),
    ("voltage", "V", 230.1, ("sensor", "voltage", "V", "measurement")),
    ("current", "A", 0.3, ("sensor", "current", "A", "measurement")),
    ("illuminance", "lx", 300, ("sensor", "illuminance", "lx", "measurement")),
    ("pressure", "Pa", 101325, ("sensor", "pressure", "Pa", "measurement")),
    ("co2", "ppm", 640, ("sensor", "carbon_dioxide", "ppm", "measurement")),
    ("co", "ppm", 3, ("sensor", "carbon_monoxide", "ppm", "measurement")),
    ("pm10", "ug/m3", 12, ("sensor", "pm10", "µg/m³", "measurement")),
    ("rssi", "dBm", -70, ("sensor", "signal_strength", "dBm", "measurement")),
    ("gas", "m3", 1.5, ("sensor", "gas", "m³", "total_increasing")),
    ("count", None, 3, ("sensor", None, None, "measurement")),
    ("firmware", None, "1.2.3", ("sensor", None, None, None)),
    ("occupancy", None, True, ("binary_sensor", "occupancy", None, None)),
    ("contact", None, False, ("binary_sensor", "door", None, None)),
    ("weird", "furlongs", 2.0, ("sensor", None, "furlongs", "measurement")),
]


@pytest.mark.parametrize(("metric", "unit", "value", "want"), CASES)
def test_metrics_map_to_home_assistant_classes(metric: str, unit: str | None, value: Any,
                                               want: tuple[Any, ...]) -> None:
    assert tuple(sensor_kind(metric, unit, value)) == want
    cfg = check(d.sensor_entity(TOPICS, INFO["id"], INFO, metric, unit, value, "0.1.0"))
    assert cfg.get("device_class") == want[1]


def test_every_row_of_the_unit_table_is_allowed_by_home_assistant() -> None:
    pairs = [(u, "x") for u in UNITS] + [(u, m) for u, m in BY_METRIC]
    for unit, metric in pairs:
        check(d.sensor_entity(TOPICS, "mqtt:a", {}, metric, unit, 1.5, "0.1.0"))
    for metric in BINARY:
        check(d.sensor_entity(TOPICS, "mqtt:a", {}, metric, None, True, "0.1.0"))


def test_a_sensor_reads_its_metric_from_the_device_state_and_names_the_gateway() -> None:
    cfg = check(d.sensor_entity(TOPICS, INFO["id"], INFO, "temperature", "Cel", 21.0, "0.1.0"))
    node = "gw1_zigbee_00_12_4b_00_01_02_03_04"
    assert cfg["state_topic"] == f"gateway/gw1/{node}/state"
    assert cfg["value_template"] == '{{ value_json["temperature"] }}'
    assert cfg["unique_id"] == f"{node}_temperature"
    assert cfg["device"] == {"identifiers": [f"edge_gateway_{node}"], "name": "Kitchen",
                             "model": "TS0201", "manufacturer": "_TZ3000",
                             "suggested_area": "kitchen", "via_device": "edge_gateway_gw1"}
    assert cfg["availability"] == [{"topic": "gateway/gw1/status"},
                                   {"topic": f"gateway/gw1/{node}/availability"}]
    binary = check(d.sensor_entity(TOPICS, INFO["id"], INFO, "occupancy", None, True, "x"))
    assert binary["value_template"] == """{{ 'ON' if value_json["occupancy"] else 'OFF' }}"""


def test_switch_light_and_gateway_entities_fit_their_schemas() -> None:
    switch = check(d.switch_entity(TOPICS, "sim:s1", {}, "0.1.0"))
    assert switch["command_topic"] == "gateway/gw1/gw1_sim_s1/switch/set"
    assert TOPICS.parse_command(switch["command_topic"]) == ("gw1_sim_s1", "switch")
    light = check(d.light_entity(TOPICS, "sim:s1", {}, "0.1.0"))
    assert light["schema"] == "json" and light["supported_color_modes"] == ["brightness"]
    gw = check(d.gateway_entity(TOPICS, "0.1.0"))
    assert gw["state_topic"] == "gateway/gw1/status" and "availability" not in gw
    assert gw["device"]["identifiers"] == ["edge_gateway_gw1"]


def test_zigbee_clusters_and_declarations_decide_switches_and_lights() -> None:
    def eps(*clusters: int) -> dict[str, Any]:
        return {"endpoints": [{"id": 1, "in_clusters": list(clusters)}]}

    assert d.controls("zigbee:a", eps(0, 6), False, False) == "switch"
    assert d.controls("zigbee:a", eps(0, 6, 8), False, False) == "light"
    assert d.controls("zigbee:a", eps(0, 0x402), False, False) is None
    assert d.controls("mqtt:a", {"controls": "light"}, False, False) == "light"
    assert d.controls("sim:a", {}, True, False) == "switch"


@pytest.mark.parametrize(("kind", "payload", "want"), [
    ("switch", b"ON", [("on", {})]),
    ("switch", b"off", [("off", {})]),
    ("light", b'{"state": "OFF"}', [("off", {})]),
    ("light", b'{"state": "ON"}', [("on", {})]),
    ("light", b'{"state": "ON", "brightness": 40, "transition": 2}',
     [("level", {"level": 40.0, "transition": 2.0})]),
])
def test_command_payloads_become_actions(kind: str, payload: bytes, want: Any) -> None:
    assert d.parse_command(kind, payload) == want


@pytest.mark.parametrize(("kind", "payload"), [
    ("switch", b"BRIGHTER"), ("switch", b"\xff\xfe"), ("light", b"[1]"), ("light", b"{"),
    ("light", b'{"state": 1}'), ("light", b'{"brightness": 101}'),
    ("light", b'{"brightness": true}'), ("light", b'{"transition": -1, "state": "ON"}'),
    ("light", b"{}"), ("switch", b"O" * 5000),
])
def test_bad_command_payloads_are_refused_with_a_reason(kind: str, payload: bytes) -> None:
    with pytest.raises(d.BadCommand):
        d.parse_command(kind, payload)


def test_device_ids_become_topic_safe_nodes() -> None:
    assert TOPICS.node("mqtt:kitchen/sensor 1") == "gw1_mqtt_kitchen_sensor_1"
    assert TOPICS.parse_command("gateway/gw1/a/b/c/set") is None
    assert TOPICS.parse_command("gateway/gw1/node/switch") is None


def test_the_broker_defaults_to_the_first_mqtt_adapter() -> None:
    class Mqtt:
        type, host, port, username, password = "mqtt", "10.0.0.2", 1884, "gw", "pw"

    broker = resolve_broker(HomeAssistantConfig(enabled=True), [Mqtt()])
    assert not isinstance(broker, str)
    assert (broker.host, broker.port, broker.username, broker.password) == \
        ("10.0.0.2", 1884, "gw", "pw")
    own = resolve_broker(HomeAssistantConfig(enabled=True, host="ha.local"), [Mqtt()])
    assert not isinstance(own, str) and (own.host, own.port, own.username) == \
        ("ha.local", 1883, None)
    assert isinstance(resolve_broker(HomeAssistantConfig(enabled=True), []), str)


def test_config_names_the_key_of_a_bad_homeassistant_section(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({"homeassistant": {"enabled": True}}))
    with pytest.raises(ConfigError, match=r"homeassistant\.host: required value is missing"):
        load_config(path)
    path.write_text(yaml.safe_dump({"homeassistant": {"discovery_prefix": "home/#"}}))
    with pytest.raises(ConfigError, match=r"homeassistant\.discovery_prefix: .*wildcards"):
        load_config(path)
    path.write_text(yaml.safe_dump({"homeassistant": {"max_entities": 0}}))
    with pytest.raises(ConfigError, match=r"homeassistant\.max_entities"):
        load_config(path)
    path.write_text("gateway: {id: gw1}\n")
    assert load_config(path).homeassistant.enabled is False  # opt-in


def test_an_older_file_with_sweep_interval_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({"homeassistant": {"host": "ha.local",
                                                      "sweep_interval": "1s"}}))
    assert load_config(path).homeassistant.sweep_interval == 1.0  # accepted, ignored
    path.write_text(yaml.safe_dump({"homeassistant": {"sweep_intervall": "1s"}}))
    with pytest.raises(ConfigError, match=r"homeassistant\.sweep_intervall: unknown key"):
        load_config(path)



@pytest.mark.parametrize(("a", "b", "want"), [
    ("gateway/#", "gateway/gw1/+/state", True),
    ("#", "gateway/gw1/status", True),
    ("gateway/+/+/state", "gateway/gw1/+/state", True),
    ("+/+/{device}", "gateway/gw1/status", True),  # a template's placeholder is a level
    ("gateway/gw1/+/+", "gateway/gw1/+/light", True),
    ("gateway/gw1/+/temperature", "gateway/gw1/+/state", False),
    ("gateway/gw2/#", "gateway/gw1/status", False),
    ("gateway/+/+", "gateway/gw1/+/state", False),  # one level short
    ("gateway/gw1/+/state/x", "gateway/gw1/+/state", False),  # one level long
    ("sensors/#", "gateway/gw1/status", False),
])
def test_mqtt_filters_overlap_when_some_topic_matches_both(a: str, b: str,
                                                          want: bool) -> None:
    from gateway.homeassistant.config import _filter

    assert filters_overlap(_filter(a), b) is want
    assert filters_overlap(b, _filter(a)) is want


def overlapping(tmp_path: Path, subscriptions: list[str], adapter: dict[str, Any] | None = None,
                **section: Any) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({
        "gateway": {"id": "gw1", "state_dir": str(tmp_path / "state")},
        "adapters": [{"type": "mqtt", "name": "local", "host": "127.0.0.1", "port": 1883,
                      "broker_config": None, "subscriptions": [
                          {"topic": t, "format": "value" if "{metric}" in t else "json"}
                          for t in subscriptions],
                      **(adapter or {})}],
        "homeassistant": {"enabled": True, **section}}, sort_keys=False))
    return path


def test_a_state_prefix_an_mqtt_adapter_subscribes_to_is_refused(tmp_path: Path) -> None:
    # the default prefix gateway/gw1 on the adapter's own broker (the bridge's default)
    path = overlapping(tmp_path, ["sensors/{device}/{metric}", "gateway/{device}/#"])
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert len(err.value.problems) == 1, err.value.problems
    problem = err.value.problems[0]
    assert problem.startswith(f"{path}:") and "homeassistant.state_prefix: 'gateway/gw1' " \
        "(the default, gateway/<gateway id>) overlaps subscriptions[1].topic " \
        "'gateway/{device}/#' " \
        "of the mqtt adapter 'local' on the same broker 127.0.0.1:1883" in problem
    assert "read its own Home Assistant topics (such as gateway/gw1/status) back" in problem

    # an explicit prefix, matched through placeholders, on the same broker by another name
    path = overlapping(tmp_path, ["ha/{site}/{device}/{metric}"], state_prefix="ha/states",
                       host="localhost", port=1883)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    [problem] = err.value.problems
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1)
                if text.strip().startswith("state_prefix:"))
    assert problem.startswith(f"{path}:{line}: homeassistant.state_prefix: 'ha/states' "
                              "overlaps"), problem
    assert "'ha/{site}/{device}/{metric}'" in problem and "ha/states/<node>/state" in problem


@pytest.mark.parametrize("change", [
    {"state_prefix": "ha/gw1"},  # out of the subscription's way
    {"host": "ha.local"},  # another broker: the adapter never sees the bridge's topics
    {"port": 1884},
    {"adapter": {"enabled": False}},
    {"enabled": False},
])
def test_a_state_prefix_out_of_every_subscription_is_fine(tmp_path: Path,
                                                         change: dict[str, Any]) -> None:
    adapter = change.pop("adapter", None)
    path = overlapping(tmp_path, ["gateway/+/{device}/{metric}"], adapter, **change)
    assert load_config(path).adapters


def test_gateway_check_and_the_daemon_refuse_an_overlapping_state_prefix(
        tmp_path: Path) -> None:
    path = overlapping(tmp_path, ["gateway/{device}/#"])
    env = {**os.environ, "NOTIFY_SOCKET": ""}
    check = subprocess.run([sys.executable, "-m", "gateway", "check", str(path)],
                           capture_output=True, text=True, timeout=60, env=env)
    assert check.returncode == 2, check
    assert "error: " in check.stderr and "homeassistant.state_prefix: 'gateway/gw1'" in \
        check.stderr and "'gateway/{device}/#'" in check.stderr, check.stderr
    run = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", str(path)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 2, run
    assert "homeassistant.state_prefix: 'gateway/gw1'" in run.stdout + run.stderr
    assert not (tmp_path / "state").exists()  # nothing was started
