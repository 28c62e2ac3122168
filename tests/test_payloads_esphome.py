"""ESPHome format: state topics, and units learned from the node's discovery configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.payloads.base import Options, Source
from gateway.payloads.errors import REASONS, DecodeError
from gateway.payloads.esphome import MAX_LEARNED, EspHome
from tests.payload_cases import assert_readings

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "payloads" / "esphome"
                      / "garagedoor1.json").read_text())
NOW = 1_760_000_000.0


def hash_source(topic: str) -> Source:
    """What the MQTT adapter gives for ``topic: {device}/#``."""
    node, _, rest = topic.partition("/")
    return Source("mqtt", node, topic, {"device": node, "#": rest})


def state_source(topic: str) -> Source:
    """What the MQTT adapter gives for ``topic: {device}/{component}/{object}/state``."""
    node, component, obj, _ = topic.split("/")
    return Source("mqtt", node, topic, {"device": node, "component": component, "object": obj})


def triples(readings: list[Any]) -> list[tuple[str, Any, str | None]]:
    return [(r.metric, r.value, r.unit) for r in readings]


def learned() -> EspHome:
    fmt = EspHome()
    assert fmt.companions("{device}/#") == ("homeassistant/+/+/+/config",)
    for topic, payload in FIXTURE["learn"]:
        assert fmt.learn(topic, payload.encode()) == 1
    return fmt


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=[c["topic"] for c in FIXTURE["cases"]])
def test_capture(case: dict[str, Any]) -> None:
    fmt = learned()
    want = [tuple(e) for e in case["expect"]]
    out = fmt.decode(case["payload"].encode(), hash_source(case["topic"]), NOW)
    assert_readings(triples(out), want)
    assert all(r.ts == NOW and r.device == f"mqtt:{case['topic'].split('/')[0]}" for r in out)
    if case["topic"].endswith("/state") and case["topic"].count("/") == 3:
        assert triples(fmt.decode(case["payload"].encode(), state_source(case["topic"]),
                                  NOW)) == want
    plain = [tuple(e) for e in case.get("without_discovery", case["expect"])]
    assert triples(EspHome().decode(case["payload"].encode(), hash_source(case["topic"]),
                                    NOW)) == plain


def test_discovery_config_on_the_data_subscription_is_learned() -> None:
    """``{device}/#`` also matches homeassistant/...: the config is read, nothing stored."""
    fmt = EspHome()
    topic, payload = FIXTURE["learn"][0]
    assert fmt.decode(payload.encode(), hash_source(topic), NOW) == []
    out = fmt.decode(b"23.8", hash_source("garagedoor1/sensor/garage_temperature/state"), NOW)
    assert triples(out) == [("garage_temperature", 23.8, "Cel")]


def test_units_option_wins_and_percent_by_device_class() -> None:
    fmt = EspHome(Options(units={"garage_temperature": "°F"}))
    for topic, payload in FIXTURE["learn"]:
        fmt.learn(topic, payload.encode())
    out = fmt.decode(b"212", hash_source("garagedoor1/sensor/garage_temperature/state"), NOW)
    assert triples(out) == [("garage_temperature", 100.0, "Cel")]
    fmt.learn("homeassistant/sensor/n/bat/config",
              b'{"unit_of_measurement": "%", "device_class": "battery", "~": "n/sensor/bat",'
              b' "state_topic": "~/state"}')
    assert triples(fmt.decode(b"97", hash_source("n/sensor/bat/state"), NOW)) == [
        ("bat", 97, "%EL")]


def test_unknown_discovered_unit_is_refused_loudly() -> None:
    fmt = EspHome()
    fmt.learn("homeassistant/sensor/n/odd/config",
              b'{"unit_of_meas": "furlongs", "stat_t": "n/sensor/odd/state"}')
    with pytest.raises(DecodeError) as exc:
        fmt.decode(b"3", hash_source("n/sensor/odd/state"), NOW)
    assert exc.value.reason == "bad_unit"


def test_learned_map_is_bounded() -> None:
    fmt = EspHome()
    for i in range(MAX_LEARNED):
        fmt._learned[f"n/sensor/s{i}/state"] = "W"
    assert fmt.learn("homeassistant/sensor/n/new/config",
                     b'{"unit_of_meas": "W", "stat_t": "n/sensor/new/state"}') == 0
    assert fmt.learn("homeassistant/sensor/n/s1/config",
                     b'{"unit_of_meas": "V", "stat_t": "n/sensor/s1/state"}') == 1
    assert len(fmt._learned) == MAX_LEARNED
    assert fmt.learn("homeassistant/sensor/n/s1/config", b"") == 0
    with pytest.raises(DecodeError) as exc:
        fmt.learn("homeassistant/sensor/n/s1/config", b"[1]")
    assert exc.value.reason == "bad_shape"


