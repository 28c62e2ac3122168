"""format: zigbee2mqtt: recorded Zigbee2MQTT payloads, the bridge's device list, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.payloads import DecodeError, Options, Source, format_class
from gateway.payloads.errors import REASONS
from gateway.payloads.zigbee2mqtt import (
    DEFAULT_UNITS,
    MAX_DEVICES,
    Zigbee2Mqtt,
    companion_topic,
    voltage_unit,
)
from tests.payload_cases import assert_readings

FIXTURES = Path(__file__).parent / "fixtures" / "payloads" / "zigbee2mqtt"
BRIDGE = (FIXTURES / "bridge_devices.json").read_bytes()
STATES = json.loads((FIXTURES / "states.json").read_text())
NOW = STATES["now"]
TOPIC = "zigbee2mqtt/{device}"


def src(native: str) -> Source:
    return Source("z2m", native, f"zigbee2mqtt/{native}", {"device": native})


def fmt(options: dict[str, Any] | None = None, learned: bool = True) -> Zigbee2Mqtt:
    f = Zigbee2Mqtt(Options.model_validate(options or {}))
    if learned:
        assert f.learn("zigbee2mqtt/bridge/devices", BRIDGE) == 4
    return f


def decode(f: Zigbee2Mqtt, native: str, payload: Any, now: float = NOW) -> list[tuple[Any, ...]]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    out = f.decode(raw, src(native), now)
    assert all(r.device == f"z2m:{native}" for r in out)
    return [(r.metric, r.value, r.unit, r.ts) for r in out]


@pytest.mark.parametrize("case", STATES["cases"], ids=[c["name"] for c in STATES["cases"]])
def test_recorded_payloads(case: dict[str, Any]) -> None:
    got = decode(fmt(learned=case["learned"]), case["device"], case["payload"])
    want = [(m, v, u, NOW if ts == "now" else ts) for m, v, u, ts in case["readings"]]
    assert_readings(got, want)


def test_registered_and_checked() -> None:
    assert format_class("zigbee2mqtt") is Zigbee2Mqtt
    Zigbee2Mqtt.check(Options(), frozenset({"device"}))
    with pytest.raises(ValueError, match="needs {device}"):
        Zigbee2Mqtt.check(Options(), frozenset())


# -- the device list -----------------------------------------------------------------------

def test_companion_topic() -> None:
    f = Zigbee2Mqtt()
    assert f.companions(TOPIC) == ("zigbee2mqtt/bridge/devices",)
    assert f.companions("home/z2m/{device}") == ("home/z2m/bridge/devices",)
    for topic in ("+/{device}", "{site}/{device}", "zigbee2mqtt/{device}/state", "{device}",
                  "zigbee2mqtt/#", "a/+/{device}"):
        assert f.companions(topic) == (), topic
    assert companion_topic("zigbee2mqtt/{device}") == "zigbee2mqtt/bridge/devices"


def test_learned_voltage_units_mains_and_battery() -> None:
    """The TS011F plug exposes voltage in V, the WSDCGQ11LM in mV: both land in V."""
    f = fmt()
    plug = {"state": "ON", "power": 45.2, "energy": 1.234, "voltage": 230.1, "current": 0.196,
            "linkquality": 187, "child_lock": "UNLOCK", "power_outage_memory": "restore",
            "indicator_mode": "off/on"}
    assert decode(f, "0xa4c13839adef939a", plug) == [
        ("state", True, None, NOW), ("power", 45.2, "W", NOW), ("energy", 1234.0, "Wh", NOW),
        ("voltage", 230.1, "V", NOW), ("current", 0.196, "A", NOW),
        ("linkquality", 187, None, NOW), ("child_lock", False, None, NOW)]
    # a learned unit wins over the fallback: 1500 from a device exposing V stays 1500 V
    assert decode(f, "0xa4c13839adef939a", {"voltage": 1500}) == [("voltage", 1500, "V", NOW)]
    assert decode(f, "0x00158d0004866f11", {"voltage": 900}) == [("voltage", 0.9, "V", NOW)]


def test_voltage_fallback_without_exposes() -> None:
    f = fmt(learned=False)
    assert decode(f, "plug", {"voltage": 230.1}) == [("voltage", 230.1, "V", NOW)]
    assert decode(f, "plug", {"voltage": 999}) == [("voltage", 999, "V", NOW)]
    assert decode(f, "sensor", {"voltage": 1000}) == [("voltage", 1.0, "V", NOW)]
    assert voltage_unit(3000) == "mV" and voltage_unit(12.5) == "V"


def test_units_option_wins_over_exposes_and_fallback() -> None:
    f = fmt({"units": {"voltage": "mV", "power": "kW"}})
    assert decode(f, "0xa4c13839adef939a", {"voltage": 230, "power": 2}) == [
        ("voltage", 0.23, "V", NOW), ("power", 2000.0, "W", NOW)]
    assert decode(f, "unknown", {"voltage": 12}) == [("voltage", 0.012, "V", NOW)]


def test_learn_replaces_the_previous_list() -> None:
    f = fmt()
    assert f.learn("zigbee2mqtt/bridge/devices", b"[]") == 0
    # the plug is forgotten: 1500 falls back to the mV rule
    assert decode(f, "0xa4c13839adef939a", {"voltage": 1500}) == [("voltage", 1.5, "V", NOW)]


def test_learned_binary_enum_and_composite() -> None:
    devices = [{"friendly_name": "valve", "definition": {"exposes": [
        {"type": "binary", "property": "valve_state", "value_on": "OPEN", "value_off": "CLOSED",
         "access": 1},
        {"type": "enum", "property": "door", "values": ["open", "ajar"], "access": 1},
        {"type": "enum", "property": "mode", "values": ["eco", "boost"], "access": 7},
        {"type": "numeric", "property": "flow", "unit": "m³/h"},
        {"type": "numeric", "property": "hcho", "unit": "mg/m³"},
        {"type": "numeric", "property": "illuminance"},
        {"type": "composite", "property": "schedule", "features": [
            {"type": "numeric", "property": "temperature", "unit": "°F"}]},
        {"type": "climate", "features": [
            {"type": "numeric", "property": "local_temperature", "unit": "°F"}]},
    ]}}]
    f = Zigbee2Mqtt()
    assert f.learn("zigbee2mqtt/bridge/devices", json.dumps(devices).encode()) == 1
    got = decode(f, "valve", {"valve_state": "CLOSED", "door": "ajar", "mode": "eco",
                              "flow": 3.5, "hcho": 0.02, "illuminance": 19806,
                              "schedule": {"temperature": 50}, "local_temperature": 68,
                              "temperature": 20})
    assert got == [("valve_state", False, None, NOW), ("door", "ajar", None, NOW),
                   ("hcho", 20.0, "ug/m3", NOW), ("illuminance", 19806, None, NOW),
                   ("local_temperature", 20.0, "Cel", NOW), ("temperature", 20, "Cel", NOW)]


def test_illuminance_before_and_after_zigbee2mqtt_2() -> None:
    f = fmt(learned=False)
    assert decode(f, "m", {"illuminance": 95}) == [("illuminance", 95, "lx", NOW)]
    assert decode(f, "m", {"illuminance": 19806, "illuminance_lux": 95}) == [
        ("illuminance", 19806, None, NOW), ("illuminance_lux", 95, "lx", NOW)]


def test_text_numbers_and_bookkeeping() -> None:
    f = fmt(learned=False)
    got = decode(f, "d", {"temperature": "21.5", "humidity": 40, "update": {"state": "idle"},
                          "power_on_behavior": "previous", "update_available": False,
                          "sensitivity": "high", "state_l2": "OFF", "lock_state": "locked",
                          "battery_low": False, "water_leak": True, "tamper": False})
    assert got == [("humidity", 40, "%RH", NOW), ("state_l2", False, None, NOW),
                   ("lock_state", "locked", None, NOW), ("battery_low", False, None, NOW),
                   ("water_leak", True, None, NOW), ("tamper", False, None, NOW)]


def test_timestamps() -> None:
    f = fmt(learned=False)
    assert decode(f, "d", {"temperature": 1, "last_seen": 1652706364123}) == [
        ("temperature", 1, "Cel", 1652706364.123)]
    assert decode(f, "d", {"temperature": 1, "last_seen": "never"}) == [
        ("temperature", 1, "Cel", NOW)]
    g = fmt({"timestamp": "meta.t", "timestamp_unit": "s"}, learned=False)
    assert decode(g, "d", {"temperature": 1, "meta": {"t": 1652706000}}) == [
        ("temperature", 1, "Cel", 1652706000.0)]
    h = fmt({"timestamp": "t"}, learned=False)
    assert decode(h, "d", {"temperature": 1, "t": 1652706000123}) == [
        ("temperature", 1, "Cel", 1652706000.123)]


def test_default_units_are_all_readable() -> None:
    f = Zigbee2Mqtt()
    for key in DEFAULT_UNITS:
        assert decode(f, "d", {key: 1})[0][0] == key


# -- refused input ---------------------------------------------------------------------------

@pytest.mark.parametrize(("payload", "reason"), [
    (b"", "bad_json"),
    (b"{\"temperature\": NaN}", "bad_json"),
    (b"\xff\xfe", "bad_json"),
    (b"[1, 2]", "bad_shape"),
    (b"\"ON\"", "bad_shape"),
    (b"{}", "no_values"),
    (b"{\"last_seen\": \"2022-05-16T21:06:04+08:00\", \"linkquality\": \"x\"}", "no_values"),
    (json.dumps({f"k{i}": i for i in range(1001)}).encode(), "bad_shape"),
])
def test_refused_payloads(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        fmt().decode(payload, src("d"), NOW)
    assert exc.value.reason == reason


def test_no_device() -> None:
    with pytest.raises(DecodeError) as exc:
        Zigbee2Mqtt().decode(b"{\"temperature\": 1}", Source("z2m"), NOW)
    assert exc.value.reason == "no_device"


@pytest.mark.parametrize("payload", [
    b"{}", b"not json", b"[1]", b"[{\"definition\": null}]",
    b"[{\"friendly_name\": 5}]", b"[{\"friendly_name\": \"a\", \"definition\": []}]",
    b"[{\"friendly_name\": \"a\", \"definition\": {\"exposes\": {}}}]",
    b"[{\"friendly_name\": \"a\", \"definition\": {\"exposes\": [1]}}]",
    b"[{\"friendly_name\": \"a\", \"definition\": {\"exposes\": [{\"features\": 3}]}}]",
    json.dumps([{"friendly_name": str(i)} for i in range(MAX_DEVICES + 1)]).encode(),
])
def test_refused_device_lists_keep_the_previous(payload: bytes) -> None:
    f = fmt()
    with pytest.raises(DecodeError) as exc:
        f.learn("zigbee2mqtt/bridge/devices", payload)
    assert exc.value.reason in {"bad_json", "bad_shape"}
    assert decode(f, "0xa4c13839adef939a", {"voltage": 1500}) == [("voltage", 1500, "V", NOW)]


def test_exposes_per_device_are_bounded() -> None:
    exposes = [{"type": "numeric", "property": f"p{i}", "unit": "W"} for i in range(600)]
    f = Zigbee2Mqtt()
    f.learn("b", json.dumps([{"friendly_name": "d", "definition": {"exposes": exposes}}]).encode())
    assert len(f._devices["d"]) == 500


# -- anything else ---------------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                     st.integers(min_value=-(10**400), max_value=10**400), st.text(max_size=20))
json_values = st.recursive(
    _scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                      st.dictionaries(st.text(max_size=12), inner, max_size=6)),
    max_leaves=30)
z2m_keys = st.sampled_from(["temperature", "voltage", "state", "color", "last_seen", "action",
                            "illuminance", "illuminance_lux", "contact", "child_lock",
                            "battery", "energy", "x"])
z2m_objects = st.dictionaries(z2m_keys, json_values, max_size=8)
EXAMPLES = settings(max_examples=300, deadline=None)
LEARNED = fmt()


def _only_decode_errors(f: Zigbee2Mqtt, payload: bytes, native: str = "d") -> None:
    try:
        out = f.decode(payload, src(native), NOW)
    except DecodeError as exc:
        assert exc.reason in REASONS
        return
    assert out
    for r in out:
        assert r.value.__class__ in (int, float, bool, str)
        assert r.ts.__class__ is float


@EXAMPLES
@given(st.binary(max_size=200))
def test_arbitrary_bytes(payload: bytes) -> None:
    _only_decode_errors(LEARNED, payload)


@EXAMPLES
@given(json_values, st.sampled_from(["d", "0xa4c13839adef939a", "hue_back_tv"]))
def test_arbitrary_json(value: Any, native: str) -> None:
    _only_decode_errors(LEARNED, json.dumps(value).encode(), native)


@EXAMPLES
@given(z2m_objects, st.sampled_from(["d", "0xa4c13839adef939a", "hue_back_tv"]))
def test_arbitrary_state_objects(value: Any, native: str) -> None:
    _only_decode_errors(LEARNED, json.dumps(value).encode(), native)


@EXAMPLES
@given(json_values)
def test_arbitrary_device_lists(value: Any) -> None:
    f = Zigbee2Mqtt()
    for payload in (json.dumps(value), json.dumps([value]),
                    json.dumps([{"friendly_name": "d", "definition": {"exposes": [value]}}])):
        try:
            learned = f.learn("b", payload.encode())
            # a device counts only with a definition: never more than the list holds
            entries = json.loads(payload)
            assert learned <= (len(entries) if isinstance(entries, list) else 0)
            assert set(f.described()) <= {e.get("friendly_name") for e in entries}
        except DecodeError as exc:
            assert exc.reason in REASONS
        _only_decode_errors(f, b"{\"voltage\": 3000, \"state\": \"ON\"}")