# Written from the ESPHome component pages (no capture found): see SOURCES.md.
@pytest.mark.parametrize("topic, payload, want", [
    ("node/climate/living_room/current_temperature/state", "21.5",
     [("living_room_current_temperature", 21.5, "Cel")]),
    ("node/climate/living_room/target_temperature_low/state", "19",
     [("living_room_target_temperature_low", 19, "Cel")]),
    ("node/climate/living_room/current_humidity/state", "48",
     [("living_room_current_humidity", 48, "%RH")]),
    ("node/climate/living_room/mode/state", "heat", [("living_room_mode", "heat", None)]),
    ("node/climate/living_room/action/state", "idle", [("living_room_action", "idle", None)]),
    ("node/cover/garage_door/state", "open", [("garage_door", "open", None)]),
    ("node/cover/garage_door/position/state", "42", [("garage_door_position", 42, "%")]),
    ("node/fan/ceiling_fan/state", "ON", [("ceiling_fan", True, None)]),
    ("node/fan/ceiling_fan/oscillation/state", "oscillate_off",
     [("ceiling_fan_oscillation", False, None)]),
    ("node/fan/ceiling_fan/speed_level/state", "3", [("ceiling_fan_speed_level", 3, None)]),
    ("node/switch/relay_1/state", "OFF", [("relay_1", False, None)]),
    ("node/text_sensor/esphome_version/state", "2024.11.0 Nov 20 2024, 10:00:00",
     [("esphome_version", "2024.11.0 Nov 20 2024, 10:00:00", None)]),
    ("node/number/target_level/state", "-3.5", [("target_level", -3.5, None)]),
    ("node/event/doorbell/state", '{"event_type": "pressed"}', [("doorbell", "pressed", None)]),
    ("node/light/strip/state",
     '{"state":"ON","brightness":128,"color_mode":"rgb","color":{"r":255,"g":10,"b":0}}',
     [("strip", True, None), ("strip_brightness", 128, None), ("strip_color_r", 255, None),
      ("strip_color_g", 10, None), ("strip_color_b", 0, None)]),
    ("node/sensor/temperature/state", "nan", []),
    ("node/status", "offline", []),
    ("node/debug", "[D][sensor:094]: 'x': Sending state 1.0", []),
    ("node/switch/relay_1/command", "ON", []),
    ("node/button/restart/state", "", []),
])
def test_documented_topics(topic: str, payload: str, want: list[tuple[str, Any, Any]]) -> None:
    out = EspHome().decode(payload.encode(), hash_source(topic), NOW)
    assert_readings(triples(out), want)


@pytest.mark.parametrize("topic, payload, reason", [
    ("node/sensor/t/state", b"abc", "bad_value"),
    ("node/sensor/t/state", b"inf", "bad_value"),
    ("node/sensor/t/state", b"", "bad_value"),
    ("node/sensor/t/state", b"\xc3\x28", "bad_text"),
    ("node/sensor/t/state", b"1" * 2000, "bad_text"),
    ("node/binary_sensor/b/state", b"on", "bad_value"),
    ("node/fan/f/oscillation/state", b"ON", "bad_value"),
    ("node/light/l/state", b"{", "bad_json"),
    ("node/light/l/state", b"[]", "bad_shape"),
    ("node/light/l/state", b'{"state": "DIM"}', "bad_value"),
    ("node/light/l/state", b'{"effect": "none"}', "no_values"),
    ("node/event/e/state", b'{"type": 1}', "bad_shape"),
    ("node/text_sensor/t/state", b"x" * 300, "bad_value"),
    ("node/gizmo/g/state", b"1", "no_values"),
    ("node/climate/c/unknown_field/state", b"1", "no_values"),
    ("node/sensor/t/other", b"1", "no_values"),
    ("node/sensor/___/state", b"1", "bad_name"),
])
def test_malformed(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as exc:
        EspHome().decode(payload, hash_source(topic), NOW)
    assert exc.value.reason == reason


def test_check_messages() -> None:
    EspHome.check(Options(), frozenset({"device", "component", "object"}))
    EspHome.check(Options(), frozenset({"device"}))
    with pytest.raises(ValueError, match=r"\{device\}/\{component\}/\{object\}/state"):
        EspHome.check(Options(), frozenset({"component", "object"}))
    with pytest.raises(ValueError, match="both"):
        EspHome.check(Options(), frozenset({"device", "component"}))


_segment = st.sampled_from(["sensor", "binary_sensor", "light", "fan", "cover", "climate",
                            "event", "text_sensor", "x", "state", "status", "command",
                            "current_temperature", "position", "oscillation", "", "discover"])
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                         max_size=4),
                     max_leaves=20)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.lists(_segment, min_size=1, max_size=5).map("/".join), st.text(max_size=40)),
       st.one_of(st.binary(max_size=80), _json.map(lambda v: json.dumps(v).encode()),
                 st.sampled_from([b"ON", b"OFF", b"nan", b"1.5", b"oscillate_on"])))
def test_never_raises_anything_else(rest: str, payload: bytes) -> None:
    for src in (Source("mqtt", "node", f"node/{rest}", {"device": "node", "#": rest}),
                Source("mqtt", "node", f"homeassistant/{rest}/config", {"device": "node"})):
        try:
            out = EspHome().decode(payload, src, NOW)
        except DecodeError as exc:
            assert exc.reason in REASONS
        else:
            assert isinstance(out, list)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=80), _json.map(lambda v: json.dumps(v).encode()),
                 st.dictionaries(st.sampled_from(["stat_t", "state_topic", "~", "unit_of_meas",
                                                  "dev_cla"]), _json).map(
                     lambda d: json.dumps(d).encode())))
def test_learn_never_raises_anything_else(payload: bytes) -> None:
    try:
        assert EspHome().learn("homeassistant/sensor/n/o/config", payload) in (0, 1)
    except DecodeError as exc:
        assert exc.reason in REASONS
